//! Network namespaces a test makes: named uniquely, loopback up, their processes killed and
//! themselves deleted on drop (also when the test fails). The host's namespace is never
//! touched; code that must run inside one runs on a thread of its own.

use std::os::fd::AsRawFd;
use std::process::Command;

pub struct Netns(pub String);

impl Netns {
    /// Panics when `ip netns add` fails: the test needs root and `ip`.
    pub fn new(tag: &str) -> Self {
        let name = crate::unique(&format!("ft{tag}"));
        run_ip(&["netns", "add", &name]);
        run_ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in pids_in(&self.0) {
            // SAFETY: kill(2) on a PID inside the test's own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The processes in namespace `ns` (`ip netns pids`).
pub fn pids_in(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `f` on a thread inside namespace `ns` (by name, as `ip netns` keeps it) and returns
/// what it returns. Panics when the namespace cannot be entered, or when `f` panics.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    match spawn_in_ns(ns, f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Starts `f` on a thread of its own inside namespace `ns` (a server, a flood) and returns
/// its handle. The namespace is opened here: a missing one panics in the caller.
pub fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    std::thread::spawn(move || {
        enter_fd(&file, &path);
        f()
    })
}

/// Moves the calling thread into namespace `ns` (for a thread made elsewhere). Panics when it
/// cannot.
pub fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    enter_fd(&file, &path);
}

fn enter_fd(file: &std::fs::File, path: &str) {
    // SAFETY: setns(2) on an fd we hold open moves only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {path}: {}",
        std::io::Error::last_os_error()
    );
}

/// `ip <args>`, panicking with its stderr on failure; its stdout.
pub fn run_ip(args: &[&str]) -> String {
    let o = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
