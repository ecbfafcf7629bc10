//! Loading the AWS SDK's shared configuration: the region and credentials from the standard
//! chain, the optional endpoint, per-call timeouts, and an HTTPS client on rustls with ring
//! (the SDK's default client would bring aws-lc-rs, a second crypto stack).

use super::config::AwsConnection;
use crate::error::{Error, ErrorKind, Result};
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::ProvideCredentials;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use std::time::Duration;

/// The places the standard credential chain looks, in order, for error messages.
pub const CREDENTIAL_CHAIN: &str = "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), \
     profile (~/.aws/credentials and ~/.aws/config, AWS_PROFILE), web identity token \
     (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN), ECS container credentials, EC2 instance \
     metadata";

/// The SDK configuration for `connection`. Fails, naming the chain, when no region or no
/// credentials can be found: a relay without them could never deliver anything.
pub async fn load(connection: AwsConnection<'_>) -> Result<SdkConfig> {
    let table = connection.table;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(connection.timeout_ms))
        .connect_timeout(Duration::from_millis(connection.timeout_ms.min(3_000)))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts);
    if let Some(region) = connection.region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(endpoint) = connection.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(Error::config(
            &format!("{table}.region"),
            "no AWS region: set it here, or AWS_REGION, or a profile's region",
        ));
    }
    let provider = sdk.credentials_provider().ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            format!("{table}: no AWS credentials provider; looked in: {CREDENTIAL_CHAIN}"),
        )
    })?;
    provider.provide_credentials().await.map_err(|err| {
        Error::with_source(
            ErrorKind::Config,
            format!(
                "{table}: no AWS credentials found by the standard chain; looked in: \
                 {CREDENTIAL_CHAIN}"
            ),
            err,
        )
    })?;
    Ok(sdk)
}
