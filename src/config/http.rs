//! `[http]`: the HTTP endpoint (metrics, health checks), its TLS, and the consumer API of the
//! embedded log (`[http.consume]`).

use crate::error::{Error, Result, check_range as range};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and with `[http.consume]` the
/// consumer API under `/v1/`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the endpoint at all. Default `true`.
    pub enabled: bool,
    /// Address to listen on. Default `127.0.0.1:9187`; use `0.0.0.0:9187` in a container.
    pub listen: String,
    /// Serve HTTPS with this certificate and key instead of plain HTTP. Default: unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<HttpTlsConfig>,
    /// The consumer API of the embedded log.
    pub consume: ConsumeConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "127.0.0.1:9187".into(),
            tls: None,
            consume: ConsumeConfig::default(),
        }
    }
}

/// `[http.tls]`: the listener's certificate and key (PEM files).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[http.consume]`: the consumer API of the embedded log (`/v1/records`, `/v1/stream`,
/// `/v1/groups`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumeConfig {
    /// Serve the consumer API. Default `false`.
    pub enabled: bool,
    /// Bearer tokens accepted (`Authorization: Bearer <token>`); masked wherever printed.
    /// Required unless `http.listen` is a loopback address. Default: none.
    pub tokens: Vec<Secret>,
    /// Most messages of one group handed out and not acked at once. Default 1000.
    pub max_in_flight: usize,
    /// Largest request body accepted, bytes; larger ones get 413. Default 1 MiB.
    pub max_body_bytes: usize,
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        ConsumeConfig {
            enabled: false,
            tokens: Vec::new(),
            max_in_flight: 1000,
            max_body_bytes: 1 << 20,
        }
    }
}

impl HttpConfig {
    /// Checks the listen address, and that the consumer API is not open to the network
    /// without a token.
    pub fn validate(&self) -> Result<()> {
        if !self.enabled {
            if self.consume.enabled {
                return Err(Error::config(
                    "http.consume.enabled",
                    "is served on the HTTP endpoint, which http.enabled = false turns off",
                ));
            }
            return Ok(());
        }
        let Ok(addr) = self.listen.parse::<SocketAddr>() else {
            return Err(Error::config(
                "http.listen",
                format!("\"{}\" is not an address like 127.0.0.1:9187", self.listen),
            ));
        };
        let consume = &self.consume;
        if consume.enabled {
            range(
                "http.consume.max_in_flight",
                consume.max_in_flight as u64,
                1,
                crate::log::queue::BUFFER as u64,
            )?;
            range(
                "http.consume.max_body_bytes",
                consume.max_body_bytes as u64,
                1024,
                64 << 20,
            )?;
            if consume.tokens.iter().any(Secret::is_empty) {
                return Err(Error::config(
                    "http.consume.tokens",
                    "must not be empty strings",
                ));
            }
            if consume.tokens.is_empty() && !addr.ip().is_loopback() {
                return Err(Error::config(
                    "http.consume.tokens",
                    format!(
                        "must name at least one token: the consumer API would be open to anyone \
                         who can reach {addr} (or listen on a loopback address)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint on `listen` with the consumer API on and `tokens`.
    fn consume_on(listen: &str, tokens: &[&str]) -> HttpConfig {
        let mut config = HttpConfig {
            listen: listen.into(),
            ..HttpConfig::default()
        };
        config.consume.enabled = true;
        config.consume.tokens = tokens.iter().map(|t| Secret::new(*t)).collect();
        config
    }

    #[test]
    fn the_consumer_api_needs_a_token_unless_it_listens_on_loopback() {
        assert!(consume_on("127.0.0.1:9187", &[]).validate().is_ok());
        assert!(consume_on("[::1]:9187", &[]).validate().is_ok());
        let err = consume_on("0.0.0.0:9187", &[]).validate().unwrap_err();
        assert!(err.to_string().starts_with("http.consume.tokens:"), "{err}");
        assert!(consume_on("0.0.0.0:9187", &["s3cret"]).validate().is_ok());
        let err = consume_on("0.0.0.0:9187", &[""]).validate().unwrap_err();
        assert!(err.to_string().starts_with("http.consume.tokens:"), "{err}");
    }

    #[test]
    fn tokens_are_masked_when_the_configuration_is_printed() {
        let config = consume_on("0.0.0.0:9187", &["s3cret"]);
        let printed = format!("{config:?} {}", toml::to_string(&config).unwrap());
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
