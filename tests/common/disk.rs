//! A small tmpfs for disk-full tests, and a filler file that takes its free space away.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted by the test, unmounted on drop.
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (as `mount -o` takes them, e.g. `size=1m` or
    /// `size=1m,ro`) on `dir` (created if missing). Mounting needs root: without it the test
    /// is skipped with a note, except under `CI=true`, where it fails instead of hiding.
    pub fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("create mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            other if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: cannot mount a tmpfs (needs root): {other:?}");
                None
            }
            other => panic!("cannot mount a tmpfs under CI=true: {other:?}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a relay that still has files open there must not keep the mount busy.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes `path` until the file system is full, then gives `headroom` bytes back, so the
/// next `headroom` bytes anyone writes there fit and the ones after fail with ENOSPC. Returns
/// the file's length.
pub fn fill_leaving(path: &Path, headroom: u64) -> u64 {
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 4096];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => panic!("filling {}: {err}", path.display()),
        }
    }
    let len = written.saturating_sub(headroom);
    file.set_len(len).expect("give headroom back");
    file.sync_all().expect("sync filler");
    len
}
