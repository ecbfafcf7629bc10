//! The sink handle SQS and SNS share: a destination template, the batch API, and whether the
//! last call reached AWS. Only the API ([`BatchApi`]: the call, the target check, the probe)
//! differs between the two.

use super::batch::{self, BatchApi};
use super::config::required_template;
use crate::error::Result;
use crate::event::Event;
use crate::sink::template::Template;
use crate::sink::{Outcome, Sink};

/// Sends events through `A` to the queues or topics a template names.
pub struct AwsSink<A> {
    /// The parsed queue URL or topic ARN template.
    template: Template,
    /// The client and the last queue or topic it reached.
    api: A,
    /// Whether the last batch or probe reached AWS.
    healthy: bool,
}

impl<A> AwsSink<A> {
    /// A healthy handle on `api` sending to `template`.
    pub fn new(template: Template, api: A) -> Self {
        AwsSink {
            template,
            api,
            healthy: true,
        }
    }
}

impl<A: BatchApi + Clone + Sync + 'static> Sink for AwsSink<A> {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let result = batch::publish(&mut self.api, &self.template, events).await;
        self.healthy = result.is_ok();
        result
    }

    /// Another handle on the same client (its connection pool is shared).
    async fn fork(&self) -> Result<Self> {
        Ok(AwsSink {
            template: self.template.clone(),
            api: self.api.clone(),
            healthy: self.healthy,
        })
    }

    /// A handle on the same client sending to the `destination` template.
    async fn redirect(&self, destination: &str) -> Result<Self> {
        let template = required_template(crate::sink::DEAD_LETTER_KEY, destination)?
            .for_outbox(self.template.outbox());
        Ok(AwsSink {
            template,
            api: self.api.clone(),
            healthy: self.healthy,
        })
    }

    fn name(&self) -> &'static str {
        A::NAME
    }

    fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Any answer from AWS counts, even a refusal: the sink is reachable.
    async fn probe(&mut self) -> bool {
        self.healthy = self.api.reach().await;
        self.healthy
    }
}
