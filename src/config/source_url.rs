//! `source.url` as the driver reads it, and the TLS mode it and `source.tls.mode` ask for.

use super::{SourceConfig, TlsMode};
use crate::error::{Error, Result};
use crate::secret::Conninfo;

impl SourceConfig {
    /// The driver's configuration for `source.url`, without its `sslmode` (TLS follows
    /// [`Self::tls_mode`]). The error never quotes the string: it may hold a password.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config> {
        Conninfo::split(self.url.expose()).parse().ok_or_else(|| {
            Error::config(
                "source.url",
                "is not a valid PostgreSQL URL or key=value connection string",
            )
        })
    }

    /// The TLS mode in effect: `source.tls.mode`, or the URL's `sslmode` when the mode is left
    /// at `disable`; a URL asking for another mode than `source.tls.mode` sets is refused, and
    /// so is `prefer` (it falls back to plaintext unnoticed). As in libpq, `require` with a
    /// `root_cert` verifies the chain (`verify-ca`).
    pub fn tls_mode(&self) -> Result<TlsMode> {
        let configured = self.tls.mode;
        let mode = match Conninfo::split(self.url.expose()).sslmode.as_deref() {
            None => configured,
            Some(given) => {
                let from_url = match given {
                    "disable" => TlsMode::Disable,
                    "require" => TlsMode::Require,
                    "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    "allow" | "prefer" => {
                        return Err(Error::config(
                            "source.url",
                            format!(
                                "sslmode={given} may silently fall back to plaintext; remove it \
                                 and set source.tls.mode (require, verify-ca or verify-full)"
                            ),
                        ));
                    }
                    other => {
                        return Err(Error::config(
                            "source.url",
                            format!(
                                "sslmode={other:?} is not one of disable, require, verify-ca, \
                                 verify-full"
                            ),
                        ));
                    }
                };
                if configured != TlsMode::Disable && configured != from_url {
                    return Err(Error::config(
                        "source.url",
                        format!(
                            "sslmode={given} conflicts with source.tls.mode = \"{}\"; set only \
                             one of them",
                            mode_name(configured)
                        ),
                    ));
                }
                from_url
            }
        };
        Ok(match mode {
            TlsMode::Require if self.tls.root_cert.is_some() => TlsMode::VerifyCa,
            mode => mode,
        })
    }
}

/// The configuration name of `mode`.
fn mode_name(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Disable => "disable",
        TlsMode::Require => "require",
        TlsMode::VerifyCa => "verify-ca",
        TlsMode::VerifyFull => "verify-full",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source with `url` and `source.tls.mode`.
    fn source(url: &str, mode: TlsMode) -> SourceConfig {
        let mut source = SourceConfig {
            url: super::super::DbUrl::new(url),
            ..SourceConfig::default()
        };
        source.tls.mode = mode;
        source
    }

    #[test]
    fn sslmode_in_the_url_sets_the_mode_and_a_conflict_is_refused() {
        let url = "postgres://h/db?sslmode=require";
        assert_eq!(
            source(url, TlsMode::Disable).tls_mode().unwrap(),
            TlsMode::Require
        );
        assert_eq!(
            source(url, TlsMode::Require).tls_mode().unwrap(),
            TlsMode::Require
        );
        let err = source(url, TlsMode::VerifyFull)
            .tls_mode()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("source.url: sslmode=require conflicts with"),
            "{err}"
        );
        let full = source("host=h sslmode=verify-full", TlsMode::Disable);
        assert_eq!(full.tls_mode().unwrap(), TlsMode::VerifyFull);
        assert!(full.pg_config().is_ok());
        let err = source("postgres://h/db?sslmode=prefer", TlsMode::Disable)
            .tls_mode()
            .unwrap_err()
            .to_string();
        assert!(err.contains("plaintext"), "{err}");
        let mut with_root = source("postgres://h/db", TlsMode::Require);
        with_root.tls.root_cert = Some("/ca.pem".into());
        assert_eq!(with_root.tls_mode().unwrap(), TlsMode::VerifyCa);
    }
}
