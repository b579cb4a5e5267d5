//! A hostile client for flanneld's servers: it holds many connections open, idle or sending a
//! request one byte at a time, and opens a new one whenever the server closes one, until
//! dropped. TCP connections are made inside a test's namespace, from one or many loopback
//! source addresses; Unix ones to a socket path.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the flood goes.
#[derive(Clone)]
pub enum Target {
    /// 127.0.0.1:port in namespace `ns`, from `sources` loopback addresses (127.0.1.x).
    Tcp {
        ns: String,
        port: u16,
        sources: u8,
    },
    Unix(PathBuf),
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn open(t: &Target, i: usize) -> Option<Conn> {
        match t {
            Target::Tcp { port, sources, .. } => {
                let src = Ipv4Addr::new(127, 0, 1, 1 + (i % usize::from(*sources)) as u8);
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .ok()?;
                sock.bind(&SocketAddr::from((src, 0)).into()).ok()?;
                sock.connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], *port)).into(),
                    Duration::from_millis(200),
                )
                .ok()?;
                let s: TcpStream = sock.into();
                s.set_nonblocking(true).ok()?;
                Some(Conn::Tcp(s))
            }
            Target::Unix(p) => {
                let s = UnixStream::connect(p).ok()?;
                s.set_nonblocking(true).ok()?;
                Some(Conn::Unix(s))
            }
        }
    }

    /// False once the server closed it.
    fn alive(&mut self) -> bool {
        let mut b = [0u8; 64];
        let r = match self {
            Conn::Tcp(s) => s.read(&mut b),
            Conn::Unix(s) => s.read(&mut b),
        };
        match r {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        }
    }

    fn send_byte(&mut self, b: u8) -> bool {
        let r = match self {
            Conn::Tcp(s) => s.write(&[b]),
            Conn::Unix(s) => s.write(&[b]),
        };
        r.is_ok() || matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
    }
}

/// The flood, running until dropped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    /// Connections the server closed and the flood opened again.
    pub reopened: Arc<AtomicUsize>,
    /// Connections open right now.
    pub open: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const SLOW_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

impl Flood {
    /// Holds `idle` silent connections and `slow` ones sending a byte every 100 ms; each sweep
    /// (every 50 ms) opens again what the server closed. Returns once every connection was
    /// opened at least once.
    pub fn start(target: Target, idle: usize, slow: usize) -> Flood {
        raise_nofile();
        let stop = Arc::new(AtomicBool::new(false));
        let reopened = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, reopened, open) = (stop.clone(), reopened.clone(), open.clone());
            std::thread::spawn(move || {
                if let Target::Tcp { ns, sources, .. } = &target {
                    enter_netns(ns);
                    // Sources 127.0.1.x are on lo already (all of 127/8 is local).
                    assert!(*sources >= 1);
                }
                let total = idle + slow;
                let mut conns: Vec<Option<Conn>> =
                    (0..total).map(|i| Conn::open(&target, i)).collect();
                let mut pos = vec![0usize; total];
                let _ = ready_tx.send(());
                let mut last_byte = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let send = last_byte.elapsed() >= Duration::from_millis(100);
                    if send {
                        last_byte = Instant::now();
                    }
                    let mut live = 0;
                    for i in 0..total {
                        let ok = match conns[i].as_mut() {
                            Some(c) if i >= idle && send => {
                                let b = SLOW_REQUEST[pos[i] % (SLOW_REQUEST.len() - 4)];
                                pos[i] += 1;
                                c.send_byte(b) && c.alive()
                            }
                            Some(c) => c.alive(),
                            None => false,
                        };
                        if ok {
                            live += 1;
                        } else {
                            conns[i] = Conn::open(&target, i);
                            pos[i] = 0;
                            reopened.fetch_add(1, Ordering::Relaxed);
                            if conns[i].is_some() {
                                live += 1;
                            }
                        }
                    }
                    open.store(live, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let _ = ready_rx.recv_timeout(Duration::from_secs(60));
        Flood {
            stop,
            reopened,
            open,
            thread: Some(thread),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enter_netns(ns: &str) {
    flannel_testkit::netns::enter(ns);
}

/// Times `GET path` on the target `n` times, 20 ms apart, from a fresh connection each time
/// (as kubelet probes): each answer's status and how long it took (`None`: no answer in 2 s).
pub fn probe(target: &Target, path: &str, n: usize) -> Vec<Option<(u16, Duration)>> {
    let target = target.clone();
    let path = path.to_string();
    std::thread::spawn(move || {
        if let Target::Tcp { ns, .. } = &target {
            enter_netns(ns);
        }
        (0..n)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                let t0 = Instant::now();
                get_once(&target, &path).map(|code| (code, t0.elapsed()))
            })
            .collect()
    })
    .join()
    .expect("probe thread")
}

fn get_once(target: &Target, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut resp = String::new();
    match target {
        Target::Tcp { port, .. } => {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], *port)),
                Duration::from_secs(2),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(req.as_bytes()).ok()?;
            s.read_to_string(&mut resp).ok()?;
        }
        Target::Unix(p) => {
            let mut s = UnixStream::connect(p).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(req.as_bytes()).ok()?;
            s.read_to_string(&mut resp).ok()?;
        }
    }
    resp.split_whitespace().nth(1)?.parse().ok()
}

/// The slowest of the answered probes, and how many got no answer.
pub fn worst(results: &[Option<(u16, Duration)>]) -> (Duration, usize) {
    let slowest = results
        .iter()
        .flatten()
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    (slowest, results.iter().filter(|r| r.is_none()).count())
}

/// All integration tests share one process: floods running side by side need the hard limit
/// of open files, not the soft one.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit(2) on a struct we own.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
