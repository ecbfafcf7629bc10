//! NKeys and JWTs for private `nats-server`s, made in the test without the `nsc` tool: a
//! server config that admits one NKey user, and one in operator (decentralised JWT) mode that
//! admits the holder of a `.creds` file (a user JWT signed by an account the operator signed).
//!
//! A NATS JWT is `base64url(header).base64url(claims).base64url(signature)`, with the header
//! `{"typ":"JWT","alg":"ed25519-nkey"}` and the signature the issuer's Ed25519 NKey signature
//! over the first two parts (nats-io/jwt v2).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A server config (for `nats-server -c`) admitting the NKey user `user` only.
pub fn nkey_user_config(dir: &Path, user: &KeyPair) -> PathBuf {
    let path = dir.join("nkey.conf");
    let text = format!(
        "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
        user.public_key()
    );
    std::fs::write(&path, text).expect("write nkey.conf");
    path
}

/// What operator mode needs: the server's config and the accounts a `.creds` file can be made
/// for.
pub struct Operator {
    /// The config file (for `nats-server -c`).
    pub config: PathBuf,
    /// The account with JetStream that the server trusts.
    pub account: KeyPair,
}

impl Operator {
    /// An operator, a system account and an account with unlimited JetStream, all preloaded
    /// into a memory resolver, written as a server config under `dir`.
    pub fn new(dir: &Path) -> Operator {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            "test-operator",
            json!({ "type": "operator", "version": 2 }),
        );
        let system_jwt = jwt(
            &operator,
            &system.public_key(),
            "SYS",
            json!({ "type": "account", "version": 2 }),
        );
        let account_jwt = jwt(
            &operator,
            &account.public_key(),
            "APP",
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
                },
                "type": "account",
                "version": 2
            }),
        );
        let config = dir.join("operator.conf");
        let text = format!(
            "operator: \"{operator_jwt}\"\nsystem_account: \"{sys}\"\nresolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: \"{system_jwt}\"\n  {app}: \"{account_jwt}\"\n}}\n",
            sys = system.public_key(),
            app = account.public_key(),
        );
        std::fs::write(&config, text).expect("write operator.conf");
        Operator { config, account }
    }

    /// A `.creds` file under `dir` for a new user whose JWT `signer` signed (the trusted
    /// account, or another one to be refused).
    pub fn creds(&self, dir: &Path, name: &str, signer: &KeyPair) -> PathBuf {
        let user = KeyPair::new_user();
        let user_jwt = jwt(
            signer,
            &user.public_key(),
            name,
            json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2
            }),
        );
        let seed = user.seed().expect("user seed");
        let text = format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        let path = dir.join(format!("{name}.creds"));
        std::fs::write(&path, text).expect("write creds");
        path
    }
}

/// A JWT for `subject` with the NATS claims `nats`, signed by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = json!({ "typ": "JWT", "alg": "ed25519-nkey" });
    let claims = json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}
