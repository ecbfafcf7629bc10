//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and `webhook-signature:
//! v1,<base64 HMAC-SHA256>` over `{id}.{timestamp}.{body}`, one `v1,` signature per secret so a
//! receiver verifies with the old secret or the new one while it is rotated.

use crate::error::{Error, Result};
use crate::secret::{MASK, Secret};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The prefix of a Standard Webhooks secret.
const PREFIX: &str = "whsec_";

/// The signing secrets as configured: each `whsec_` + base64 of the key. Printing masks them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SigningSecrets(Vec<Secret>);

impl SigningSecrets {
    /// Secrets from one string, separated by whitespace or commas.
    pub fn parse(text: &str) -> Self {
        SigningSecrets(
            text.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|part| !part.is_empty())
                .map(Secret::new)
                .collect(),
        )
    }

    /// Whether no secret is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks that each is `whsec_` + base64 of at least 1 byte; the error names the key and
    /// which secret (by position), never its text.
    pub fn validate(&self) -> Result<()> {
        self.keys().map(|_| ())
    }

    /// The HMAC keys, in order.
    pub fn keys(&self) -> Result<Vec<hmac::Key>> {
        self.0
            .iter()
            .enumerate()
            .map(|(index, secret)| {
                let bad = |why: &str| {
                    Error::config(
                        "sink.webhook.secrets",
                        format!("secret {} of {} {why}", index + 1, self.0.len()),
                    )
                };
                let encoded = secret
                    .expose()
                    .strip_prefix(PREFIX)
                    .ok_or_else(|| bad("does not start with whsec_"))?;
                let key = STANDARD
                    .decode(encoded)
                    .map_err(|_| bad("is not whsec_ followed by base64"))?;
                if key.is_empty() {
                    return Err(bad("is empty"));
                }
                Ok(hmac::Key::new(hmac::HMAC_SHA256, &key))
            })
            .collect()
    }
}

impl Serialize for SigningSecrets {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for _ in &self.0 {
            seq.serialize_element(MASK)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for SigningSecrets {
    /// A list of strings, or one string of secrets separated by spaces or commas (as an
    /// `OUTBOXD_SINK__WEBHOOK__SECRETS` variable gives it).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Accepts either form.
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = SigningSecrets;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of whsec_ secrets or one string of them")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<SigningSecrets, E> {
                Ok(SigningSecrets::parse(text))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SigningSecrets, A::Error> {
                let mut all = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    all.extend(SigningSecrets::parse(&text).0);
                }
                Ok(SigningSecrets(all))
            }
        }
        deserializer.deserialize_any(Either)
    }
}

/// Signs requests with every configured key.
#[derive(Clone)]
pub struct Signer {
    /// The HMAC keys, in configured order.
    keys: Vec<hmac::Key>,
}

impl Signer {
    /// A signer with `secrets`' keys (none: requests go unsigned).
    pub fn new(secrets: &SigningSecrets) -> Result<Self> {
        Ok(Signer {
            keys: secrets.keys()?,
        })
    }

    /// The `webhook-signature` value for a message: `v1,<base64>` per key, space-separated;
    /// `None` without keys.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
        if self.keys.is_empty() {
            return None;
        }
        let prefix = format!("{id}.{timestamp}.");
        let mut out = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            let mut context = hmac::Context::with_key(key);
            context.update(prefix.as_bytes());
            context.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            STANDARD.encode_string(context.sign().as_ref(), &mut out);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_reference_signature_is_reproduced() {
        // The example of the Standard Webhooks specification and its reference libraries.
        let secrets = SigningSecrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signer = Signer::new(&secrets).unwrap();
        let signature = signer.signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn every_secret_signs_for_rotation() {
        let two = SigningSecrets::parse("whsec_b2xk, whsec_bmV3");
        let signature = Signer::new(&two)
            .unwrap()
            .signature("id", 1, b"{}")
            .unwrap();
        let parts: Vec<&str> = signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|part| part.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
        let none = Signer::new(&SigningSecrets::default()).unwrap();
        assert_eq!(none.signature("id", 1, b"{}"), None);
    }

    #[test]
    fn a_bad_secret_is_named_by_position_not_printed() {
        let err = SigningSecrets::parse("whsec_b2xk hunter2")
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "sink.webhook.secrets: secret 2 of 2 does not start with whsec_"
        );
        let list: SigningSecrets =
            toml::from_str::<toml::Table>("s = [\"whsec_b2xk\"]").unwrap()["s"]
                .clone()
                .try_into()
                .unwrap();
        assert_eq!(list, SigningSecrets::parse("whsec_b2xk"));
        let printed = serde_json::to_string(&list).unwrap();
        assert_eq!(printed, format!("[\"{MASK}\"]"));
    }
}
