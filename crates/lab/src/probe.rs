//! Reachability between pods, as the upstream network policy suite checks it: a TCP accept
//! server and a UDP echo server on ports 80 and 81 in every pod ([`serve`]), probes from
//! inside the source pod with a 1 s timeout, all of them in parallel, and the matrix of
//! every ordered pair.

use crate::state::{LabState, PodState};
use anyhow::bail;
use serde::Serialize;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

pub const TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            other => bail!("--proto {other:?}: tcp or udp (SCTP has no sockets on these kernels)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Serves TCP (accept, then close) and UDP (echo) on `ports`, on every address of the
/// namespace it runs in (IPv6 sockets take IPv4 too), until killed.
pub fn serve(ports: &[u16]) -> anyhow::Result<()> {
    let mut threads = Vec::new();
    for &port in ports {
        let tcp =
            TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)))?;
        let udp = UdpSocket::bind(("::", port)).or_else(|_| UdpSocket::bind(("0.0.0.0", port)))?;
        threads.push(std::thread::spawn(move || {
            for s in tcp.incoming().flatten() {
                drop(s);
            }
        }));
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        }));
    }
    eprintln!("serving tcp and udp on ports {ports:?}");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// One probe from the namespace the calling thread is in.
pub fn probe_here(dst: IpAddr, proto: Proto, port: u16) -> bool {
    let to = SocketAddr::new(dst, port);
    match proto {
        Proto::Tcp => TcpStream::connect_timeout(&to, TIMEOUT).is_ok_and(|mut s| {
            // The server closes at once: a read ends (0 bytes) when the handshake went through.
            let _ = s.set_read_timeout(Some(TIMEOUT));
            let mut b = [0u8; 1];
            s.read(&mut b).is_ok()
        }),
        Proto::Udp => {
            let bind = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
            let Ok(s) = UdpSocket::bind(bind) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(TIMEOUT));
            let mut b = [0u8; 16];
            s.send_to(b"flannel-lab", to).is_ok() && s.recv_from(&mut b).is_ok()
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Result {
    pub from: String,
    pub to: String,
    pub proto: Proto,
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    pub ok: bool,
}

fn addr(p: &PodState, v6: bool) -> Option<IpAddr> {
    let a = if v6 { &p.ip6 } else { &p.ip };
    a.parse().ok()
}

/// Every probe of `pods` × `pods` × `protos` × `ports` in each family both pods have, in
/// parallel (one thread per probe, in the source pod's namespace).
pub fn matrix(state: &LabState, ports: &[u16], protos: &[Proto]) -> Vec<Result> {
    let pods: Vec<PodState> = state.pods().cloned().collect();
    let mut sources = Vec::new();
    for src in &pods {
        let mut jobs = Vec::new();
        for dst in &pods {
            for v6 in [false, true] {
                let (Some(_), Some(d)) = (addr(src, v6), addr(dst, v6)) else {
                    continue;
                };
                for &proto in protos {
                    for &port in ports {
                        jobs.push((dst.key(), d, proto, port, v6));
                    }
                }
            }
        }
        let from = src.key();
        sources.push(flannel_testkit::netns::spawn_in_ns(&src.netns, move || {
            // Threads made here are in the source pod's namespace too.
            let handles: Vec<_> = jobs
                .into_iter()
                .map(|(to, d, proto, port, v6)| {
                    let from = from.clone();
                    std::thread::spawn(move || Result {
                        from,
                        to,
                        proto,
                        port,
                        family: if v6 { 6 } else { 4 },
                        ok: probe_here(d, proto, port),
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok())
                .collect::<Vec<Result>>()
        }));
    }
    sources
        .into_iter()
        .filter_map(|h| h.join().ok())
        .flatten()
        .collect()
}

/// The matrix as the upstream suite prints it: one grid per protocol, port and family,
/// `.` reachable, `X` not.
pub fn render(results: &[Result]) -> String {
    let mut keys: Vec<(Proto, u16, u8)> = results
        .iter()
        .map(|r| (r.proto, r.port, r.family))
        .collect();
    keys.sort();
    keys.dedup();
    let mut pods: Vec<&str> = results.iter().map(|r| r.from.as_str()).collect();
    pods.sort();
    pods.dedup();
    let w = pods.iter().map(|p| p.len()).max().unwrap_or(4).max(8);
    let mut s = String::new();
    for (proto, port, fam) in keys {
        s += &format!("{:w$}", format!("{}/{port} v{fam}", proto.name()));
        for p in &pods {
            s += &format!(" {p:>w$}");
        }
        s.push('\n');
        for from in &pods {
            s += &format!("{from:w$}");
            for to in &pods {
                let cell = results
                    .iter()
                    .find(|r| {
                        r.from == *from
                            && r.to == *to
                            && r.proto == proto
                            && r.port == port
                            && r.family == fam
                    })
                    .map_or("", |r| if r.ok { "." } else { "X" });
                s += &format!(" {cell:>w$}");
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

/// One probe `from` → `to` (pods named as `status` and `trace` take them).
pub fn one(
    state: &LabState,
    from: &str,
    to: &str,
    proto: Proto,
    port: u16,
    v6: bool,
) -> anyhow::Result<bool> {
    let (_, src) = state.find_pod(from)?;
    let (_, dst) = state.find_pod(to)?;
    let Some(d) = addr(dst, v6) else {
        bail!("{} has no IPv{} address", dst.key(), if v6 { 6 } else { 4 });
    };
    Ok(flannel_testkit::netns::in_ns(&src.netns, move || {
        probe_here(d, proto, port)
    }))
}
