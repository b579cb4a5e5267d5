//! One flanneld per node. Two would fight over the same kernel state, subnet.env and state
//! socket (the second used to take the socket over silently, and the first to unlink it on
//! exit). The first holds an exclusive lock on `flanneld.lock` beside subnet.env
//! (`/run/flannel/flanneld.lock` by default) for as long as it runs, with its PID inside; a
//! second one waits a few seconds (the first may be exiting: a restart) and then refuses to
//! start, naming the holder.

use anyhow::{bail, Context};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::info;

/// How long a second flanneld waits for the first to exit before it gives up.
pub const WAIT: Duration = Duration::from_secs(5);

/// The lock, held until dropped (or the process ends: the kernel releases it then).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    pub path: PathBuf,
}

/// The lock file for a flanneld writing `subnet_file`.
pub fn path_for(subnet_file: &Path) -> PathBuf {
    subnet_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("flanneld.lock")
}

fn try_lock(f: &File) -> std::io::Result<bool> {
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Takes the lock for `subnet_file`, waiting up to `wait` for a holder to exit.
pub fn take(subnet_file: &Path, wait: Duration) -> anyhow::Result<InstanceLock> {
    let path = path_for(subnet_file);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the instance lock {}", path.display()))?;
    let started = Instant::now();
    let mut said = false;
    while !try_lock(&f).with_context(|| format!("locking {}", path.display()))? {
        let mut holder = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut holder);
        let holder = holder.trim();
        let holder = if holder.is_empty() { "?" } else { holder };
        if started.elapsed() >= wait {
            bail!(
                "another flanneld (pid {holder}) already runs on this node: it holds {}; stop it first (two would fight over the same routes, subnet.env and state socket)",
                path.display()
            );
        }
        if !said {
            info!(pid = holder, lock = %path.display(), "another flanneld holds the instance lock; waiting for it to exit");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| writeln!(f, "{}", std::process::id()))
        .and_then(|_| f.flush())
        .with_context(|| format!("writing our PID to {}", path.display()))?;
    Ok(InstanceLock { _file: f, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second holder is refused with the first one's PID; once the first is gone the lock
    /// is free again. (flock locks belong to open file descriptions, so two opens in one
    /// process contend like two processes.)
    #[test]
    fn a_second_instance_is_refused_naming_the_first() {
        let dir = std::env::temp_dir().join(format!("flanneld-lock-{}", std::process::id()));
        let env = dir.join("subnet.env");
        let first = take(&env, WAIT).expect("first");
        assert_eq!(first.path, dir.join("flanneld.lock"));
        let e = take(&env, Duration::from_millis(200)).expect_err("second");
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&format!("another flanneld (pid {})", std::process::id())),
            "{msg}"
        );
        drop(first);
        take(&env, Duration::ZERO).expect("free again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
