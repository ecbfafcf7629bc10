//! The URL an event is POSTed to: `sink.webhook.url` as a template whose placeholders are
//! replaced by the event's fields, percent-encoded so that a field can never change the URL's
//! structure (a key `a/b?c` stays one path segment). A URL that is fixed for every outbox
//! event is parsed once.

use crate::error::{Error, Result};
use crate::event::{Event, TableName};
use crate::secret::DbUrl;
use crate::sink::template::{ALL_FIELDS, Template};
use http::Uri;

/// A parsed `sink.webhook.url`.
#[derive(Clone, Debug)]
pub struct UrlTemplate {
    /// The template.
    template: Template,
    /// The URL, if no placeholder varies between events of the outbox.
    fixed: Option<Uri>,
    /// Whether the scheme is `https`.
    https: bool,
}

impl UrlTemplate {
    /// The outbox table `{schema}` and `{table}` stand for in its events.
    pub fn outbox(&self) -> &TableName {
        self.template.outbox()
    }

    /// Parses and checks `url` (with `1` for each placeholder: valid as a host, a port or a path); the error names
    /// `sink.webhook.url` and shows the URL masked.
    pub fn parse(url: &DbUrl) -> Result<Self> {
        Self::parse_for(url, &TableName::default())
    }

    /// As [`UrlTemplate::parse`], for events of the outbox table `outbox`.
    pub fn parse_for(url: &DbUrl, outbox: &TableName) -> Result<Self> {
        let text = url.expose();
        let template = Template::parse(text, ALL_FIELDS)
            .map_err(|reason| Error::config("sink.webhook.url", reason))?
            .for_outbox(outbox);
        let mut probe = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            probe.push_str(&rest[..open]);
            probe.push('1');
            rest = rest[open..].split_once('}').map_or("", |(_, after)| after);
        }
        probe.push_str(rest);
        check(&probe).map_err(|reason| {
            Error::config("sink.webhook.url", format!("{reason} ({})", url.masked()))
        })?;
        let fixed = match template.fixed() {
            Some(url) => Some(
                check(&url)
                    .map_err(|reason| Error::config("sink.webhook.url", reason.to_string()))?,
            ),
            None => None,
        };
        let https = text
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        Ok(UrlTemplate {
            template,
            fixed,
            https,
        })
    }

    /// Whether the URL is `https://`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The URL of every event, if it does not vary.
    pub fn fixed(&self) -> Option<&Uri> {
        self.fixed.as_ref()
    }

    /// The URL for `event`, or why it is not a valid one (the reason to refuse the event).
    pub fn render(&self, event: &Event) -> std::result::Result<Uri, String> {
        if let (Some(uri), crate::event::Origin::Outbox) = (&self.fixed, &event.origin) {
            return Ok(uri.clone());
        }
        let url = self.template.render_encoded(event, encode)?;
        check(&url).map_err(|reason| format!("the webhook URL {url:?} {reason}"))
    }
}

/// Percent-encodes a field's value: every byte but ALPHA, DIGIT, `-`, `.`, `_` and `~`. A
/// value that is `.` or `..` would be a dot segment, which changes the path: refused.
fn encode(value: &str, out: &mut String) -> std::result::Result<(), String> {
    if value == "." || value == ".." {
        return Err(format!(
            "the field value {value:?} cannot be put in the webhook URL (a dot segment)"
        ));
    }
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(())
}

/// `url` as a request URI, if it is an absolute `http://` or `https://` URL with a host.
fn check(url: &str) -> std::result::Result<Uri, &'static str> {
    let parsed = url::Url::parse(url).map_err(|_| "is not a valid URL")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must start with http:// or https://");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not hold a user or password (send credentials with sink.webhook.headers)",
        );
    }
    if parsed.fragment().is_some() {
        return Err("must not have a #fragment");
    }
    parsed
        .as_str()
        .parse::<Uri>()
        .map_err(|_| "is not a valid request URI")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Origin, sample};

    /// `url` parsed for the outbox `public.outbox`.
    fn parse(url: &str) -> UrlTemplate {
        UrlTemplate::parse_for(&DbUrl::new(url), &TableName::new("public", "outbox")).unwrap()
    }

    #[test]
    fn a_fixed_url_is_parsed_once_and_fields_are_percent_encoded() {
        let fixed = parse("https://hooks.example/{schema}/{table}");
        assert_eq!(
            fixed.fixed().unwrap(),
            "https://hooks.example/public/outbox"
        );
        assert!(fixed.is_https());
        let mut event = sample(None);
        event.key = "a/b?c d".into();
        let per_key = parse("http://127.0.0.1:9/orders/{key}/{type}");
        assert_eq!(
            per_key.render(&event).unwrap(),
            "http://127.0.0.1:9/orders/a%2Fb%3Fc%20d/OrderPlaced"
        );
    }

    #[test]
    fn an_event_whose_url_is_invalid_is_refused_naming_it() {
        let template = parse("http://{aggregatetype}.hooks.example/in");
        let mut event = sample(None);
        assert_eq!(
            template.render(&event).unwrap(),
            "http://order.hooks.example/in"
        );
        event.subject = "no host!".into();
        let reason = template.render(&event).unwrap_err();
        assert!(
            reason.starts_with("the webhook URL \"http://no%20host%21"),
            "{reason}"
        );
        event.key = "..".into();
        event.origin = Origin::Message { prefix: "p".into() };
        let dots = parse("http://h/{key}").render(&event).unwrap_err();
        assert!(dots.contains("dot segment"), "{dots}");
    }

    #[test]
    fn bad_templates_are_config_errors_without_the_password() {
        for bad in [
            "ftp://h/x",
            "http://:80/x",
            "http://u:hunter2@h/{nope}",
            "http://u:hunter2@h/x",
            "/relative",
        ] {
            let err = UrlTemplate::parse(&DbUrl::new(bad))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("sink.webhook.url"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
