//! The JetStream stream events land in, checked at start-up: it must exist and its subjects
//! must cover every subject the template can produce, or it is created when
//! `create_stream = true`. A publish to a subject no stream holds would get no answer but
//! "no responders"; checking first turns that into one clear error before anything is sent.

use super::config::NatsSinkConfig;
use super::subject::{SubjectTemplate, covers};
use crate::error::{Error, ErrorKind, Result};
use async_nats::jetstream::Context;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream::{Config, Info, StorageType};
use futures_util::TryStreamExt;
use std::time::Duration;

/// What the sink knows of its stream.
#[derive(Clone, Debug)]
pub struct StreamFacts {
    /// The stream's name.
    pub name: String,
    /// Its duplicate window: a repeat of a `Nats-Msg-Id` stored less than this long ago is
    /// dropped.
    pub duplicate_window: Duration,
}

/// Finds (or creates) the stream for `subject` and checks that it covers the subject's filter.
/// Every failure is a [`ErrorKind::Config`] error naming the stream and the subject.
pub async fn ensure(
    js: &Context,
    config: &NatsSinkConfig,
    subject: &SubjectTemplate,
) -> Result<StreamFacts> {
    let filter = subject.filter();
    let info = match &config.stream {
        Some(name) => match find(js, name).await? {
            Some(info) => info,
            None if config.create_stream => create(js, config, subject, name).await?,
            None => {
                return Err(Error::config(
                    "sink.nats.stream",
                    format!(
                        "stream \"{name}\" does not exist; create it with subjects covering \
                         \"{filter}\" or set sink.nats.create_stream = true"
                    ),
                ));
            }
        },
        None => by_subject(js, &filter).await?,
    };
    if !info.config.subjects.iter().any(|s| covers(s, &filter)) {
        return Err(Error::config(
            "sink.nats.stream",
            format!(
                "stream \"{}\" (subjects {:?}) does not cover subject \"{filter}\" of \
                 sink.nats.subject; add it to the stream's subjects",
                info.config.name, info.config.subjects
            ),
        ));
    }
    Ok(StreamFacts {
        name: info.config.name.clone(),
        duplicate_window: info.config.duplicate_window,
    })
}

/// The stream called `name`, `None` if there is none.
async fn find(js: &Context, name: &str) -> Result<Option<Info>> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().clone())),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(js_err)
                if js_err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(unavailable(&format!("looking up stream \"{name}\""), err)),
        },
    }
}

/// The first stream whose subjects cover `filter`.
async fn by_subject(js: &Context, filter: &str) -> Result<Info> {
    let streams: Vec<Info> = js
        .streams()
        .try_collect()
        .await
        .map_err(|err| unavailable("listing JetStream streams", err))?;
    streams
        .into_iter()
        .find(|info| info.config.subjects.iter().any(|s| covers(s, filter)))
        .ok_or_else(|| {
            Error::config(
                "sink.nats.subject",
                format!(
                    "no JetStream stream covers subject \"{filter}\"; create one, or set \
                     sink.nats.stream and sink.nats.create_stream = true"
                ),
            )
        })
}

/// Creates the stream `name`: file storage, `replicas`, the duplicate window, and the
/// template's stream subject (`outbox.>`).
async fn create(
    js: &Context,
    config: &NatsSinkConfig,
    subject: &SubjectTemplate,
    name: &str,
) -> Result<Info> {
    let subjects = subject.stream_subject().ok_or_else(|| {
        Error::config(
            "sink.nats.create_stream",
            format!(
                "sink.nats.subject \"{}\" starts with a placeholder, so no stream subject short \
                 of every subject (\">\") covers it; create the stream yourself",
                subject.filter()
            ),
        )
    })?;
    let stream = js
        .create_stream(Config {
            name: name.to_string(),
            subjects: vec![subjects.clone()],
            storage: StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: Duration::from_secs(config.duplicate_window_s),
            ..Config::default()
        })
        .await
        .map_err(|err| match err.kind() {
            CreateStreamErrorKind::JetStream(js_err) => Error::config(
                "sink.nats.create_stream",
                format!(
                    "JetStream refused to create stream \"{name}\" on \"{subjects}\": {js_err}"
                ),
            ),
            _ => unavailable(&format!("creating stream \"{name}\""), err),
        })?;
    tracing::info!(stream = name, subjects, "created JetStream stream");
    Ok(stream.cached_info().clone())
}

/// A JetStream API request that failed (no JetStream, a timeout): final at start-up, with a
/// hint for the commonest cause.
fn unavailable(context: &str, err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(
        ErrorKind::Config,
        format!("{context} failed (is JetStream enabled, nats-server -js?)"),
        err,
    )
}
