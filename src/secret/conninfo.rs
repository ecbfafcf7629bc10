//! Reading a PostgreSQL connection string the way the driver does: taking `sslmode` out of it
//! (the driver knows only `disable`/`prefer`/`require`, and outboxd's TLS is set by
//! `source.tls.mode`), and printing it from what the driver parsed rather than from the text.
//!
//! Both forms follow tokio-postgres' parser exactly (URL: credentials up to the first `@`, host
//! up to `/` or `?`, database up to `?`, then `&`-separated parameters with percent-decoded
//! keys; `key=value`: whitespace-separated, values optionally quoted with backslash escapes), so
//! what is taken out or printed is what the driver would have used.

use super::MASK;
use std::fmt::Write;
use std::str::FromStr;
use tokio_postgres::config::Host;

/// What is shown in place of a connection string the driver cannot parse: its text may hold a
/// password anywhere, so none of it is shown.
pub const UNPARSEABLE: &str = "(unparseable connection string, not shown)";

/// A PostgreSQL connection string split into the part the driver reads and its `sslmode`.
pub struct Conninfo {
    /// The connection string without any `sslmode` parameter.
    pub rest: String,
    /// The last `sslmode` value given (as the driver, the last one wins), if any.
    pub sslmode: Option<String>,
}

impl Conninfo {
    /// Splits `conn` (URL or `key=value` form). A string whose structure cannot be read is kept
    /// whole, for the driver to refuse.
    pub fn split(conn: &str) -> Conninfo {
        let split = match ["postgres://", "postgresql://"]
            .iter()
            .find(|prefix| conn.starts_with(*prefix))
        {
            Some(prefix) => split_url(conn, prefix.len()),
            None => split_key_values(conn),
        };
        split.unwrap_or_else(|| Conninfo {
            rest: conn.to_string(),
            sslmode: None,
        })
    }

    /// The driver's configuration for the string without `sslmode`, if it parses.
    pub fn parse(&self) -> Option<tokio_postgres::Config> {
        tokio_postgres::Config::from_str(&self.rest).ok()
    }
}

/// The URL form: parameters follow the first `?` after the credentials (up to the first `@`)
/// and the host (up to `/` or `?`).
fn split_url(conn: &str, prefix: usize) -> Option<Conninfo> {
    let after_creds = conn[prefix..]
        .find('@')
        .map_or(prefix, |at| prefix + at + 1);
    let Some(query) = conn[after_creds..].find('?').map(|q| after_creds + q) else {
        return Some(Conninfo {
            rest: conn.to_string(),
            sslmode: None,
        });
    };
    let mut kept = Vec::new();
    let mut sslmode = None;
    for param in conn[query + 1..].split('&') {
        let (key, value) = param.split_once('=')?;
        let key = percent_decode(key)?;
        if key == "sslmode" {
            sslmode = Some(percent_decode(value)?);
        } else {
            kept.push(param);
        }
    }
    let mut rest = conn[..query].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Some(Conninfo { rest, sslmode })
}

/// The `key=value` form, tokenised as the driver does.
fn split_key_values(conn: &str) -> Option<Conninfo> {
    let mut rest = String::new();
    let mut sslmode = None;
    let mut chars = conn.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut value = String::new();
        loop {
            let Some(&(_, c)) = chars.peek() else {
                if quoted {
                    return None;
                }
                break;
            };
            if (quoted && c == '\'') || (!quoted && c.is_whitespace()) {
                break;
            }
            chars.next();
            if c == '\\' {
                value.push(chars.next()?.1);
            } else {
                value.push(c);
            }
        }
        if quoted {
            chars.next();
        } else if value.is_empty() {
            return None;
        }
        let end = chars.peek().map_or(conn.len(), |(i, _)| *i);
        if key == "sslmode" {
            sslmode = Some(value);
        } else {
            rest.push_str(&conn[start..end]);
            rest.push(' ');
        }
    }
    Some(Conninfo {
        rest: rest.trim_end().to_string(),
        sslmode,
    })
}

/// Percent-decodes as the driver does (invalid UTF-8 is refused).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h)? * 16 + hex(l)?) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Renders `conn` for people: `postgres://user:********@host:port/dbname?sslmode=…`, built from
/// the fields the driver parsed (never by editing the text), so no password can survive however
/// the string is written. Port 5432 is left out; a password, wherever it was given, shows as
/// [`MASK`]. A string the driver cannot parse is not shown at all.
pub fn render(conn: &str) -> String {
    let split = Conninfo::split(conn);
    let Some(pg) = split.parse() else {
        return UNPARSEABLE.to_string();
    };
    let mut out = String::from("postgres://");
    if let Some(user) = pg.get_user() {
        out.push_str(&encode(user));
    }
    if pg.get_password().is_some() {
        let _ = write!(out, ":{MASK}");
    }
    if pg.get_user().is_some() || pg.get_password().is_some() {
        out.push('@');
    }
    let ports = pg.get_ports();
    for (i, host) in pg.get_hosts().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match host {
            Host::Tcp(name) if name.contains(':') => {
                let _ = write!(out, "[{name}]");
            }
            Host::Tcp(name) => out.push_str(&encode(name)),
            Host::Unix(path) => out.push_str(&encode(&path.to_string_lossy())),
        }
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        if port != 5432 {
            let _ = write!(out, ":{port}");
        }
    }
    if let Some(dbname) = pg.get_dbname() {
        let _ = write!(out, "/{}", encode(dbname));
    }
    if let Some(mode) = &split.sslmode {
        let _ = write!(out, "?sslmode={}", encode(mode));
    }
    out
}

/// Percent-encodes everything but unreserved characters, so a rendered field cannot be read as
/// another one.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_both_forms() {
        let url = Conninfo::split("postgres://u:p@h/db?application_name=a&ssl%6Dode=verify-full");
        assert_eq!(url.rest, "postgres://u:p@h/db?application_name=a");
        assert_eq!(url.sslmode.as_deref(), Some("verify-full"));
        let kv = Conninfo::split("host=h sslmode = 'require' user=u");
        assert_eq!(kv.rest, "host=h user=u");
        assert_eq!(kv.sslmode.as_deref(), Some("require"));
        let none = Conninfo::split("postgres://h/db");
        assert_eq!(
            (none.rest.as_str(), none.sslmode),
            ("postgres://h/db", None)
        );
    }

    #[test]
    fn rendering_shows_what_the_driver_parsed_and_never_the_password() {
        let cases = [
            // Credentials run to the '@', not to the first '/'
            (
                "postgres://app:Hunter/2Secret@db/x",
                "postgres://app:********@db/x",
            ),
            // A percent-encoded key is still the password
            (
                "postgres://db/x?user=app&pass%77ord=Hunter2Secret",
                "postgres://app:********@db/x",
            ),
            // Tab-separated key=value
            (
                "host=db\tpassword=Hunter2Secret\tuser=app\tdbname=x",
                "postgres://app:********@db/x",
            ),
            // An escaped quote inside a quoted value
            (
                "host=db password='Hunter\\'2Secret' user=app port=5433",
                "postgres://app:********@db:5433",
            ),
            (
                "postgres://app:s3cr%40t@db:5432/shop?sslmode=require",
                "postgres://app:********@db/shop?sslmode=require",
            ),
            (
                "postgres://postgres@127.0.0.1:6000/t",
                "postgres://postgres@127.0.0.1:6000/t",
            ),
        ];
        for (given, shown) in cases {
            let rendered = render(given);
            assert_eq!(rendered, shown, "{given}");
            assert!(!rendered.contains("Secret") && !rendered.contains("s3cr"));
        }
        assert_eq!(
            render("postgres://u:Hunter2Secret@h:notaport/db"),
            UNPARSEABLE
        );
    }
}
