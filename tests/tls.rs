//! TLS to PostgreSQL with a throwaway CA: each `sslmode` accepts what it should and refuses what
//! it should. (Its own test binary: it reconfigures and restarts its cluster.)

mod common;

use common::certs::openssl;
use common::pg::{Cluster, cluster, test_db};
use outboxd::config::{DbUrl, SourceConfig, TlsMode};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Creates a CA and a server certificate for DNS name `localhost`, signed by it; returns the
/// CA certificate's path. Also creates an unrelated CA (`other-ca.crt`).
fn make_certificates(dir: &Path) -> PathBuf {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=outboxd test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    );
    dir.join("ca.crt")
}

/// Installs the server certificate into the cluster, turns TLS on and restarts it.
fn enable_server_tls(cluster: &Cluster, certs: &Path) {
    let data = cluster.data_dir();
    for file in ["server.crt", "server.key"] {
        std::fs::copy(certs.join(file), data.join(file)).unwrap();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let status = Command::new("chown")
            .args(["postgres:postgres", "server.crt", "server.key"])
            .current_dir(data)
            .status()
            .unwrap();
        assert!(status.success());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(&conf, text).unwrap();
    cluster.restart("fast");
}

/// A source config for `host` with TLS `mode` and optional root certificate.
fn source(host: &str, port: u16, db: &str, mode: TlsMode, root: Option<&Path>) -> SourceConfig {
    let mut tls = outboxd::config::TlsConfig {
        mode,
        ..Default::default()
    };
    tls.root_cert = root.map(Path::to_path_buf);
    SourceConfig {
        url: DbUrl::new(format!("postgres://postgres@{host}:{port}/{db}")),
        tls,
        ..Default::default()
    }
}

/// Connects and reports whether the session is encrypted, or the error line.
async fn try_connect(source: &SourceConfig) -> Result<bool, String> {
    let session = outboxd::pg::connect(source)
        .await
        .map_err(|err| err.chain())?;
    let row = session
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|err| err.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_accepts_and_refuses_what_it_should() {
    // Given a server whose certificate names `localhost`, signed by a throwaway CA
    let db = test_db().await;
    let Some(cluster) = cluster() else {
        eprintln!("OUTBOXD_TEST_DATABASE_URL is set: not reconfiguring a server we do not own");
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let ca = make_certificates(certs.path());
    let other_ca = certs.path().join("other-ca.crt");
    tokio::task::spawn_blocking({
        let certs = certs.path().to_path_buf();
        move || enable_server_tls(cluster, &certs)
    })
    .await
    .unwrap();
    let port = cluster.port();
    let name = db.name.as_str();

    // verify-full to the name on the certificate: encrypted
    let ok = source("localhost", port, name, TlsMode::VerifyFull, Some(&ca));
    assert_eq!(try_connect(&ok).await, Ok(true));

    // verify-full to an address the certificate does not name: refused, and says why
    let wrong_host = source("127.0.0.1", port, name, TlsMode::VerifyFull, Some(&ca));
    let err = try_connect(&wrong_host).await.unwrap_err();
    assert!(err.contains("connecting to PostgreSQL"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // verify-full against a CA that did not sign it: refused
    let untrusted = source(
        "localhost",
        port,
        name,
        TlsMode::VerifyFull,
        Some(&other_ca),
    );
    assert!(try_connect(&untrusted).await.is_err());

    // verify-ca checks the chain but not the name
    let by_address = source("127.0.0.1", port, name, TlsMode::VerifyCa, Some(&ca));
    assert_eq!(try_connect(&by_address).await, Ok(true));
    let untrusted_ca = source("127.0.0.1", port, name, TlsMode::VerifyCa, Some(&other_ca));
    assert!(try_connect(&untrusted_ca).await.is_err());

    // require encrypts without verifying; disable does not encrypt
    let require = source("127.0.0.1", port, name, TlsMode::Require, None);
    assert_eq!(try_connect(&require).await, Ok(true));
    let plain = source("127.0.0.1", port, name, TlsMode::Disable, None);
    assert_eq!(try_connect(&plain).await, Ok(false));

    // require with a root certificate verifies the chain, as libpq does
    let require_other = source("127.0.0.1", port, name, TlsMode::Require, Some(&other_ca));
    assert!(try_connect(&require_other).await.is_err());
    let require_ca = source("127.0.0.1", port, name, TlsMode::Require, Some(&ca));
    assert_eq!(try_connect(&require_ca).await, Ok(true));

    // sslmode in the URL is honoured with source.tls.mode left at its default
    let url = |mode: &str| {
        DbUrl::new(format!(
            "postgres://postgres@127.0.0.1:{port}/{name}?sslmode={mode}"
        ))
    };
    let mut in_url = source("127.0.0.1", port, name, TlsMode::Disable, None);
    in_url.url = url("require");
    assert_eq!(try_connect(&in_url).await, Ok(true));
    in_url.url = url("verify-full");
    in_url.tls.root_cert = Some(ca.clone());
    let err = try_connect(&in_url).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // and a URL that disagrees with source.tls.mode is refused, naming both
    in_url.url = url("disable");
    in_url.tls.mode = TlsMode::VerifyFull;
    let err = try_connect(&in_url).await.unwrap_err();
    assert!(
        err.contains("sslmode=disable conflicts with source.tls.mode = \"verify-full\""),
        "{err}"
    );
}
