//! The accept loop of the health server and the state socket: every connection is accepted at
//! once and served by its own task, so a new request (kubelet's probe, flannelctl) is never
//! queued behind idle or slow clients.
//!
//! What bounds the cost: at most `max` connections live at once, and at most `per_peer` from
//! one peer (an address over TCP, a process on the Unix socket); a connection past either
//! limit closes the oldest one (of that peer, or of all), which is the one most likely idle: a
//! probe sends its request the moment it connects.
//! Each connection must send its request head within [`HEAD_DEADLINE`] and is closed after
//! [`CONNECTION_DEADLINE`] whatever it does. When the process is out of file descriptors, the
//! oldest connection is closed to make room instead of leaving the new one in the backlog.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::AbortHandle;
use tracing::{info, warn};

/// How long a client may take to send its request head (a probe sends it at once).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(1);
/// How long a connection may take from accept to the end of the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(3);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Connections one address may hold at once (kubelet probes one at a time; Prometheus
/// scrapes one at a time).
pub const PER_PEER: usize = 32;
/// The most connections served at once: a quarter of the file descriptors flanneld may open,
/// between 4 and 512.
pub fn max_connections() -> usize {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct we pass and nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0 {
        l.rlim_cur
    } else {
        1024
    };
    (soft / 4).clamp(4, 512) as usize
}

/// Who is at the other end of a connection, as far as limits go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Addr(IpAddr),
    Process(i32),
    Unknown,
}

/// The listen backlog: a burst of connections (a flood being closed and re-opened at once)
/// waits here rather than having its SYNs dropped, which would cost a probe the kernel's 1 s
/// SYN retry, its whole timeout. The kernel caps it at `net.core.somaxconn` (4096).
const BACKLOG: i32 = 4096;

/// A TCP listener on `addr` with a deep backlog.
pub fn bind_tcp(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    TcpListener::from_std(s.into())
}

/// A Unix socket listener at `path` with a deep backlog.
pub fn bind_unix(path: &std::path::Path) -> io::Result<UnixListener> {
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.bind(&socket2::SockAddr::unix(path)?)?;
    s.listen(BACKLOG)?;
    UnixListener::from_std(s.into())
}

/// A listening socket: TCP (peers are addresses) or Unix (peers are processes).
pub trait Listener: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Peer)>> + Send;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn accept(&self) -> io::Result<(TcpStream, Peer)> {
        let (s, a) = TcpListener::accept(self).await?;
        // An IPv4 client of a dual-stack socket is the same address either way.
        let ip = match a.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        Ok((s, Peer::Addr(ip)))
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn accept(&self) -> io::Result<(UnixStream, Peer)> {
        let (s, _) = UnixListener::accept(self).await?;
        let peer = match s.peer_cred().ok().and_then(|c| c.pid()) {
            Some(pid) => Peer::Process(pid),
            None => Peer::Unknown,
        };
        Ok((s, peer))
    }
}

/// The connections alive now, oldest first.
#[derive(Default)]
struct Table {
    next: u64,
    live: BTreeMap<u64, (Peer, AbortHandle)>,
    by_peer: HashMap<Peer, VecDeque<u64>>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<AbortHandle> {
        let (peer, h) = self.live.remove(&id)?;
        if let Some(q) = self.by_peer.get_mut(&peer) {
            q.retain(|x| *x != id);
            if q.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        Some(h)
    }

    /// Closes the oldest connection (of `peer`, when given); false when there is none.
    fn evict_oldest(&mut self, peer: Option<Peer>) -> bool {
        let id = match peer {
            Some(p) => self.by_peer.get(&p).and_then(|q| q.front().copied()),
            None => self.live.keys().next().copied(),
        };
        match id.and_then(|id| self.remove(id)) {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }
}

/// Takes a connection out of the table when its task ends (answered, timed out or evicted).
struct Registration {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.table).remove(self.id);
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

fn out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Serves `listener` until the task is dropped: each connection goes to `handle` in its own
/// task, within [`CONNECTION_DEADLINE`]. `what` names the server in logs.
pub async fn serve<L, H, F>(listener: L, what: &'static str, max: usize, per_peer: usize, handle: H)
where
    L: Listener,
    H: Fn(L::Stream) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let table = Arc::new(Mutex::new(Table::default()));
    let mut backoff = flannel_core::backoff::Backoff::new(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
    let mut failing: Option<io::ErrorKind> = None;
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                if failing.take().is_some() {
                    info!("the {what} accepts connections again");
                }
                backoff.reset();
                let mut t = lock(&table);
                if peer != Peer::Unknown
                    && t.by_peer.get(&peer).is_some_and(|q| q.len() >= per_peer)
                {
                    t.evict_oldest(Some(peer));
                }
                if t.live.len() >= max {
                    t.evict_oldest(None);
                }
                t.next += 1;
                let id = t.next;
                let reg = Registration {
                    table: table.clone(),
                    id,
                };
                let work = handle(s);
                // Registered under the lock: the task cannot take itself out before it is in.
                let task = tokio::spawn(async move {
                    let _reg = reg;
                    let _ = tokio::time::timeout(CONNECTION_DEADLINE, work).await;
                });
                t.live.insert(id, (peer, task.abort_handle()));
                t.by_peer.entry(peer).or_default().push_back(id);
            }
            Err(e) if out_of_files(&e) && lock(&table).evict_oldest(None) => {
                // A descriptor is free again once the evicted task is dropped: retry at once.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                if failing != Some(e.kind()) {
                    warn!(error = %e, "the {what} cannot accept connections; backing off");
                    failing = Some(e.kind());
                }
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Reads a request head, at most 4 KiB, within [`HEAD_DEADLINE`]. `None` when the client
/// sent nothing by then (idle, or too slow to be worth an answer); what it sent otherwise.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    let read = async {
        while n < buf.len() {
            match s.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => return,
                Ok(k) => n += k,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].ends_with(b"\n\n") {
                return;
            }
        }
    };
    let complete = tokio::time::timeout(HEAD_DEADLINE, read).await.is_ok();
    (complete && n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}
