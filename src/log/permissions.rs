//! Who may read the log: its files hold event payloads, so the directory is created `0700` and
//! its files `0600` by default, and replaced files are written without following symlinks.
//!
//! One setting decides both: files get the directory's permission bits without the execute
//! bits (`0700` → `0600`, `0750` → `0640`), so files written by readers (consumer group offsets,
//! rebuilt indexes), which know no configuration, match what the writer creates.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The directory mode when none is configured: the owner only.
pub const DEFAULT_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) with `mode`; an existing directory that grants more than
/// `mode` is narrowed to it, so a log directory made by an older version or by hand stops being
/// world-readable. Returns whether anything was created.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<bool> {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let current = meta.permissions().mode() & 0o777;
            if current & !mode != 0 {
                std::fs::set_permissions(dir, Permissions::from_mode(mode))?;
                tracing::warn!(
                    dir = %dir.display(),
                    from = format!("{current:04o}"),
                    to = format!("{mode:04o}"),
                    "narrowed the log directory's permissions"
                );
            }
            Ok(false)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(mode).create(dir)?;
            // The umask may have taken bits away; never more than asked, but exactly `mode`.
            std::fs::set_permissions(dir, Permissions::from_mode(mode))?;
            Ok(true)
        }
        Err(err) => Err(err),
    }
}

/// The mode for new files in `dir`: its permission bits without execute bits (`0600` if the
/// directory cannot be read).
pub fn file_mode(dir: &Path) -> u32 {
    std::fs::metadata(dir).map_or(DEFAULT_DIR_MODE, |meta| meta.permissions().mode()) & 0o666
}

/// Options that create a file in `dir` with [`file_mode`].
pub fn create_options(dir: &Path) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(file_mode(dir));
    options
}

/// Distinguishes temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` (in `dir`) with `bytes` atomically and durably: written to a fresh temporary
/// file created exclusively (`O_CREAT|O_EXCL`, which never follows a symlink planted under its
/// name), fsynced, then renamed over `path` (rename replaces a symlink itself, never its
/// target), and the directory fsynced.
pub fn replace_file(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_os_string());
    let mut tmp_name = name;
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file: File = create_options(dir)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_private_and_a_wide_one_is_narrowed() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/log");
        assert!(ensure_dir(&dir, DEFAULT_DIR_MODE).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(file_mode(&dir), 0o600);
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        assert!(!ensure_dir(&dir, DEFAULT_DIR_MODE).unwrap());
        assert_eq!(mode(&dir), 0o700);
        assert!(!ensure_dir(&dir, 0o750).unwrap());
        assert_eq!(mode(&dir), 0o700, "a narrower directory is left alone");
    }

    #[test]
    fn the_writer_creates_a_private_directory_and_private_files() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("log");
        let writer = crate::log::LogWriter::open(&dir, Default::default()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(files.len() >= 3, "{files:?}");
        for file in files {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        drop(writer);
    }

    #[test]
    fn replacing_a_file_never_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "precious").unwrap();
        let path = dir.path().join("g.offset");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        replace_file(dir.path(), &path, b"7\n").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "7\n");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }
}
