//! The udp encapsulation of the shared pump (`crate::datapath::pump`): one TUN queue and one
//! UDP socket per worker. Buffers are allocated once; the peer table arrives over a channel
//! (no locks on the path).

use super::table::{Inbound, PeerTable};
use crate::datapath::counters::{inc, Counters};
use crate::datapath::gro::Gro;
use crate::datapath::gso::{segment, SegError};
use crate::datapath::packet::{decrement_ttl, icmp_net_unreachable, parse_ipv4};
use crate::datapath::pump::{Encap, Io, Pump};
use crate::datapath::sock::{Received, RecvBatch};
use crate::datapath::vnet::{self, VnetHdr};
use std::net::Ipv4Addr;

/// The control messages of a udp worker.
pub type Ctl = crate::datapath::pump::Ctl<PeerTable>;

/// The udp encapsulation on the shared pump: raw IP in UDP to the peer's port.
pub struct UdpEncap {
    /// Our subnet's address: the source of our ICMP errors.
    local: Ipv4Addr,
    hdrs: Vec<u8>,
    icmp: Vec<u8>,
    iov: Vec<libc::iovec>,
}

// SAFETY: the iovecs are scratch space, rebuilt before every send; no pointer in them outlives
// the call that filled it.
unsafe impl Send for UdpEncap {}

impl Default for UdpEncap {
    fn default() -> Self {
        Self {
            local: Ipv4Addr::UNSPECIFIED,
            hdrs: Vec::with_capacity(64 * 80),
            icmp: Vec::with_capacity(128),
            iov: Vec::with_capacity(2 * 64),
        }
    }
}

/// A udp worker: the shared pump with the udp encapsulation.
pub type Worker = Pump<UdpEncap>;

impl Encap for UdpEncap {
    type Table = PeerTable;

    fn poll_ms(&self) -> i32 {
        200
    }

    fn table(&mut self, _io: &Io, t: &PeerTable) {
        self.local = t.own().network();
    }

    /// TUN → peers: segment, look up the peer, one scatter-gather GSO send.
    fn outbound(&mut self, io: &Io, table: &PeerTable, read: &mut [u8]) {
        let c = io.counters;
        let Some(h) = VnetHdr::parse(read) else {
            return;
        };
        let pkt = &mut read[vnet::LEN..];
        let Some(ip) = parse_ipv4(pkt) else {
            inc(&c.malformed, 1);
            return;
        };
        let Some(peer) = table.lookup(ip.dst) else {
            inc(&c.no_route, 1);
            if icmp_net_unreachable(pkt, self.local, &mut self.icmp) {
                crate::datapath::tun::write(io.tun, &[&VnetHdr::default().bytes(), &self.icmp]);
            }
            return;
        };
        match segment(flannel_core::Family::V4, &h, pkt, &mut self.hdrs) {
            Ok(s) => match io
                .sock
                .send_segments(peer.into(), &s, &self.hdrs, pkt, &mut self.iov)
            {
                Ok(()) => {
                    inc(&c.tx_packets, s.count as u64);
                    inc(&c.tx_bytes, pkt.len() as u64);
                }
                Err(_) => inc(&c.errors, 1),
            },
            Err(SegError::TtlExpired) => inc(&c.ttl_expired, 1),
            Err(_) => inc(&c.malformed, 1),
        }
    }

    fn inbound(&mut self, io: &Io, table: &PeerTable, batch: &mut RecvBatch, got: &[Received]) {
        let c = io.counters;
        let mut write = |parts: &[&[u8]]| {
            if !crate::datapath::tun::write(io.tun, parts) {
                inc(&c.errors, 1);
            }
        };
        let mut gro = Gro::default();
        for (buf, r) in batch.bufs.iter_mut().zip(got.iter()) {
            inbound(&mut buf[..r.len], r, table, c, &mut gro, &mut write);
        }
        gro.flush(&mut write);
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
        inc(&c.rx_unknown_peer, 1);
        return;
    };
    let Some(subnets) = table.peer_subnets(*from.ip()) else {
        inc(&c.rx_unknown_peer, 1);
        return;
    };
    let seg = if r.seg > 0 { r.seg } else { data.len().max(1) };
    for pkt in data.chunks_mut(seg) {
        let Some(ip) = parse_ipv4(pkt) else {
            inc(&c.malformed, 1);
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
    use std::sync::atomic::Ordering;

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
        assert_eq!(c.rx_unknown_peer.load(Ordering::Relaxed), 1);
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
        assert_eq!(c.malformed.load(Ordering::Relaxed), 1);
        // Trailing bytes beyond the IPv4 total length are cut off, not delivered.
        inbound(&mut padded, &padded_r, &table, &c, &mut gro, &mut w);
        gro.flush(&mut w);
        assert_eq!(written, vec![good.len()]);
        assert_eq!(c.rx_packets.load(Ordering::Relaxed), 1);
    }
}
