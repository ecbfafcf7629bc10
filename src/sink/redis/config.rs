//! The `[sink.redis]` table: where and how events are appended to Redis streams.

use crate::error::{Error, Result, check_range};
use crate::secret::{DbUrl, Secret};
use crate::sink::template::{ALL_FIELDS, Template};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The Redis Streams sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSinkConfig {
    /// Server URL, `redis://` or `rediss://` (TLS), optionally with `user:password@` and a
    /// database number (`/0`); the password is masked wherever the URL is printed. Default
    /// `redis://127.0.0.1:6379`.
    pub url: DbUrl,
    /// Stream key template; `{aggregatetype}`, `{aggregateid}`, `{type}`, `{schema}`,
    /// `{table}`, `{op}` and `{key}` are replaced by the event's fields. Default
    /// `outbox:{aggregatetype}`.
    pub stream: String,
    /// Trim each stream to about this many entries (`XADD … MAXLEN ~ n`), so it cannot grow
    /// without bound. Default: unset (no trimming).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxlen: Option<u64>,
    /// ACL user name (Redis 6+). Default: unset (the URL's, or `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (of `username`, or `requirepass`); masked everywhere. Default: unset (the
    /// URL's, if any).
    pub password: Secret,
    /// PEM file of CA certificates trusted for a `rediss://` server's certificate. Default:
    /// unset (the system's roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Time Redis has to answer a batch before it is retried, in milliseconds. Default 10000.
    pub response_timeout_ms: u64,
}

impl Default for RedisSinkConfig {
    fn default() -> Self {
        RedisSinkConfig {
            url: DbUrl::new("redis://127.0.0.1:6379"),
            stream: "outbox:{aggregatetype}".into(),
            maxlen: None,
            username: None,
            password: Secret::default(),
            ca_file: None,
            response_timeout_ms: 10_000,
        }
    }
}

impl RedisSinkConfig {
    /// Checks every `sink.redis` key; the error names the key and the rule it broke.
    pub fn validate(&self) -> Result<()> {
        let url = self.url.expose();
        let tls = url.starts_with("rediss://");
        if !(url.starts_with("redis://") || tls) {
            return Err(Error::config(
                "sink.redis.url",
                format!(
                    "must start with redis:// or rediss:// ({})",
                    self.url.masked()
                ),
            ));
        }
        if redis::parse_redis_url(url).is_none() {
            return Err(Error::config(
                "sink.redis.url",
                format!("is not a valid URL ({})", self.url.masked()),
            ));
        }
        Template::parse(&self.stream, ALL_FIELDS)
            .map_err(|reason| Error::config("sink.redis.stream", reason))?;
        if let Some(maxlen) = self.maxlen {
            check_range("sink.redis.maxlen", maxlen, 1, i64::MAX as u64)?;
        }
        if self.username.is_some() && self.password.is_empty() {
            return Err(Error::config(
                "sink.redis.password",
                "must be set when sink.redis.username is",
            ));
        }
        if let Some(path) = &self.ca_file {
            if !tls {
                return Err(Error::config(
                    "sink.redis.ca_file",
                    "is set but sink.redis.url is not rediss://",
                ));
            }
            let pem = std::fs::read(path).map_err(|err| {
                Error::config(
                    "sink.redis.ca_file",
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            if !CertificateDer::pem_slice_iter(&pem).any(|cert| cert.is_ok()) {
                return Err(Error::config(
                    "sink.redis.ca_file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
        }
        check_range(
            "sink.redis.response_timeout_ms",
            self.response_timeout_ms,
            100,
            600_000,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `config` fails validation with.
    fn err(config: RedisSinkConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        RedisSinkConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_urls_are_refused_without_printing_the_password() {
        let scheme = err(RedisSinkConfig {
            url: DbUrl::new("http://u:hunter2@127.0.0.1:6379"),
            ..RedisSinkConfig::default()
        });
        assert!(
            scheme.starts_with("sink.redis.url: must start with"),
            "{scheme}"
        );
        assert!(!scheme.contains("hunter2"), "{scheme}");
        let ca = err(RedisSinkConfig {
            ca_file: Some("/nonexistent.pem".into()),
            ..RedisSinkConfig::default()
        });
        assert!(ca.starts_with("sink.redis.ca_file: is set but"), "{ca}");
    }

    #[test]
    fn keys_are_checked_and_named() {
        let template = err(RedisSinkConfig {
            stream: "outbox:{aggregate}".into(),
            ..RedisSinkConfig::default()
        });
        assert!(template.starts_with("sink.redis.stream"), "{template}");
        let maxlen = err(RedisSinkConfig {
            maxlen: Some(0),
            ..RedisSinkConfig::default()
        });
        assert!(maxlen.starts_with("sink.redis.maxlen"), "{maxlen}");
        let user = err(RedisSinkConfig {
            username: Some("app".into()),
            ..RedisSinkConfig::default()
        });
        assert!(user.starts_with("sink.redis.password"), "{user}");
    }

    #[test]
    fn secrets_are_masked_when_the_config_is_printed() {
        let config = RedisSinkConfig {
            url: DbUrl::new("rediss://app:hunter2@cache:6380/0"),
            password: Secret::new("s3cret"),
            ..RedisSinkConfig::default()
        };
        let printed = format!("{config:?} {}", toml::to_string(&config).unwrap());
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
    }
}
