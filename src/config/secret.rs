//! Values that must never be printed: passwords and connection strings that may carry one.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What a masked secret prints as.
pub const MASK: &str = "********";

/// A secret string (a password). `Debug`, `Display` and `Serialize` print only [`MASK`], so a
/// secret cannot reach a log line, an error message or `check-config` by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it (the connection handshake).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({MASK})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { MASK })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A connection string that may embed a password: PostgreSQL (URL or `key=value` form) or a
/// broker URL such as `amqp://user:pass@host/vhost`.
/// Printing it masks the password; [`DbUrl::expose`] gives the real string to the driver.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    /// Wraps a connection string.
    pub fn new(value: impl Into<String>) -> Self {
        DbUrl(value.into())
    }

    /// The connection string as given, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The connection string with any password replaced by [`MASK`].
    pub fn masked(&self) -> String {
        mask_connection_string(&self.0)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({:?})", self.masked())
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for DbUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for DbUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(DbUrl)
    }
}

/// Masks the password in `postgres://user:pass@host/db`, in a `password=` query parameter and in
/// the `key=value` form, leaving everything else readable.
pub fn mask_connection_string(conn: &str) -> String {
    let mut out = conn.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                out.replace_range(start..rest_start + at, MASK);
            }
        }
    }
    mask_password_params(&out)
}

/// Masks every `password=VALUE` (query parameter or `key=value` pair).
fn mask_password_params(conn: &str) -> String {
    let lower = conn.to_ascii_lowercase();
    let mut out = String::with_capacity(conn.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find("password") {
        let key_start = search + found;
        let mut value_start = key_start + "password".len();
        let bytes = conn.as_bytes();
        while value_start < bytes.len() && bytes[value_start] == b' ' {
            value_start += 1;
        }
        let preceded_ok = key_start == 0 || matches!(bytes[key_start - 1], b'?' | b'&' | b' ');
        if !preceded_ok || value_start >= bytes.len() || bytes[value_start] != b'=' {
            search = key_start + 1;
            continue;
        }
        value_start += 1;
        while value_start < bytes.len() && bytes[value_start] == b' ' {
            value_start += 1;
        }
        let value_end = if bytes.get(value_start) == Some(&b'\'') {
            conn[value_start + 1..]
                .find('\'')
                .map_or(conn.len(), |i| value_start + i + 2)
        } else {
            conn[value_start..]
                .find(['&', ' '])
                .map_or(conn.len(), |i| value_start + i)
        };
        out.push_str(&conn[copied..value_start]);
        out.push_str(MASK);
        copied = value_end;
        search = value_end.max(key_start + 1);
        if search >= conn.len() {
            break;
        }
    }
    out.push_str(&conn[copied.min(conn.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_masked() {
        let masked = mask_connection_string("postgres://app:s3cr%40t@db:5432/shop?sslmode=require");
        assert_eq!(
            masked,
            "postgres://app:********@db:5432/shop?sslmode=require"
        );
    }

    #[test]
    fn url_without_password_is_unchanged() {
        let url = "postgres://postgres@127.0.0.1:5432/postgres";
        assert_eq!(mask_connection_string(url), url);
    }

    #[test]
    fn password_parameters_are_masked() {
        assert_eq!(
            mask_connection_string("postgres://h/db?user=a&password=hunter2&sslmode=disable"),
            "postgres://h/db?user=a&password=********&sslmode=disable"
        );
        assert_eq!(
            mask_connection_string("host=h password='a b' user=x"),
            "host=h password=******** user=x"
        );
        assert_eq!(
            mask_connection_string("password = pw user=x"),
            "password = ******** user=x"
        );
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
        assert!(!serde_json::to_string(&secret).unwrap().contains("hunter2"));
        let url = DbUrl::new("postgres://u:hunter2@h/db");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
    }
}
