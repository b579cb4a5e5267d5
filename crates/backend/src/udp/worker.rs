//! A data-path worker: one TUN queue and one UDP socket, polled together on a thread of its own.
//! Buffers are allocated once; the peer table arrives over a channel (no locks on the path).

use super::table::{Inbound, PeerTable};
use crate::datapath::gro::Gro;
use crate::datapath::gso::{segment, SegError};
use crate::datapath::packet::{decrement_ttl, icmp_net_unreachable, parse_ipv4};
use crate::datapath::sock::{Received, RecvBatch, Sock};
use crate::datapath::vnet::{self, VnetHdr};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

/// How many TUN reads or datagram batches a worker handles before polling again.
const BATCH: usize = 64;
const RECV_BATCH: usize = 32;

/// Data-path counters, shared by all workers, read by the control side.
#[derive(Debug, Default)]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    /// Inner (pod) bytes sent to and received from peers.
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Datagrams whose sender is not a known peer (upstream accepts them; we drop them).
    pub rx_unknown_source: AtomicU64,
    /// Inner packets from a peer for an address outside our subnet (not relayed).
    pub rx_not_for_us: AtomicU64,
    /// Inner packets from a peer with a source in another node's subnet.
    pub rx_spoofed_source: AtomicU64,
    pub rx_malformed: AtomicU64,
    pub no_route: AtomicU64,
    pub ttl_expired: AtomicU64,
    pub errors: AtomicU64,
}

fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub enum Ctl {
    /// New peers (and our subnet, whose address on the TUN is the source of our ICMP errors).
    Table(Arc<PeerTable>),
    Stop,
}

pub struct Worker {
    pub tun: OwnedFd,
    pub sock: Sock,
    pub ctl: Receiver<Ctl>,
    pub counters: Arc<Counters>,
}

/// Per-worker buffers, allocated once.
struct Buffers {
    read: Vec<u8>,
    hdrs: Vec<u8>,
    icmp: Vec<u8>,
    iov: Vec<libc::iovec>,
}

impl Worker {
    pub fn run(mut self) {
        let mut table = Arc::new(PeerTable::default());
        let mut local = Ipv4Addr::UNSPECIFIED;
        let mut b = Buffers {
            read: vec![0u8; vnet::LEN + 65535],
            hdrs: Vec::with_capacity(64 * 80),
            icmp: Vec::with_capacity(128),
            iov: Vec::with_capacity(2 * 64),
        };
        let mut batch = RecvBatch::new(RECV_BATCH);
        let mut got: Vec<Received> = Vec::with_capacity(RECV_BATCH);
        let c = self.counters.clone();
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.tun.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.sock.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: poll(2) on two pollfds we own.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 200) };
            while let Ok(m) = self.ctl.try_recv() {
                match m {
                    Ctl::Table(t) => {
                        local = t.own().network();
                        table = t;
                    }
                    Ctl::Stop => return,
                }
            }
            if fds[0].revents & libc::POLLIN != 0 {
                for _ in 0..BATCH {
                    // SAFETY: read(2) into our buffer.
                    let n = unsafe {
                        libc::read(
                            self.tun.as_raw_fd(),
                            b.read.as_mut_ptr() as *mut libc::c_void,
                            b.read.len(),
                        )
                    };
                    if n <= vnet::LEN as isize {
                        break;
                    }
                    self.outbound(n as usize, &table, local, &mut b, &c);
                }
            }
            if fds[1].revents & libc::POLLIN != 0 {
                for _ in 0..BATCH {
                    match batch.recv(&self.sock.fd, &mut got) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => {
                            inc(&c.errors, 1);
                            break;
                        }
                    }
                    let tun = &self.tun;
                    let mut write = |parts: &[&[u8]]| {
                        if !crate::datapath::tun::write(tun, parts) {
                            inc(&c.errors, 1);
                        }
                    };
                    let mut gro = Gro::default();
                    for (buf, r) in batch.bufs.iter_mut().zip(got.iter()) {
                        inbound(&mut buf[..r.len], r, &table, &c, &mut gro, &mut write);
                    }
                    gro.flush(&mut write);
                }
            }
        }
    }

    /// TUN → peers: segment, look up the peer, one scatter-gather GSO send.
    fn outbound(
        &mut self,
        n: usize,
        table: &PeerTable,
        local: Ipv4Addr,
        b: &mut Buffers,
        c: &Counters,
    ) {
        let Some(h) = VnetHdr::parse(&b.read) else {
            return;
        };
        let pkt = &mut b.read[vnet::LEN..n];
        let Some(ip) = parse_ipv4(pkt) else {
            inc(&c.rx_malformed, 1);
            return;
        };
        let Some(peer) = table.lookup(ip.dst) else {
            inc(&c.no_route, 1);
            if icmp_net_unreachable(pkt, local, &mut b.icmp) {
                crate::datapath::tun::write(&self.tun, &[&VnetHdr::default().bytes(), &b.icmp]);
            }
            return;
        };
        match segment(flannel_core::Family::V4, &h, pkt, &mut b.hdrs) {
            Ok(s) => match self
                .sock
                .send_segments(peer.into(), &s, &b.hdrs, pkt, &mut b.iov)
            {
                Ok(()) => {
                    inc(&c.tx_packets, s.count as u64);
                    inc(&c.tx_bytes, pkt.len() as u64);
                }
                Err(_) => inc(&c.errors, 1),
            },
            Err(SegError::TtlExpired) => inc(&c.ttl_expired, 1),
            Err(_) => inc(&c.rx_malformed, 1),
        }
    }
}

/// Peers → TUN: check the sender (once per datagram), split GRO batches into packets, check
/// each packet's addresses against what that sender may send, validate, decrement TTL,
/// coalesce for the TUN write. The coalescer keeps slices of `data` until the batch is flushed.
fn inbound<'a>(
    data: &'a mut [u8],
    r: &Received,
    table: &PeerTable,
    c: &Counters,
    gro: &mut Gro<'a>,
    write: &mut impl FnMut(&[&[u8]]),
) {
    let std::net::SocketAddr::V4(from) = r.from else {
        inc(&c.rx_unknown_source, 1);
        return;
    };
    let Some(subnets) = table.peer_subnets(*from.ip()) else {
        inc(&c.rx_unknown_source, 1);
        return;
    };
    let seg = if r.seg > 0 { r.seg } else { data.len().max(1) };
    for pkt in data.chunks_mut(seg) {
        let Some(ip) = parse_ipv4(pkt) else {
            inc(&c.rx_malformed, 1);
            continue;
        };
        match table.inbound(subnets, ip.src, ip.dst) {
            Inbound::Accept => {}
            Inbound::NotForUs => {
                inc(&c.rx_not_for_us, 1);
                continue;
            }
            Inbound::SpoofedSource => {
                inc(&c.rx_spoofed_source, 1);
                continue;
            }
        }
        let pkt = &mut pkt[..ip.total_len];
        if !decrement_ttl(pkt) {
            inc(&c.ttl_expired, 1);
            continue;
        }
        inc(&c.rx_packets, 1);
        inc(&c.rx_bytes, pkt.len() as u64);
        gro.push(pkt, write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::packet::tests::tcp_packet;

    #[test]
    fn inbound_drops_strangers_truncated_and_oversized_input() {
        // The test packets go 10.244.1.2 -> 10.244.2.3: from the peer's subnet into ours.
        let table = PeerTable::new(
            [(
                "10.244.1.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 0, 0, 52),
            )],
            8285,
            "10.244.2.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        );
        let c = Counters::default();
        let good = tcp_packet(1, 0x10, b"hello");
        let from_peer = Received {
            len: good.len(),
            from: (Ipv4Addr::new(10, 0, 0, 52), 8285).into(),
            seg: 0,
        };
        let stranger = Received {
            from: (Ipv4Addr::new(10, 0, 0, 66), 8285).into(),
            ..from_peer
        };
        let mut written = Vec::new();
        let mut w =
            |parts: &[&[u8]]| written.push(parts[1..].iter().map(|p| p.len()).sum::<usize>());
        let (mut a, mut t, mut padded) = (good.clone(), good[..30].to_vec(), good.clone());
        padded.extend_from_slice(&[0xee; 100]);
        let padded_r = Received {
            len: padded.len(),
            ..from_peer
        };
        let mut gro = Gro::default();
        inbound(&mut a, &stranger, &table, &c, &mut gro, &mut w);
        assert_eq!(c.rx_unknown_source.load(Ordering::Relaxed), 1);
        inbound(
            &mut t,
            &Received {
                len: 30,
                ..from_peer
            },
            &table,
            &c,
            &mut gro,
            &mut w,
        );
        assert_eq!(c.rx_malformed.load(Ordering::Relaxed), 1);
        // Trailing bytes beyond the IPv4 total length are cut off, not delivered.
        inbound(&mut padded, &padded_r, &table, &c, &mut gro, &mut w);
        gro.flush(&mut w);
        assert_eq!(written, vec![good.len()]);
        assert_eq!(c.rx_packets.load(Ordering::Relaxed), 1);
    }
}
