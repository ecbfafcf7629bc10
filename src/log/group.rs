//! Named consumer groups: a durable "next offset to read" per group, in
//! `<log dir>/groups/<name>.offset`, so a reader can stop and resume where it left off.
//!
//! Groups belong to readers: the writer never reads them, and retention does not wait for
//! them (a group behind the oldest segment resumes at the first record still there).

use super::permissions;
use crate::error::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};

/// Sub-directory of the log directory holding the groups' files.
const GROUPS_DIR: &str = "groups";

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
    /// the old offset or the new one.
    pub fn commit(&self, next: u64) -> Result<()> {
        let write_error = |err| Error::io(format!("committing {}", self.path.display()), err);
        // The groups directory gets the log directory's mode (0700 unless configured).
        let log_dir = self.dir.parent().unwrap_or(Path::new("."));
        permissions::ensure_dir(&self.dir, permissions::file_mode(log_dir) | 0o100)
            .map_err(write_error)?;
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
}
