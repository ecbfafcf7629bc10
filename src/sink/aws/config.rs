//! The `[sink.sqs]` and `[sink.sns]` tables: which queue or topic events go to, and how the
//! AWS SDK reaches it. Credentials are never configured here: they come from the SDK's
//! standard chain (environment, profile, web identity, container or instance metadata), so no
//! key of these tables holds a secret.

use crate::error::{Error, Result, check_range};
use crate::sink::template::{ALL_FIELDS, Template};
use serde::{Deserialize, Serialize};

/// The Amazon SQS sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsSinkConfig {
    /// Queue URL template, e.g.
    /// `https://sqs.eu-west-1.amazonaws.com/123456789012/{aggregatetype}.fifo`;
    /// `{aggregatetype}`, `{aggregateid}`, `{type}`, `{schema}`, `{table}`, `{op}` and `{key}`
    /// are replaced by the event's fields. A URL ending in `.fifo` is a FIFO queue. Required
    /// when `sink.type = "sqs"`.
    pub queue_url: String,
    /// AWS region, e.g. `eu-west-1`. Default: unset, the standard chain's (`AWS_REGION`,
    /// the profile's `region`, instance metadata).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL for an SQS/SNS-compatible server (LocalStack, moto, ElasticMQ) or a VPC
    /// endpoint. Default: unset, AWS's endpoint for the region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Time one call to AWS may take before it counts as failed (the SDK retries a failed
    /// call up to twice more, then the relay retries the batch), in milliseconds. Default 10000.
    pub timeout_ms: u64,
}

/// The Amazon SNS sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnsSinkConfig {
    /// Topic ARN template, e.g. `arn:aws:sns:eu-west-1:123456789012:{aggregatetype}`; the
    /// placeholders are those of `sink.sqs.queue_url`. An ARN ending in `.fifo` is a FIFO
    /// topic. Required when `sink.type = "sns"`.
    pub topic_arn: String,
    /// AWS region, e.g. `eu-west-1`. Default: unset, the standard chain's (`AWS_REGION`,
    /// the profile's `region`, instance metadata).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL for an SQS/SNS-compatible server (LocalStack, moto, ElasticMQ) or a VPC
    /// endpoint. Default: unset, AWS's endpoint for the region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Time one call to AWS may take before it counts as failed (the SDK retries a failed
    /// call up to twice more, then the relay retries the batch), in milliseconds. Default 10000.
    pub timeout_ms: u64,
}

/// The keys both AWS sinks share, borrowed from either table.
#[derive(Clone, Copy, Debug)]
pub struct AwsConnection<'a> {
    /// The table's name, `sink.sqs` or `sink.sns`, for error messages.
    pub table: &'static str,
    /// `region`.
    pub region: Option<&'a str>,
    /// `endpoint_url`.
    pub endpoint_url: Option<&'a str>,
    /// `timeout_ms`.
    pub timeout_ms: u64,
}

impl Default for SqsSinkConfig {
    fn default() -> Self {
        SqsSinkConfig {
            queue_url: String::new(),
            region: None,
            endpoint_url: None,
            timeout_ms: 10_000,
        }
    }
}

impl Default for SnsSinkConfig {
    fn default() -> Self {
        SnsSinkConfig {
            topic_arn: String::new(),
            region: None,
            endpoint_url: None,
            timeout_ms: 10_000,
        }
    }
}

impl SqsSinkConfig {
    /// Checks every `sink.sqs` key; the error names the key and the rule it broke.
    pub fn validate(&self) -> Result<()> {
        check_template("sink.sqs.queue_url", &self.queue_url)?;
        self.connection().validate()
    }

    /// The keys shared with `[sink.sns]`.
    pub fn connection(&self) -> AwsConnection<'_> {
        AwsConnection {
            table: "sink.sqs",
            region: self.region.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
            timeout_ms: self.timeout_ms,
        }
    }
}

impl SnsSinkConfig {
    /// Checks every `sink.sns` key; the error names the key and the rule it broke.
    pub fn validate(&self) -> Result<()> {
        check_template("sink.sns.topic_arn", &self.topic_arn)?;
        self.connection().validate()
    }

    /// The keys shared with `[sink.sqs]`.
    pub fn connection(&self) -> AwsConnection<'_> {
        AwsConnection {
            table: "sink.sns",
            region: self.region.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
            timeout_ms: self.timeout_ms,
        }
    }
}

impl AwsConnection<'_> {
    /// Checks the shared keys.
    fn validate(&self) -> Result<()> {
        let table = self.table;
        if let Some(region) = self.region {
            let valid = !region.is_empty()
                && region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                return Err(Error::config(
                    &format!("{table}.region"),
                    format!("is not an AWS region name like eu-west-1 (got {region:?})"),
                ));
            }
        }
        if let Some(endpoint) = self.endpoint_url {
            let parsed = url::Url::parse(endpoint);
            if !matches!(&parsed, Ok(url) if matches!(url.scheme(), "http" | "https")) {
                return Err(Error::config(
                    &format!("{table}.endpoint_url"),
                    format!("must be an http:// or https:// URL (got {endpoint:?})"),
                ));
            }
        }
        check_range(
            &format!("{table}.timeout_ms"),
            self.timeout_ms,
            100,
            600_000,
        )
    }
}

/// Parses `template` (an empty one passes: it is required only of the sink in use, when it
/// opens).
fn check_template(key: &str, template: &str) -> Result<()> {
    if template.is_empty() {
        return Ok(());
    }
    Template::parse(template, ALL_FIELDS)
        .map(|_| ())
        .map_err(|reason| Error::config(key, reason))
}

/// The parsed template of `key`, which must be set.
pub fn required_template(key: &str, template: &str) -> Result<Template> {
    if template.is_empty() {
        return Err(Error::config(key, "must be set"));
    }
    Template::parse(template, ALL_FIELDS).map_err(|reason| Error::config(key, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_an_empty_template_is_required_only_on_open() {
        SqsSinkConfig::default().validate().unwrap();
        SnsSinkConfig::default().validate().unwrap();
        let err = required_template("sink.sqs.queue_url", "").unwrap_err();
        assert_eq!(err.to_string(), "sink.sqs.queue_url: must be set");
    }

    #[test]
    fn keys_are_checked_and_named() {
        let template = SqsSinkConfig {
            queue_url: "http://q/{aggregate}".into(),
            ..SqsSinkConfig::default()
        };
        let err = template.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("sink.sqs.queue_url: unknown placeholder"),
            "{err}"
        );
        let sns = SnsSinkConfig {
            endpoint_url: Some("localhost:4566".into()),
            ..SnsSinkConfig::default()
        };
        let err = sns.validate().unwrap_err().to_string();
        assert!(err.starts_with("sink.sns.endpoint_url: must be"), "{err}");
        let mut sqs = SqsSinkConfig {
            region: Some("EU West".into()),
            ..SqsSinkConfig::default()
        };
        let err = sqs.validate().unwrap_err().to_string();
        assert!(err.starts_with("sink.sqs.region"), "{err}");
        sqs.region = Some("eu-west-1".into());
        sqs.timeout_ms = 1;
        let err = sqs.validate().unwrap_err().to_string();
        assert!(err.starts_with("sink.sqs.timeout_ms"), "{err}");
    }

    #[test]
    fn the_tables_read_from_toml_with_the_shared_keys_beside_the_own() {
        let config: SqsSinkConfig = toml::from_str(
            "queue_url = \"http://127.0.0.1:5000/123456789012/{aggregatetype}\"\n\
             region = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        assert_eq!(config.region.as_deref(), Some("us-east-1"));
        assert_eq!(config.timeout_ms, 10_000);
        assert!(toml::from_str::<SqsSinkConfig>("queue = \"x\"").is_err());
    }
}
