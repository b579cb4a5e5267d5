//! HTTP/1.1 GET over flanneld's state socket (`--state-socket`): the daemon's snapshot and
//! its metrics, read the way `curl --unix-socket` would.

use anyhow::{bail, Context};
use flannel_core::state::StateSnapshot;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long flanneld may take to answer: it answers between two events of its loop.
const TIMEOUT: Duration = Duration::from_secs(5);

/// flanneld runs (its process answered the connection) but could not answer now: a long
/// pass, many clients at once. Not a reason to restart it.
#[derive(Debug)]
pub struct Busy(pub String);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}

/// Whether `pid` is a live process.
fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// The PID of the process at the other end of `s` (0 when unknown).
fn peer_pid(s: &UnixStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `cred`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        cred.pid
    } else {
        0
    }
}

/// `GET path` on the socket: the status code and the body.
pub fn get(socket: &Path, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to flanneld's state socket {}", socket.display()))?;
    // Who listens (SO_PEERCRED): a silence is told apart from a dead process.
    let pid = peer_pid(&s);
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: flanneld\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    if let Err(e) = s.read_to_end(&mut resp) {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            // Even a long pass answers "busy" within 2 s: silence means a process that
            // cannot run (stopped) or is stuck.
            bail!(
                "no answer to {path} within {} s (is flanneld stopped or hung?)",
                TIMEOUT.as_secs()
            );
        }
        return Err(e).with_context(|| format!("reading {path} from {}", socket.display()));
    }
    if resp.is_empty() {
        if alive(pid) {
            return Err(Busy(format!(
                "flanneld (pid {pid}) closed the connection without answering {path} (busy: many clients at once?)"
            ))
            .into());
        }
        bail!(
            "{}: flanneld closed the connection without answering {path} (stopping or restarting?)",
            socket.display()
        );
    }
    let resp = String::from_utf8_lossy(&resp);
    let Some((head, body)) = resp.split_once("\r\n\r\n") else {
        bail!("{}: not an HTTP answer to {path}", socket.display());
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{}: no status in the answer to {path}", socket.display()))?;
    Ok((code, body.to_string()))
}

/// The daemon's state snapshot.
pub fn state(socket: &Path) -> anyhow::Result<StateSnapshot> {
    let (code, body) = get(socket, "/state")?;
    if code == 503 && body.contains("busy") {
        return Err(Busy(format!("flanneld answered {code}: {}", body.trim())).into());
    }
    if code != 200 {
        bail!("flanneld answered {code}: {}", body.trim());
    }
    serde_json::from_str(&body)
        .with_context(|| format!("reading the state from {}", socket.display()))
}

/// A state snapshot saved earlier (`flannelctl state > FILE`).
pub fn state_from_file(file: &Path) -> anyhow::Result<StateSnapshot> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a flanneld state", file.display()))
}
