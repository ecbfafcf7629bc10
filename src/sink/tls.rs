//! The TLS crypto provider the broker clients build their configurations with.

/// Installs ring as rustls' process-wide crypto provider unless one is installed already.
///
/// The NATS and Redis clients build their TLS configurations with `ClientConfig::builder()`,
/// which needs a process default; the dependency tree enables both of rustls' providers (ring
/// here, aws-lc-rs through pgwire-replication's tokio-rustls), so there is none to infer and
/// the builder would panic. ring is the one `src/pg/tls.rs` and the RabbitMQ sink use.
pub fn ensure_crypto_provider() {
    // An error means a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
