//! HTTPS for the HTTP endpoint: a rustls acceptor from `[http.tls]`'s PEM files.

use crate::config::HttpTlsConfig;
use crate::error::{Error, ErrorKind, Result};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The acceptor for `tls`: its certificate chain and key, TLS 1.2 and 1.3, HTTP/1.1 by ALPN.
pub fn acceptor(tls: &HttpTlsConfig) -> Result<TlsAcceptor> {
    let certs = read("http.tls.cert", &tls.cert, |pem| {
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()
    })?;
    if certs.is_empty() {
        return Err(Error::config(
            "http.tls.cert",
            format!("{} holds no PEM certificate", tls.cert.display()),
        ));
    }
    let key = read("http.tls.key", &tls.key, PrivateKeyDer::from_pem_slice)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::with_source(ErrorKind::Internal, "configuring TLS", err))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| {
            Error::with_source(
                ErrorKind::Config,
                "http.tls: the key does not fit the certificate, or one is unusable",
                err,
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reads the PEM file at `path` (configured as `key`) and parses it with `parse`.
fn read<T, E: std::error::Error + Send + Sync + 'static>(
    key: &str,
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Result<T> {
    let pem = std::fs::read(path).map_err(|err| {
        Error::with_source(
            ErrorKind::Config,
            format!("{key}: cannot read {}", path.display()),
            err,
        )
    })?;
    parse(&pem).map_err(|err| {
        Error::with_source(
            ErrorKind::Config,
            format!("{key}: {} is not usable PEM", path.display()),
            err,
        )
    })
}
