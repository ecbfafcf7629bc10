//! A progress line every few seconds while the relay drains a backlog: delivered so far, rate,
//! pending, lag and an ETA. Driven by the outbox stats the sampler reads anyway and by the
//! delivered-events counter, so it costs no query of its own. Quiet in the steady state: a
//! backlog is more pending events than one interval delivers.

use std::time::Instant;

/// What to log after a sample.
#[derive(Debug, PartialEq)]
pub enum Report {
    /// A backlog is being drained.
    Draining {
        /// Events delivered since the backlog was noticed.
        delivered: u64,
        /// Events per second over the last interval.
        rate: f64,
        /// Events still pending.
        pending: i64,
        /// Age of the oldest pending event, in seconds.
        lag_seconds: f64,
        /// Seconds until the backlog is gone at the current rate (`None` while stalled).
        eta_seconds: Option<f64>,
    },
    /// The backlog is gone (what is left takes less than an interval).
    Drained {
        /// Events delivered while draining.
        delivered: u64,
        /// How long it took.
        seconds: f64,
    },
}

/// Follows samples and says when a progress line is due.
#[derive(Debug, Default)]
pub struct Progress {
    /// The previous sample: when, and the delivered counter then.
    last: Option<(Instant, u64)>,
    /// While draining: when it started, and the delivered counter then.
    draining: Option<(Instant, u64)>,
}

impl Progress {
    /// Takes a sample (the delivered-events counter, pending events and the oldest one's age)
    /// and returns the line to log, if any.
    pub fn observe(
        &mut self,
        now: Instant,
        delivered: u64,
        pending: i64,
        lag: f64,
    ) -> Option<Report> {
        let (then, before) = self.last.replace((now, delivered))?;
        let interval = now.duration_since(then).as_secs_f64();
        if interval <= 0.0 {
            return None;
        }
        let rate = delivered.saturating_sub(before) as f64 / interval;
        let eta = (rate > 0.0).then(|| pending as f64 / rate);
        let backlog = pending > 0 && eta.is_none_or(|eta| eta > interval);
        match (self.draining, backlog) {
            (None, true) if rate > 0.0 => self.draining = Some((then, before)),
            (None, _) => return None,
            (Some((start, from)), false) => {
                self.draining = None;
                return Some(Report::Drained {
                    delivered: delivered.saturating_sub(from),
                    seconds: now.duration_since(start).as_secs_f64(),
                });
            }
            (Some(_), true) => {}
        }
        let (_, from) = self.draining?;
        Some(Report::Draining {
            delivered: delivered.saturating_sub(from),
            rate,
            pending,
            lag_seconds: lag,
            eta_seconds: eta,
        })
    }
}

/// Logs `report`.
pub fn log(report: &Report) {
    match report {
        Report::Draining {
            delivered,
            rate,
            pending,
            lag_seconds,
            eta_seconds,
        } => {
            let eta = eta_seconds.map_or("-".to_string(), |eta| format!("{eta:.0}s"));
            tracing::info!(
                delivered,
                rate = format!("{rate:.0}/s"),
                pending,
                lag = format!("{lag_seconds:.1}s"),
                eta,
                "draining backlog"
            );
        }
        Report::Drained { delivered, seconds } => {
            tracing::info!(
                delivered,
                took = format!("{seconds:.1}s"),
                "backlog drained"
            );
        }
    }
}

/// The events the process delivered to `sink` so far.
pub fn delivered(sink: &'static str) -> u64 {
    let labels = crate::metrics::PublishLabels {
        sink,
        outcome: "delivered",
    };
    crate::metrics::get().published.get_or_create(&labels).get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_backlog_reports_each_interval_then_once_when_drained_and_a_trickle_never() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut progress = Progress::default();
        // A trickle: 10 pending, 100 delivered per 5 s: no line.
        assert_eq!(progress.observe(at(0), 0, 10, 0.1), None);
        assert_eq!(progress.observe(at(5), 100, 10, 0.1), None);
        // A backlog: 10,000 pending at 1,000/s.
        let line = progress.observe(at(10), 5100, 10_000, 30.0).unwrap();
        assert_eq!(
            line,
            Report::Draining {
                delivered: 5000,
                rate: 1000.0,
                pending: 10_000,
                lag_seconds: 30.0,
                eta_seconds: Some(10.0),
            }
        );
        assert!(matches!(
            progress.observe(at(15), 10_100, 6000, 20.0),
            Some(Report::Draining {
                delivered: 10_000,
                ..
            })
        ));
        assert_eq!(
            progress.observe(at(20), 15_100, 0, 0.0),
            Some(Report::Drained {
                delivered: 15_000,
                seconds: 15.0
            })
        );
        assert_eq!(progress.observe(at(25), 15_100, 0, 0.0), None);
    }
}
