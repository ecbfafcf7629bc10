//! The sink conformance suite (tests/common/conformance.rs) against the embedded log.

mod common;

use common::conformance::{Delivered, DeliveredChange, Refusal, SinkUnderTest};
use common::disk::Tmpfs;
use common::relay::{read_log, seq_of};
use outboxd::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The embedded log in a directory of its own; for an outage, on a tmpfs where the directory
/// can be made immutable.
struct LogSink {
    /// Holds the log (and the tmpfs mount point).
    root: tempfile::TempDir,
    /// The log directory.
    log: PathBuf,
    /// The tmpfs, once an outage is prepared.
    disk: Option<Tmpfs>,
}

/// `chattr <flag> <path>`; whether it worked.
fn chattr(flag: &str, path: &Path) -> bool {
    let status = Command::new("chattr").arg(flag).arg(path).status();
    status.is_ok_and(|status| status.success())
}

impl SinkUnderTest for LogSink {
    // Start-up reads the log's tail, and a failed append is cut back before the next, so no
    // event is ever appended twice.
    const EXACTLY_ONCE: bool = true;

    async fn setup() -> Option<Self> {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join("log");
        Some(LogSink {
            root,
            log,
            disk: None,
        })
    }

    fn configure(&self, config: &mut Config) {
        config.sink.log.dir = self.log.clone();
    }

    /// Change events go to the topic `<schema>.<table>` of the same log.
    async fn prepare_changes(&mut self, _config: &mut Config, _table: &str) -> bool {
        true
    }

    async fn delivered_changes(&mut self, table: &str) -> Vec<DeliveredChange> {
        read_log(&self.log)
            .iter()
            .filter(|record| record.topic == table)
            .map(|record| DeliveredChange {
                id: record.event.id.clone(),
                key: record.event.key.clone(),
                payload: serde_json::from_str(record.event.payload.get()).expect("JSON payload"),
                stream: 0,
            })
            .collect()
    }

    async fn delivered(&mut self) -> Vec<Delivered> {
        read_log(&self.log)
            .iter()
            .map(|record| Delivered {
                id: record.event.id.clone(),
                key: record.event.key.clone(),
                seq: seq_of(record),
                stream: 0,
            })
            .collect()
    }

    /// The directory turns unwritable: root ignores permission bits and cannot remount
    /// read-only while the relay has files open for writing, but an immutable directory
    /// refuses new files even to root. The open segment stays writable, so the failure comes
    /// at the next roll: segments are kept small (16 KiB) so that comes within a few batches.
    async fn prepare_outage(&mut self, config: &mut Config) -> bool {
        let Some(disk) = Tmpfs::mount(&self.root.path().join("disk"), "size=16m") else {
            return false;
        };
        let probe = disk.dir.join("probe");
        std::fs::create_dir(&probe).unwrap();
        if !(chattr("+i", &probe) && chattr("-i", &probe)) {
            eprintln!("skipped: chattr +i does not work here");
            return false;
        }
        self.log = disk.dir.join("log");
        self.disk = Some(disk);
        self.configure(config);
        config.sink.log.segment_bytes = 16 * 1024;
        true
    }

    async fn outage(&mut self, down: bool) {
        let flag = if down { "+i" } else { "-i" };
        assert!(
            chattr(flag, &self.log),
            "chattr {flag} {}",
            self.log.display()
        );
    }

    fn refusal(&self, config: &mut Config) -> Refusal {
        config.sink.log.max_record_bytes = 2000;
        Refusal {
            event_type: "Step".into(),
            pad: 5000,
            reason: "exceeds sink.log.max_record_bytes (2000)",
        }
    }

    // Not applicable: the embedded log has no consumer that can push back and no flow
    // control; an append either lands or fails (a full or unwritable disk, which the outage
    // scenario and tests/outages.rs cover).
    fn prepare_backpressure(&self, _config: &mut Config) -> Option<()> {
        None
    }

    async fn backpressure(&mut self, _on: bool) {}

    fn held_back(&self, _metrics: &str, _aggregates: usize) -> bool {
        false
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        // A test that failed mid-outage leaves the directory immutable, and then neither the
        // tmpfs nor the temporary directory could be cleaned up.
        if self.disk.is_some() {
            chattr("-i", &self.log);
        }
    }
}

common::conformance::suite!(LogSink);
