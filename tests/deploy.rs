//! The deployment files stay valid: there is no Docker engine here to run them, so these tests
//! parse them and check the services, ports and settings they promise.

use std::collections::HashMap;
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
