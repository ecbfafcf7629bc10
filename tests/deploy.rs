//! The deployment files stay valid: there is no Docker engine here to run them, so these tests
//! parse them and check the services, ports and settings they promise.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

/// Parses a YAML file of the repository.
fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|err| panic!("{path}: {err}"))
        .remove(0)
}

/// The published host ports of a compose service.
fn ports(service: &Yaml) -> Vec<String> {
    service["ports"]
        .as_vec()
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p.as_str())
                .map(|p| p.split(':').next().unwrap().into())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_brings_up_every_service_on_its_port() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    let expected = [
        ("postgres", vec!["5432"]),
        ("kafka", vec!["9092"]),
        ("rabbitmq", vec!["5672", "15672"]),
        ("outboxd", vec!["9187"]),
        ("prometheus", vec!["9090"]),
        ("grafana", vec!["3000"]),
    ];
    for (name, want) in expected {
        assert!(!services[name].is_badvalue(), "service {name} missing");
        assert_eq!(ports(&services[name]), want, "ports of {name}");
    }
    let pg_command: Vec<&str> = services["postgres"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(pg_command.contains(&"wal_level=logical"), "{pg_command:?}");
    let roles = services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
        .as_str()
        .unwrap();
    assert!(
        roles.contains("controller"),
        "Kafka must run in KRaft mode: {roles}"
    );
    assert!(
        services["rabbitmq"]["image"]
            .as_str()
            .unwrap()
            .contains("management")
    );
    assert_eq!(services["outboxd"]["build"].as_str(), Some("."));
}

#[test]
fn compose_settings_for_outboxd_are_valid_configuration() {
    let compose = yaml("docker-compose.yml");
    let env: HashMap<String, String> = compose["services"]["outboxd"]["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect();
    let config = outboxd::config::from_sources(None, env, "docker-compose.yml").unwrap();
    assert_eq!(config.http.listen, "0.0.0.0:9187");
    assert_eq!(config.source.password.expose(), "postgres");
}

#[test]
fn prometheus_scrapes_outboxd_and_grafana_shows_documented_metrics() {
    let prometheus = yaml("deploy/prometheus.yml");
    let target = prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str();
    assert_eq!(target, Some("outboxd:9187"));

    let docs = std::fs::read_to_string("docs/METRICS.md").unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/grafana/dashboards/outboxd.json").unwrap(),
    )
    .unwrap();
    let mut shown = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("outboxd_") {
                    let base = ["_bucket", "_total"]
                        .iter()
                        .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                    assert!(
                        docs.contains(&format!("outboxd_{base}")),
                        "{word} not in METRICS.md"
                    );
                    shown += 1;
                }
            }
        }
    }
    assert!(shown >= 6, "dashboard shows too little");
    for title in ["Throughput", "latency", "Pending", "lag", "Dead letters"] {
        assert!(
            dashboard.to_string().contains(title),
            "no panel about {title}"
        );
    }
}

#[test]
fn every_exported_metric_is_documented() {
    let text = outboxd::metrics::get().encode();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| rest.split(' ').next().unwrap())
        .collect();
    assert!(names.len() >= 12, "{names:?}");
    let docs = std::fs::read_to_string("docs/METRICS.md").unwrap();
    for name in names {
        assert!(
            docs.contains(&format!("`{name}")),
            "{name} is not documented in docs/METRICS.md"
        );
    }
}

#[test]
fn dockerfile_builds_in_stages_and_runs_as_a_user() {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    assert!(text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")) >= 2);
    let user = text
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert_ne!(user.trim(), "root");
}

/// Copies `from` (a file or a directory, recursively) to `to`.
fn copy_path(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_path(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap_or_else(|err| panic!("{}: {err}", from.display()));
    }
}

/// The `COPY` instructions of the Dockerfile's build stage (the first), and those of the other
/// stages that copy from the build context: (sources, destination).
fn dockerfile_copies() -> (Vec<(Vec<String>, String)>, Vec<String>) {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    let (mut build, mut context, mut stage) = (Vec::new(), Vec::new(), 0);
    for line in text.lines().map(str::trim) {
        if line.starts_with("FROM ") {
            stage += 1;
        }
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let mut words: Vec<String> = args.split_whitespace().map(String::from).collect();
        let destination = words.pop().unwrap();
        context.extend(words.iter().cloned());
        if stage == 1 {
            build.push((words, destination));
        }
    }
    (build, context)
}

#[test]
fn the_dockerfile_build_stage_copies_everything_the_manifest_needs() {
    // Given exactly what the build stage copies, laid out as it lays it out
    let (build, _) = dockerfile_copies();
    let dir = tempfile::tempdir().unwrap();
    for (sources, destination) in &build {
        for source in sources {
            let target = match destination.ends_with('/') {
                true => dir.path().join(destination).join(source),
                false => dir.path().join(destination),
            };
            copy_path(Path::new(source), &target);
        }
    }

    // When cargo resolves the manifest and its locked dependencies there (offline; `fetch`
    // discovers every target the manifest declares, as the build does)
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(String::from))
        .unwrap();
    let output = Command::new(cargo)
        .args(["fetch", "--offline", "--locked", "--target", &host])
        .current_dir(dir.path())
        .output()
        .unwrap();

    // Then it succeeds
    assert!(
        output.status.success(),
        "the Dockerfile's build stage misses something: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_image_has_the_libraries_the_binary_links_and_the_context_is_small() {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    for package in ["libssl3", "zlib1g", "ca-certificates"] {
        assert!(
            runtime.contains(package),
            "the runtime image lacks {package}"
        );
    }
    let ignore = std::fs::read_to_string(".dockerignore").expect("a .dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().trim_end_matches('/'))
        .collect();
    for heavy in ["target", "data"] {
        assert!(
            ignored.contains(&heavy),
            "{heavy}/ goes into the build context"
        );
    }
    let (_, context) = dockerfile_copies();
    for source in context {
        assert!(Path::new(&source).exists(), "COPY {source}: no such path");
        assert!(
            !ignored.iter().any(|i| source.trim_end_matches('/') == *i),
            "COPY {source} is excluded by .dockerignore"
        );
    }
}

#[test]
fn the_release_binary_ships_stripped_and_profiling_keeps_debug_info() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string("Cargo.toml").unwrap()).unwrap();
    let profiles = &manifest["profile"];
    assert_eq!(profiles["release"]["strip"].as_bool(), Some(true));
    assert_ne!(
        profiles["release"]
            .get("debug")
            .and_then(|d| d.as_integer()),
        Some(1)
    );
    assert_eq!(profiles["profiling"]["inherits"].as_str(), Some("release"));
    assert_eq!(profiles["profiling"]["debug"].as_integer(), Some(1));
}

/// A compose service's environment as a map.
fn environment(service: &Yaml) -> HashMap<String, String> {
    service["environment"]
        .as_hash()
        .map(|env| {
            env.iter()
                .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
                .collect()
        })
        .unwrap_or_default()
}

/// The strings of a YAML list (empty if absent).
fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn each_sink_profile_wires_one_outboxd_to_its_broker_with_a_healthcheck() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_hash().unwrap();
    let in_profile = |profile: &str| -> Vec<(String, Yaml)> {
        services
            .iter()
            .filter(|(_, s)| strings(&s["profiles"]).iter().any(|p| p == profile))
            .map(|(name, s)| (name.as_str().unwrap().to_string(), s.clone()))
            .collect()
    };
    let profiles = [
        ("log", "log"),
        ("kafka", "kafka"),
        ("amqp", "amqp"),
        ("nats", "nats"),
        ("redis", "redis"),
        ("webhook", "webhook"),
        ("sqs", "sqs"),
    ];
    for (profile, sink) in profiles {
        // Given the services of the profile: exactly one outboxd (built from this repository)
        let members = in_profile(profile);
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        let relays: Vec<&(String, Yaml)> = members
            .iter()
            .filter(|(_, s)| s["build"].as_str() == Some("."))
            .collect();
        assert_eq!(relays.len(), 1, "profile {profile}: {names:?}");
        let (name, relay) = relays[0];
        let env = environment(relay);

        // Then its settings are a valid configuration for that sink
        let config = outboxd::config::from_sources(None, env.clone(), "docker-compose.yml")
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(
            env.get("OUTBOXD_SINK__TYPE").map(String::as_str),
            Some(sink)
        );
        assert_eq!(config.http.listen, "0.0.0.0:9187", "{name}");

        // And it waits for PostgreSQL and its broker, and reports its health from /readyz
        let depends: Vec<String> = relay["depends_on"]
            .as_hash()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        assert!(
            depends.contains(&"postgres".to_string()),
            "{name}: {depends:?}"
        );
        let check = strings(&relay["healthcheck"]["test"]).join(" ");
        assert!(
            check.contains("9187") && check.contains("/readyz"),
            "{name}: {check}"
        );
        assert!(strings(&relay["networks"]["default"]["aliases"]).contains(&"outboxd".into()));

        match sink {
            "kafka" => {
                // The broker address is one the broker advertises to containers, and a
                // listener for the host is advertised and published too
                let kafka = &compose["services"]["kafka"];
                assert!(names.contains(&"kafka"), "{names:?}");
                assert!(depends.contains(&"kafka".to_string()), "{depends:?}");
                let kafka_env = environment(kafka);
                let advertised = &kafka_env["KAFKA_ADVERTISED_LISTENERS"];
                let servers = &config.sink.kafka.bootstrap_servers;
                assert!(
                    advertised
                        .split(',')
                        .any(|l| l.ends_with(&format!("//{servers}"))),
                    "outboxd uses {servers}, Kafka advertises {advertised}"
                );
                let host = advertised
                    .split(',')
                    .find_map(|l| {
                        l.split_once("//localhost:")
                            .map(|(_, port)| port.to_string())
                    })
                    .expect("a listener advertised as localhost for the host");
                assert!(ports(kafka).contains(&host), "port {host} not published");
                assert!(
                    !kafka["healthcheck"].is_badvalue(),
                    "kafka has no healthcheck"
                );
            }
            "amqp" => {
                // The URL names the broker of the profile, and the exchange it publishes to is
                // the one the setup declares, with a queue bound to it
                assert!(names.contains(&"rabbitmq"), "{names:?}");
                let url = config.sink.amqp.url.expose();
                assert!(url.contains("@rabbitmq:5672/"), "{url}");
                let setup = strings(&compose["services"]["rabbitmq-setup"]["command"]).join(" ");
                let exchange = &config.sink.amqp.exchange;
                assert!(
                    setup.contains(&format!("/exchanges/%2f/{exchange}")),
                    "{setup}"
                );
                assert!(
                    setup.contains(&format!("/bindings/%2f/e/{exchange}/q/")),
                    "{setup}"
                );
                assert!(
                    depends.contains(&"rabbitmq-setup".to_string()),
                    "{depends:?}"
                );
            }
            "nats" => {
                // The URL names the profile's server, and the stream is created (there is no
                // setup container)
                assert!(names.contains(&"nats"), "{names:?}");
                assert!(depends.contains(&"nats".to_string()), "{depends:?}");
                let url = config.sink.nats.url.expose();
                assert!(url.contains("//nats:4222"), "{url}");
                assert!(config.sink.nats.create_stream && config.sink.nats.stream.is_some());
            }
            "redis" => {
                assert!(names.contains(&"redis"), "{names:?}");
                assert!(depends.contains(&"redis".to_string()), "{depends:?}");
                let url = config.sink.redis.url.expose();
                assert!(url.contains("//redis:6379"), "{url}");
            }
            "webhook" => {
                assert!(names.contains(&"webhook-receiver"), "{names:?}");
                assert!(
                    depends.contains(&"webhook-receiver".to_string()),
                    "{depends:?}"
                );
                let url = config.sink.webhook.url.expose();
                assert!(url.starts_with("http://webhook-receiver:8080/"), "{url}");
                assert!(!config.sink.webhook.secrets.is_empty());
            }
            "sqs" => {
                // The emulator of the profile, and the queue its setup creates
                assert!(names.contains(&"moto"), "{names:?}");
                assert!(depends.contains(&"moto-setup".to_string()), "{depends:?}");
                let sqs = &config.sink.sqs;
                assert_eq!(sqs.endpoint_url.as_deref(), Some("http://moto:5000"));
                let setup = strings(&compose["services"]["moto-setup"]["command"]).join(" ");
                let queue = sqs.queue_url.rsplit('/').next().unwrap();
                assert!(setup.contains(&format!("QueueName={queue}")), "{setup}");
                assert!(setup.contains("/sqs/aws4_request"), "{setup}");
            }
            _ => {
                let dir = config.sink.log.dir.display().to_string();
                let volumes = strings(&relay["volumes"]).join(" ");
                assert!(
                    volumes.contains(":/var/lib/outboxd") && dir.starts_with("/var/lib/outboxd"),
                    "the log ({dir}) is not on the volume ({volumes})"
                );
            }
        }
    }
}
