//! A data-path worker: one TUN queue and one UDP socket, polled together on a thread of its own.
//! Buffers are allocated once; the peer table arrives over a channel (no locks on the path).

use super::gro::Gro;
use super::gso::{segment, SegError};
use super::packet::{decrement_ttl, icmp_net_unreachable, parse_ipv4};
use super::sock::{Received, RecvBatch, Sock};
use super::table::PeerTable;
use super::vnet::{self, VnetHdr};
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
    /// Datagrams whose sender is not a known peer (upstream accepts them; we drop them).
    pub rx_unknown_source: AtomicU64,
    pub rx_malformed: AtomicU64,
    pub no_route: AtomicU64,
    pub ttl_expired: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    fn inc(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

pub enum Ctl {
    /// New peers, and the TUN address (the source of ICMP errors we generate).
    Table(Arc<PeerTable>, Ipv4Addr),
    Stop,
}

pub struct Worker {
    pub tun: OwnedFd,
    pub sock: Sock,
    pub ctl: Receiver<Ctl>,
    pub counters: Arc<Counters>,
}

fn tun_write(fd: &OwnedFd, hdr: &[u8], pkt: &[u8]) -> bool {
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: pkt.as_ptr() as *mut libc::c_void,
            iov_len: pkt.len(),
        },
    ];
    // SAFETY: writev(2) with two iovecs pointing at live slices.
    unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) >= 0 }
}

impl Worker {
    pub fn run(mut self) {
        let mut table = Arc::new(PeerTable::default());
        let mut local = Ipv4Addr::UNSPECIFIED;
        let mut rbuf = vec![0u8; vnet::LEN + 65535];
        let mut segs: Vec<u8> = Vec::with_capacity(65535 + 64 * 60);
        let mut icmp: Vec<u8> = Vec::with_capacity(128);
        let mut batch = RecvBatch::new(RECV_BATCH);
        let mut got: Vec<Received> = Vec::with_capacity(RECV_BATCH);
        let mut gro = Gro::default();
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
                    Ctl::Table(t, l) => {
                        table = t;
                        local = l;
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
                            rbuf.as_mut_ptr() as *mut libc::c_void,
                            rbuf.len(),
                        )
                    };
                    if n <= vnet::LEN as isize {
                        break;
                    }
                    self.outbound(&rbuf[..n as usize], &table, local, &mut segs, &mut icmp, &c);
                }
            }
            if fds[1].revents & libc::POLLIN != 0 {
                for _ in 0..BATCH {
                    match batch.recv(&self.sock.fd, &mut got) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => {
                            Counters::inc(&c.errors, 1);
                            break;
                        }
                    }
                    let tun = &self.tun;
                    let mut write = |h: &[u8], p: &[u8]| {
                        if !tun_write(tun, h, p) {
                            Counters::inc(&c.errors, 1);
                        }
                    };
                    for (i, r) in got.iter().enumerate() {
                        let data = &mut batch.bufs[i][..r.len];
                        inbound(data, r, &table, &c, &mut gro, &mut write);
                    }
                    gro.flush(&mut write);
                }
            }
        }
    }

    /// TUN → peers: segment, look up the peer, send with one GSO send.
    fn outbound(
        &mut self,
        frame: &[u8],
        table: &PeerTable,
        local: Ipv4Addr,
        segs: &mut Vec<u8>,
        icmp: &mut Vec<u8>,
        c: &Counters,
    ) {
        let Some(h) = VnetHdr::parse(frame) else {
            return;
        };
        let pkt = &frame[vnet::LEN..];
        let Some(ip) = parse_ipv4(pkt) else {
            Counters::inc(&c.rx_malformed, 1);
            return;
        };
        let Some(peer) = table.lookup(ip.dst) else {
            Counters::inc(&c.no_route, 1);
            if icmp_net_unreachable(pkt, local, icmp) {
                tun_write(&self.tun, &VnetHdr::default().bytes(), icmp);
            }
            return;
        };
        match segment(&h, pkt, segs) {
            Ok((n, seg_len)) => {
                let seg = if n > 1 { seg_len } else { 0 };
                match self.sock.send(peer, segs, seg) {
                    Ok(()) => Counters::inc(&c.tx_packets, n as u64),
                    Err(_) => Counters::inc(&c.errors, 1),
                }
            }
            Err(SegError::TtlExpired) => Counters::inc(&c.ttl_expired, 1),
            Err(_) => Counters::inc(&c.rx_malformed, 1),
        }
    }
}

/// Peers → TUN: check the sender, split GRO batches into packets, validate, decrement TTL,
/// coalesce for the TUN write.
fn inbound(
    data: &mut [u8],
    r: &Received,
    table: &PeerTable,
    c: &Counters,
    gro: &mut Gro,
    write: &mut impl FnMut(&[u8], &[u8]),
) {
    if !table.is_peer(r.from) {
        Counters::inc(&c.rx_unknown_source, 1);
        return;
    }
    let seg = if r.seg > 0 { r.seg } else { data.len().max(1) };
    for pkt in data.chunks_mut(seg) {
        let Some(ip) = parse_ipv4(pkt) else {
            Counters::inc(&c.rx_malformed, 1);
            continue;
        };
        let pkt = &mut pkt[..ip.total_len];
        if !decrement_ttl(pkt) {
            Counters::inc(&c.ttl_expired, 1);
            continue;
        }
        Counters::inc(&c.rx_packets, 1);
        gro.push(pkt, write);
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::tcp_packet;
    use super::*;

    #[test]
    fn inbound_drops_strangers_truncated_and_oversized_input() {
        let table = PeerTable::new(
            [(
                "10.244.2.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 0, 0, 52),
            )],
            8285,
        );
        let c = Counters::default();
        let mut gro = Gro::default();
        let mut written = Vec::new();
        let mut w = |_: &[u8], p: &[u8]| written.push(p.len());
        let good = tcp_packet(1, 0x10, b"hello");
        let from_peer = Received {
            len: good.len(),
            from: Ipv4Addr::new(10, 0, 0, 52),
            seg: 0,
        };
        let stranger = Received {
            from: Ipv4Addr::new(10, 0, 0, 66),
            ..from_peer
        };
        inbound(&mut good.clone(), &stranger, &table, &c, &mut gro, &mut w);
        assert_eq!(c.rx_unknown_source.load(Ordering::Relaxed), 1);
        let mut truncated = good[..30].to_vec();
        inbound(
            &mut truncated,
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
        let mut padded = good.clone();
        padded.extend_from_slice(&[0xee; 100]);
        let r = Received {
            len: padded.len(),
            ..from_peer
        };
        inbound(&mut padded, &r, &table, &c, &mut gro, &mut w);
        gro.flush(&mut w);
        assert_eq!(written, vec![good.len()]);
        assert_eq!(c.rx_packets.load(Ordering::Relaxed), 1);
    }
}
