//! Named consumer groups: a durable "next offset to read" per group, in
//! `<log dir>/groups/<name>.offset`, so a reader can stop and resume where it left off.
//!
//! A group served with queue semantics (see `queue/`) acknowledges records out of order, so it
//! also keeps `<name>.acks`: the committed offset, the group's topic, and the offsets at or
//! after it that are acknowledged already. Its committed offset is the larger of the two files'
//! (`.acks` is written first, so a crash between the two writes loses nothing).
//!
//! Groups belong to readers: the writer never writes them. Retention keeps what the groups
//! have not committed unless `sink.log.retention_over_groups` says otherwise (see
//! `retention.rs`).

use super::permissions;
use crate::error::{Error, ErrorKind, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Sub-directory of the log directory holding the groups' files.
const GROUPS_DIR: &str = "groups";

/// What a group served with queue semantics keeps durable (the `.acks` file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckState {
    /// Every record below this offset is acknowledged (or not of the group's topic).
    pub committed: u64,
    /// The only topic the group reads, if it was created with one.
    pub topic: Option<String>,
    /// Offsets at or after `committed` acknowledged already.
    pub acked: BTreeSet<u64>,
}

/// One named consumer group of a log directory.
#[derive(Debug)]
pub struct ConsumerGroup {
    /// The `groups` directory.
    dir: PathBuf,
    /// The group's file.
    path: PathBuf,
}

impl ConsumerGroup {
    /// The group `name` of the log at `log_dir` (created on the first commit). Names are
    /// 1-100 characters of `A-Z a-z 0-9 . _ -`, not starting with a dot.
    pub fn open(log_dir: &Path, name: &str) -> Result<ConsumerGroup> {
        let valid = (1..=100).contains(&name.len())
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "consumer group name {name:?} is invalid: use 1-100 characters of A-Z a-z \
                     0-9 . _ -, not starting with a dot"
                ),
            ));
        }
        let dir = log_dir.join(GROUPS_DIR);
        let path = dir.join(format!("{name}.offset"));
        Ok(ConsumerGroup { dir, path })
    }

    /// Names of the groups of the log at `log_dir` that committed anything, sorted.
    pub fn list(log_dir: &Path) -> Result<Vec<String>> {
        let dir = log_dir.join(GROUPS_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(Error::io(format!("listing {}", dir.display()), err)),
        };
        let mut names = BTreeSet::new();
        for entry in entries {
            let entry =
                entry.map_err(|err| Error::io(format!("listing {}", dir.display()), err))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(".offset").or(file.strip_suffix(".acks"));
            if let Some(name) = name.filter(|name| !name.starts_with('.')) {
                names.insert(name.to_owned());
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Whether the group has committed anything (either file exists).
    pub fn exists(&self) -> bool {
        self.path.exists() || self.acks_path().exists()
    }

    /// Removes the group's files; a later read starts it afresh.
    pub fn remove(&self) -> Result<()> {
        for path in [self.acks_path(), self.path.clone()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io(format!("removing {}", path.display()), err)),
            }
        }
        super::segment::sync_dir(&self.dir)
            .map_err(|err| Error::io(format!("fsyncing {}", self.dir.display()), err))
    }

    /// The group's durable acknowledgements: the `.acks` file merged with `.offset` (the larger
    /// committed offset wins; acknowledgements below it are dropped).
    pub fn ack_state(&self) -> Result<AckState> {
        let offset = self.offset()?.unwrap_or(0);
        let path = self.acks_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AckState {
                    committed: offset,
                    ..AckState::default()
                });
            }
            Err(err) => return Err(Error::io(format!("reading {}", path.display()), err)),
        };
        let corrupt = || {
            Error::new(
                ErrorKind::Corrupt,
                format!("consumer group file {} is damaged", path.display()),
            )
        };
        let mut state = AckState::default();
        for line in text.lines() {
            match line.split_once(' ').unwrap_or((line, "")) {
                ("committed", value) => state.committed = value.parse().map_err(|_| corrupt())?,
                ("topic", value) => state.topic = Some(value.to_owned()),
                ("acked", values) => {
                    for value in values.split_whitespace() {
                        state.acked.insert(value.parse().map_err(|_| corrupt())?);
                    }
                }
                _ => return Err(corrupt()),
            }
        }
        state.committed = state.committed.max(offset);
        let committed = state.committed;
        state.acked.retain(|&acked| acked >= committed);
        Ok(state)
    }

    /// Durably records `state`: the `.acks` file first, then the committed offset in
    /// `.offset` (where `log read --group` finds it), each replaced atomically.
    pub fn save_ack_state(&self, state: &AckState) -> Result<()> {
        let mut text = format!("committed {}\n", state.committed);
        if let Some(topic) = &state.topic {
            text.push_str(&format!("topic {topic}\n"));
        }
        text.push_str("acked");
        for acked in state.acked.range(state.committed..) {
            text.push_str(&format!(" {acked}"));
        }
        text.push('\n');
        let path = self.acks_path();
        self.ensure_dir()
            .and_then(|()| permissions::replace_file(&self.dir, &path, text.as_bytes()))
            .map_err(|err| Error::io(format!("writing {}", path.display()), err))?;
        if self.offset()? != Some(state.committed) {
            self.commit_offset(state.committed)?;
        }
        Ok(())
    }

    /// Path of the `.acks` file.
    fn acks_path(&self) -> PathBuf {
        self.path.with_extension("acks")
    }

    /// Creates the groups directory with the log directory's mode.
    fn ensure_dir(&self) -> std::io::Result<()> {
        let log_dir = self.dir.parent().unwrap_or(Path::new("."));
        permissions::ensure_dir(&self.dir, permissions::file_mode(log_dir) | 0o100).map(|_| ())
    }

    /// The next offset the group should read, or `None` if it never committed one.
    pub fn offset(&self) -> Result<Option<u64>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Error::io(format!("reading {}", self.path.display()), err)),
        };
        text.trim().parse().map(Some).map_err(|_| {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "consumer group file {} does not hold an offset",
                    self.path.display()
                ),
            )
        })
    }

    /// Durably records `next` as the group's next offset: written to a temporary file,
    /// fsynced, renamed over the old one, and the directory fsynced, so a crash leaves either
    /// the old offset or the new one. An explicit commit also drops the group's out-of-order
    /// acknowledgements (`.acks`): the group reads from exactly `next` on.
    pub fn commit(&self, next: u64) -> Result<()> {
        self.commit_offset(next)?;
        match std::fs::remove_file(self.acks_path()) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::io(
                format!("committing {}", self.path.display()),
                err,
            )),
        }
    }

    /// Writes `.offset` alone, atomically and durably.
    fn commit_offset(&self, next: u64) -> Result<()> {
        let write_error = |err| Error::io(format!("committing {}", self.path.display()), err);
        // The groups directory gets the log directory's mode (0700 unless configured).
        self.ensure_dir().map_err(write_error)?;
        permissions::replace_file(&self.dir, &self.path, format!("{next}\n").as_bytes())
            .map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_offset_survives_reopening_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let group = ConsumerGroup::open(dir.path(), "billing-v2").unwrap();
        assert_eq!(group.offset().unwrap(), None);
        group.commit(42).unwrap();
        group.commit(43).unwrap();
        let again = ConsumerGroup::open(dir.path(), "billing-v2").unwrap();
        assert_eq!(again.offset().unwrap(), Some(43));
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(ConsumerGroup::open(dir.path(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn out_of_order_acks_survive_reopening_and_show_in_the_committed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let group = ConsumerGroup::open(dir.path(), "shipping").unwrap();
        let state = AckState {
            committed: 5,
            topic: Some("orders".into()),
            acked: [7, 9].into(),
        };
        group.save_ack_state(&state).unwrap();
        let again = ConsumerGroup::open(dir.path(), "shipping").unwrap();
        assert_eq!(again.ack_state().unwrap(), state);
        assert_eq!(
            again.offset().unwrap(),
            Some(5),
            "log read --group starts there"
        );
        assert_eq!(ConsumerGroup::list(dir.path()).unwrap(), vec!["shipping"]);
        again.commit(8).unwrap();
        assert_eq!(again.ack_state().unwrap().committed, 8);
        assert!(again.ack_state().unwrap().acked.is_empty());
        again.remove().unwrap();
        assert!(!again.exists());
    }
}
