//! Dead letters of a source read once, kept in the store (`src/dlq/`) so the slot may be
//! confirmed past them: refused events are stored `dead`; with `on_dead_letter =
//! "block_aggregate"` the later events of their keys are stored `parked` instead of delivered;
//! parked events that no dead letter precedes any more (the operator retried or skipped it)
//! are handed out again, oldest first, before the key's new events flow directly once more.
//!
//! Events handed out from the store carry a position with [`STORE_BIT`] set (`STORE_BIT |
//! seq`): WAL positions never reach it, so acknowledgements of store events are told apart from
//! the stream's and never move the slot.

use crate::config::{OnDeadLetter, RelayConfig, SourceConfig};
use crate::dlq::Store;
use crate::error::Result;
use crate::event::{Event, Position, Rejected};
use crate::source::{Batch, Refusal};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Marks a position as a row of the store rather than a WAL position.
pub const STORE_BIT: u64 = 1 << 63;

/// How often the store is looked at for parked events to hand out while it holds any (an
/// operator's `outboxd dlq retry` or `skip` takes effect within this).
const LOOK_INTERVAL: Duration = Duration::from_secs(1);

/// The source's view of the store.
pub struct Parking {
    /// The store of this slot.
    store: Store,
    /// Whether later events of a key with a dead letter wait behind it.
    block: bool,
    /// Keys whose new events are parked.
    blocked: HashSet<String>,
    /// Store events handed out and not yet settled: position → row.
    out: HashMap<u64, i64>,
    /// Whether the store may hold something to hand out.
    watching: bool,
    /// When to look at the store next.
    next_look: Instant,
}

impl Parking {
    /// Creates the store if `auto_migrate` (else requires it) and loads the blocked keys.
    pub async fn start(
        client: &Client,
        config: &SourceConfig,
        relay: &RelayConfig,
    ) -> Result<Self> {
        let store = Store::new(config);
        // Only missing tables are created: a least-privileged role may not run DDL at all.
        if !store.exists(client).await? {
            match config.auto_migrate {
                true => store.create(client, &config.table.schema).await?,
                false => return Err(crate::dlq::missing(&store)),
            }
        }
        let block = relay.on_dead_letter == OnDeadLetter::BlockAggregate;
        let blocked = match block {
            true => store.blocked_keys(client).await?.into_iter().collect(),
            false => HashSet::new(),
        };
        let watching = store.has_rows(client).await?;
        Ok(Parking {
            store,
            block,
            blocked,
            out: HashMap::new(),
            watching,
            next_look: Instant::now(),
        })
    }

    /// Whether the store is watched, and when it is due its next look (the stream's reader
    /// wakes then, between transactions).
    pub fn look_due(&self) -> (bool, tokio::time::Instant) {
        (self.watching, self.next_look.into())
    }

    /// Whether `position` belongs to an event handed out from the store.
    pub fn is_store(position: Position) -> bool {
        position.0 & STORE_BIT != 0
    }

    /// Parked events that may go out again, as a batch of up to `limit`, when it is time to
    /// look at the store.
    pub async fn ready(&mut self, client: &Client, limit: usize) -> Result<Option<Batch>> {
        if !self.due() {
            return Ok(None);
        }
        self.next_look = Instant::now() + LOOK_INTERVAL;
        let exclude: Vec<i64> = self.out.values().copied().collect();
        let ready = self.store.ready(client, limit as i64, &exclude).await?;
        if ready.is_empty() {
            self.watching = !self.out.is_empty() || self.store.has_rows(client).await?;
            return Ok(None);
        }
        let mut events = Vec::with_capacity(ready.len());
        for row in ready {
            let mut event = row.event;
            event.position = Position(STORE_BIT | row.seq as u64);
            self.out.insert(event.position.0, row.seq);
            if self.block {
                self.blocked.insert(event.key.clone());
            }
            events.push(event);
        }
        Ok(Some(Batch {
            events,
            rejected: Vec::new(),
        }))
    }

    /// Whether `events` hold any of a blocked key (to be parked by [`Self::divert`]).
    pub fn diverts(&self, events: &[Event]) -> bool {
        !self.blocked.is_empty() && events.iter().any(|e| self.blocked.contains(&e.key))
    }

    /// Whether the store is due a look for parked events to hand out (see [`Self::ready`]).
    pub fn due(&self) -> bool {
        self.watching && Instant::now() >= self.next_look
    }

    /// Takes the stream's events of blocked keys out of `events` and parks them; returns their
    /// positions, settled once this returns. On an error `events` are as they were and nothing
    /// is parked (one transaction), so the call may be repeated.
    pub async fn divert(&mut self, client: &Client, events: &mut Vec<Event>) -> Result<Vec<u64>> {
        if !self.diverts(events) {
            return Ok(Vec::new());
        }
        let parked: Vec<&Event> = events
            .iter()
            .filter(|event| self.blocked.contains(&event.key))
            .collect();
        crate::dlq::begin(client).await?;
        self.store.park(client, &parked).await?;
        crate::dlq::commit(client).await?;
        let positions = parked.iter().map(|event| event.position.0).collect();
        events.retain(|event| !self.blocked.contains(&event.key));
        self.watching = true;
        Ok(positions)
    }

    /// Stores refusals as dead letters (or, for store events, dead again) and parks the events
    /// held back behind them; returns the stream positions now settled. Every write is in one
    /// transaction and this view changes only after it committed, so on an error the call may
    /// be repeated.
    pub async fn refuse(
        &mut self,
        client: &Client,
        refused: &[Refusal],
        parked: &[Event],
    ) -> Result<Vec<u64>> {
        let mut settled = Vec::new();
        let mut letters = Vec::new();
        let mut again = Vec::new();
        for refusal in refused {
            let position = refusal.rejected.position;
            match self.out.get(&position.0) {
                Some(seq) => again.push((*seq, refusal.rejected.reason.as_str())),
                None => {
                    letters.push((&refusal.event, refusal.rejected.reason.as_str()));
                    settled.push(position.0);
                }
            }
        }
        // Held-back store events stay parked rows; the stream's are parked now.
        let stream: Vec<&Event> = parked
            .iter()
            .filter(|event| !self.out.contains_key(&event.position.0))
            .collect();
        settled.extend(stream.iter().map(|event| event.position.0));
        crate::dlq::begin(client).await?;
        for (seq, reason) in again {
            self.store.failed_again(client, seq, reason).await?;
        }
        self.store.record(client, &letters).await?;
        self.store.park(client, &stream).await?;
        crate::dlq::commit(client).await?;
        for refusal in refused {
            self.out.remove(&refusal.rejected.position.0);
            if self.block {
                self.blocked.insert(refusal.event.key.clone());
            }
        }
        for event in parked {
            self.out.remove(&event.position.0);
        }
        self.watching = true;
        Ok(settled)
    }

    /// Rows that never became events, stored for the operator.
    pub async fn undecodable(&mut self, client: &Client, rows: &[Rejected]) -> Result<()> {
        crate::dlq::begin(client).await?;
        self.store.record_undecodable(client, rows).await?;
        crate::dlq::commit(client).await?;
        self.watching = true;
        Ok(())
    }

    /// Removes the store events among `positions` from the store (delivered), unblocking keys
    /// left with nothing stored; returns the stream's positions. This view changes only after
    /// the store did, so on an error the call may be repeated.
    pub async fn delivered(&mut self, client: &Client, positions: &[Position]) -> Result<Vec<u64>> {
        let mut seqs = Vec::new();
        let mut stream = Vec::with_capacity(positions.len());
        for position in positions {
            match self.out.get(&position.0) {
                Some(seq) => seqs.push(*seq),
                None if Parking::is_store(*position) => {}
                None => stream.push(position.0),
            }
        }
        if !seqs.is_empty() {
            for key in self.store.delivered(client, &seqs).await? {
                self.blocked.remove(&key);
            }
            for position in positions {
                self.out.remove(&position.0);
            }
            // The next parked events of these keys may go out at once.
            self.next_look = Instant::now();
        }
        Ok(stream)
    }
}
