//! The `[sink.nats]` table: where and how events are published to NATS JetStream.

use super::subject::SubjectTemplate;
use crate::error::{Error, Result, check_range};
use crate::secret::{DbUrl, Secret};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The NATS JetStream sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSinkConfig {
    /// Server URL, `nats://` or `tls://` (TLS required), optionally with `user:password@`;
    /// the password is masked wherever the URL is printed. Default `nats://127.0.0.1:4222`.
    pub url: DbUrl,
    /// Subject template; `{aggregatetype}`, `{aggregateid}`, `{type}`, `{schema}`, `{table}`,
    /// `{op}` and `{key}` are replaced by the event's fields. Default
    /// `outbox.{aggregatetype}.{type}`.
    pub subject: String,
    /// The JetStream stream that must hold the subjects. Default: unset, the stream whose
    /// subjects cover the template's is looked up at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Create the stream (file storage) when it does not exist; needs `stream`. Default
    /// `false`: a missing stream stops start-up with an error naming it.
    pub create_stream: bool,
    /// Replicas of a stream created by `create_stream`. Default 1.
    pub replicas: usize,
    /// JetStream's duplicate window for a stream created by `create_stream`, in seconds: a
    /// message whose `Nats-Msg-Id` (the event id) was stored less than this long ago is
    /// dropped as a repeat. Default 120 (JetStream's own default).
    pub duplicate_window_s: u64,
    /// User name, with `password`. Default: unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password for `user`; masked everywhere.
    pub password: Secret,
    /// Authentication token; masked everywhere.
    pub token: Secret,
    /// NKey seed (`SU…`) to sign the server's nonce with; masked everywhere.
    pub nkey: Secret,
    /// A `.creds` file (user JWT and NKey seed), as `nsc` writes it. Default: unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted for the server's TLS certificate; setting it
    /// requires TLS. Default: unset (the system's roots when TLS is used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Time JetStream has to acknowledge a published message before the batch is retried, in
    /// milliseconds. Default 30000.
    pub ack_timeout_ms: u64,
    /// Most published messages awaiting their acknowledgement at once. Default 1000.
    pub max_in_flight: usize,
    /// Add CloudEvents binary-mode headers (`ce-id`, `ce-type`, …, per the NATS binding).
    /// Default `false`.
    pub cloudevents: bool,
    /// The `ce-source` header in CloudEvents mode. Default `outboxd`.
    pub cloudevents_source: String,
}

impl Default for NatsSinkConfig {
    fn default() -> Self {
        NatsSinkConfig {
            url: DbUrl::new("nats://127.0.0.1:4222"),
            subject: "outbox.{aggregatetype}.{type}".into(),
            stream: None,
            create_stream: false,
            replicas: 1,
            duplicate_window_s: 120,
            user: None,
            password: Secret::default(),
            token: Secret::default(),
            nkey: Secret::default(),
            credentials_file: None,
            ca_file: None,
            ack_timeout_ms: 30_000,
            max_in_flight: 1000,
            cloudevents: false,
            cloudevents_source: "outboxd".into(),
        }
    }
}

impl NatsSinkConfig {
    /// Checks every `sink.nats` key; the error names the key and the rule it broke.
    pub fn validate(&self) -> Result<()> {
        let url = self.url.expose();
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(Error::config(
                "sink.nats.url",
                format!("must start with nats:// or tls:// ({})", self.url.masked()),
            ));
        }
        if url::Url::parse(url).is_err() {
            return Err(Error::config(
                "sink.nats.url",
                format!("is not a valid URL ({})", self.url.masked()),
            ));
        }
        SubjectTemplate::parse(&self.subject)
            .map_err(|reason| Error::config("sink.nats.subject", reason))?;
        if let Some(stream) = &self.stream {
            check_stream_name(stream)?;
        } else if self.create_stream {
            return Err(Error::config(
                "sink.nats.create_stream",
                "needs sink.nats.stream, the name of the stream to create",
            ));
        }
        check_range("sink.nats.replicas", self.replicas as u64, 1, 5)?;
        check_range(
            "sink.nats.duplicate_window_s",
            self.duplicate_window_s,
            1,
            7 * 24 * 3600,
        )?;
        self.validate_auth()?;
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|err| {
                Error::config(
                    "sink.nats.ca_file",
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            if !CertificateDer::pem_slice_iter(&pem).any(|cert| cert.is_ok()) {
                return Err(Error::config(
                    "sink.nats.ca_file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
        }
        check_range(
            "sink.nats.ack_timeout_ms",
            self.ack_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            "sink.nats.max_in_flight",
            self.max_in_flight as u64,
            1,
            65_535,
        )?;
        Ok(())
    }

    /// At most one way to authenticate, each complete.
    fn validate_auth(&self) -> Result<()> {
        let ways = [
            ("sink.nats.user", self.user.is_some()),
            ("sink.nats.token", !self.token.is_empty()),
            ("sink.nats.nkey", !self.nkey.is_empty()),
            (
                "sink.nats.credentials_file",
                self.credentials_file.is_some(),
            ),
        ];
        let chosen: Vec<&str> = ways.iter().filter(|w| w.1).map(|w| w.0).collect();
        if chosen.len() > 1 {
            return Err(Error::config(
                chosen[1],
                format!(
                    "cannot be combined with {}: choose one way to authenticate",
                    chosen[0]
                ),
            ));
        }
        if self.user.is_some() == self.password.is_empty() {
            return Err(Error::config(
                "sink.nats.password",
                "sink.nats.user and sink.nats.password go together",
            ));
        }
        if !self.nkey.is_empty() && !self.nkey.expose().starts_with("SU") {
            return Err(Error::config(
                "sink.nats.nkey",
                "must be a user NKey seed (starting with SU)",
            ));
        }
        if let Some(path) = &self.credentials_file {
            std::fs::metadata(path).map_err(|err| {
                Error::config(
                    "sink.nats.credentials_file",
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
        }
        Ok(())
    }
}

/// JetStream's rule for stream names: not empty, and none of whitespace, `.`, `*`, `>`, path
/// separators.
fn check_stream_name(name: &str) -> Result<()> {
    let bad = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
    if name.is_empty() || name.len() > 255 || name.contains(bad) {
        return Err(Error::config(
            "sink.nats.stream",
            format!(
                "{name:?} is not a valid stream name (1 to 255 bytes, no whitespace, '.', '*', \
                 '>', '/' or '\\')"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `config` fails validation with.
    fn err(config: NatsSinkConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        NatsSinkConfig::default().validate().unwrap();
    }

    #[test]
    fn a_bad_url_is_refused_without_printing_the_password() {
        let bad = err(NatsSinkConfig {
            url: DbUrl::new("nats://u:hunter2@host:notaport"),
            ..NatsSinkConfig::default()
        });
        assert!(bad.starts_with("sink.nats.url"), "{bad}");
        assert!(!bad.contains("hunter2"), "{bad}");
        let scheme = err(NatsSinkConfig {
            url: DbUrl::new("http://127.0.0.1:4222"),
            ..NatsSinkConfig::default()
        });
        assert!(
            scheme.starts_with("sink.nats.url: must start with"),
            "{scheme}"
        );
    }

    #[test]
    fn creating_a_stream_needs_its_name_and_names_are_checked() {
        let unnamed = err(NatsSinkConfig {
            create_stream: true,
            ..NatsSinkConfig::default()
        });
        assert!(
            unnamed.starts_with("sink.nats.create_stream: needs"),
            "{unnamed}"
        );
        let dotted = err(NatsSinkConfig {
            stream: Some("out.box".into()),
            ..NatsSinkConfig::default()
        });
        assert!(dotted.starts_with("sink.nats.stream"), "{dotted}");
    }

    #[test]
    fn one_way_to_authenticate_each_complete() {
        let both = err(NatsSinkConfig {
            user: Some("app".into()),
            password: Secret::new("hunter2"),
            token: Secret::new("t0k3n"),
            ..NatsSinkConfig::default()
        });
        assert!(
            both.starts_with("sink.nats.token: cannot be combined"),
            "{both}"
        );
        assert!(
            !both.contains("hunter2") && !both.contains("t0k3n"),
            "{both}"
        );
        let half = err(NatsSinkConfig {
            user: Some("app".into()),
            ..NatsSinkConfig::default()
        });
        assert!(half.starts_with("sink.nats.password"), "{half}");
        let seed = err(NatsSinkConfig {
            nkey: Secret::new("not-a-seed"),
            ..NatsSinkConfig::default()
        });
        assert!(seed.starts_with("sink.nats.nkey"), "{seed}");
        assert!(!seed.contains("not-a-seed"), "{seed}");
    }

    #[test]
    fn secrets_are_masked_when_the_config_is_printed() {
        let config = NatsSinkConfig {
            url: DbUrl::new("nats://app:hunter2@host:4222"),
            token: Secret::new("t0k3n"),
            nkey: Secret::new("SUSEED"),
            ..NatsSinkConfig::default()
        };
        let printed = format!("{config:?} {}", toml::to_string(&config).unwrap());
        for secret in ["hunter2", "t0k3n", "SUSEED"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn an_unknown_placeholder_names_the_key() {
        let bad = err(NatsSinkConfig {
            subject: "outbox.{aggregate}".into(),
            ..NatsSinkConfig::default()
        });
        assert!(bad.starts_with("sink.nats.subject"), "{bad}");
    }
}
