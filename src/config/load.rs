//! Reading the TOML file, overlaying `OUTBOXD_*` environment variables, and resolving secrets.

use super::explain::{explain, name_variable, one_line};
use super::{Config, Secret};
use crate::error::{Error, ErrorKind, Result};
use std::collections::HashMap;
use std::path::Path;

/// The config file read when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/outboxd.toml";

pub use super::explain::ENV_PREFIX;

/// Environment variables with the prefix that are not configuration keys.
const NOT_KEYS: &[&str] = &["OUTBOXD_CONFIG", "OUTBOXD_TEST_"];

/// Loads the configuration.
///
/// `path` is the file named by `--config`; it must exist. Without it, [`DEFAULT_PATH`] is read if
/// present, and built-in defaults are used otherwise. Environment variables override the file,
/// `password_file` is read, and the result is validated.
pub fn load(path: Option<&Path>) -> Result<Config> {
    let text = match file_read(path) {
        Some(path) => Some(read_file(&path)?),
        None => None,
    };
    from_sources(
        text.as_deref(),
        env_overrides(std::env::vars()),
        &origin(path),
    )
}

/// The file [`load`] reads for `path` (the `--config` value): that one, [`DEFAULT_PATH`] if it
/// exists, or none.
fn file_read(path: Option<&Path>) -> Option<std::path::PathBuf> {
    match path {
        Some(path) => Some(path.to_path_buf()),
        None if Path::new(DEFAULT_PATH).exists() => Some(DEFAULT_PATH.into()),
        None => None,
    }
}

/// Where [`load`] takes the configuration from, for messages: the file it reads (as an
/// absolute path when it can tell), or "built-in defaults".
pub fn origin(path: Option<&Path>) -> String {
    match file_read(path) {
        Some(file) => std::path::absolute(&file)
            .unwrap_or(file)
            .display()
            .to_string(),
        None => "built-in defaults".to_string(),
    }
}

/// Builds the configuration from TOML text and environment overrides; the testable core of
/// [`load`].
pub fn from_sources(
    toml_text: Option<&str>,
    env: HashMap<String, String>,
    origin: &str,
) -> Result<Config> {
    let mut builder = config::Config::builder();
    if let Some(text) = toml_text {
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            // OUTBOXD_SOURCE__CDC__TABLES="public.orders,inventory.*" (and __INSERT_ONLY); every
            // other key stays text.
            .list_separator(",")
            .with_list_parse_key("source.cdc.tables")
            .with_list_parse_key("source.cdc.insert_only")
            .source(Some(env.clone().into_iter().collect())),
    );
    let invalid = |reason: String| Error::new(ErrorKind::Config, reason);
    let built = builder.build().map_err(|err| {
        invalid(format!(
            "invalid configuration ({origin}): {}",
            one_line(&err.to_string())
        ))
    })?;
    let mut cfg: Config = built
        .clone()
        .try_deserialize()
        .map_err(|err| invalid(explain(&err, &built, &env, origin)))?;
    resolve_password_file(&mut cfg)?;
    cfg.validate().map_err(|err| name_variable(err, &env))?;
    Ok(cfg)
}

/// The `OUTBOXD_*` variables that are configuration keys.
pub fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> HashMap<String, String> {
    vars.filter(|(key, _)| key.starts_with(ENV_PREFIX))
        .filter(|(key, _)| !NOT_KEYS.iter().any(|skip| key.starts_with(skip)))
        .collect()
}

/// Reads the config file, naming it in the error.
fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|err| {
        Error::with_source(
            ErrorKind::Config,
            format!("cannot read config file {}", path.display()),
            err,
        )
    })
}

/// Moves the content of `source.password_file` into `source.password`.
fn resolve_password_file(cfg: &mut Config) -> Result<()> {
    let Some(path) = cfg.source.password_file.clone() else {
        return Ok(());
    };
    if !cfg.source.password.is_empty() {
        return Err(Error::config(
            "source.password_file",
            "cannot be set together with source.password",
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|err| {
        Error::with_source(
            ErrorKind::Config,
            format!("source.password_file: cannot read {}", path.display()),
            err,
        )
    })?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(Error::config(
            "source.password_file",
            format!("{} is empty", path.display()),
        ));
    }
    cfg.source.password = Secret::new(password);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OnSent, TlsMode};

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_the_file() {
        let toml = "[source]\nbatch_size = 10\non_sent = \"mark\"\n";
        let cfg = from_sources(
            Some(toml),
            env(&[
                ("OUTBOXD_SOURCE__BATCH_SIZE", "250"),
                ("OUTBOXD_SOURCE__ON_SENT", "delete"),
                ("OUTBOXD_SOURCE__TLS__MODE", "verify-full"),
                ("OUTBOXD_SOURCE__TABLE__NAME", "events"),
            ]),
            "test",
        )
        .unwrap();
        assert_eq!(cfg.source.batch_size, 250);
        assert_eq!(cfg.source.on_sent, OnSent::Delete);
        assert_eq!(cfg.source.tls.mode, TlsMode::VerifyFull);
        assert_eq!(cfg.source.table.name, "events");
        assert_eq!(cfg.source.channel(), "outboxd_events");
    }

    #[test]
    fn unknown_key_in_file_is_an_error_naming_it() {
        let err = from_sources(Some("[source]\nbatchsize = 10\n"), env(&[]), "test").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("batchsize"), "{err}");
    }

    #[test]
    fn unknown_key_in_env_is_an_error_naming_it() {
        let err = from_sources(None, env(&[("OUTBOXD_SOURCE__URLL", "x")]), "test").unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn cdc_tables_come_from_the_environment_as_a_comma_separated_list() {
        let tables = [("OUTBOXD_SOURCE__CDC__TABLES", "public.orders,inventory.*")];
        let servers = [("OUTBOXD_SINK__KAFKA__BOOTSTRAP_SERVERS", "a:9092,b:9092")];
        let mode = ("OUTBOXD_SOURCE__MODE", "cdc");
        let config = from_sources(None, env(&[mode, tables[0], servers[0]]), "test").unwrap();
        assert_eq!(config.source.mode, super::super::SourceMode::Cdc);
        assert_eq!(config.source.cdc.tables, ["public.orders", "inventory.*"]);
        assert_eq!(config.sink.kafka.bootstrap_servers, "a:9092,b:9092");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err =
            from_sources(Some("[source]\nbatch_size = \"many\"\n"), env(&[]), "t").unwrap_err();
        assert!(err.to_string().contains("source.batch_size"), "{err}");
    }

    #[test]
    fn test_harness_variables_are_not_keys() {
        let vars = vec![
            ("OUTBOXD_TEST_DATABASE_URL".to_string(), "x".to_string()),
            ("OUTBOXD_CONFIG".to_string(), "y".to_string()),
            ("OUTBOXD_SINK__TYPE".to_string(), "log".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let kept = env_overrides(vars.into_iter());
        assert_eq!(kept.keys().collect::<Vec<_>>(), vec!["OUTBOXD_SINK__TYPE"]);
    }

    #[test]
    fn password_comes_from_a_file_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\n").unwrap();
        let toml = format!(
            "[source]\npassword_file = {:?}\n",
            file.display().to_string()
        );
        let cfg = from_sources(Some(&toml), env(&[]), "test").unwrap();
        assert_eq!(cfg.source.password.expose(), "hunter2");
        let printed = toml::to_string(&cfg).unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn numeric_env_password_stays_a_string() {
        let cfg = from_sources(None, env(&[("OUTBOXD_SOURCE__PASSWORD", "12345")]), "t").unwrap();
        assert_eq!(cfg.source.password.expose(), "12345");
    }
}
