//! Inbound: consecutive TCP segments of one flow are coalesced into one large packet with a
//! GSO header before they go into the TUN device, so the kernel handles one 64 KB packet instead
//! of ~45 small ones. Payloads are not copied: a merged packet is written as (new header, the
//! segments' payloads in the receive buffers) with one `writev`. Anything that cannot be merged
//! is written as it is. IPv4 and IPv6 (without extension headers) alike.

use super::packet::{csum_fold, fix_ipv4_checksum, parse_ipv4, pseudo_sum, PROTO_TCP};
use super::vnet::{self, VnetHdr};

/// At most this many flows are coalesced at once; more get flushed.
const MAX_FLOWS: usize = 8;
/// At most this many segments go into one merged packet.
pub const MAX_SEGS: usize = 64;
/// The largest packet the kernel accepts from a TUN device.
const MAX_LEN: usize = 65535;
/// IPv6 (40, no extension headers) + the largest TCP header (60).
const MAX_HDR: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    /// Source and destination address: 8 bytes of IPv4 (the rest zero) or 32 of IPv6.
    addrs: [u8; 32],
    ports: [u8; 4],
    v6: bool,
}

/// Where the addresses of a packet of family `v6` sit, and the IP header's length.
fn addr_range(v6: bool) -> std::ops::Range<usize> {
    if v6 {
        8..40
    } else {
        12..20
    }
}

struct Flow<'a> {
    key: FlowKey,
    /// The IP header's length: 20 or 40.
    l3: usize,
    /// The first segment, whose headers become the merged packet's.
    first: &'a [u8],
    hdr_len: usize,
    seg_size: usize,
    /// Payloads of the segments after the first.
    more: [&'a [u8]; MAX_SEGS],
    n_more: usize,
    len: usize,
    next_seq: u32,
    psh: bool,
    /// PSH seen or a short segment appended: nothing more may follow.
    closed: bool,
}

/// The coalescing state of one receive batch; the packets it holds borrow the batch's buffers.
pub struct Gro<'a> {
    flows: Vec<Flow<'a>>,
}

/// A TCP segment that may be merged: plain IP header (IPv4 without options and not fragmented,
/// IPv6 without extension headers), ACK (maybe PSH) only, with payload.
fn mergeable(p: &[u8]) -> Option<(FlowKey, usize, u32, usize)> {
    let v6 = p.first()? >> 4 == 6;
    let l3 = if v6 {
        if p.len() < 40
            || p[6] != PROTO_TCP
            || 40 + usize::from(u16::from_be_bytes([p[4], p[5]])) != p.len()
        {
            return None;
        }
        40
    } else {
        let ip = parse_ipv4(p)?;
        if ip.ihl != 20 || ip.proto != PROTO_TCP || ip.fragment || ip.total_len != p.len() {
            return None;
        }
        20
    };
    let t = &p[l3..];
    if t.len() < 20 {
        return None;
    }
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < 20 || t.len() < doff || t[13] & !0x08 != 0x10 {
        return None;
    }
    let payload = t.len() - doff;
    if payload == 0 {
        return None;
    }
    let mut key = FlowKey {
        addrs: [0; 32],
        ports: [0; 4],
        v6,
    };
    let a = addr_range(v6);
    key.addrs[..a.len()].copy_from_slice(&p[a]);
    key.ports.copy_from_slice(&t[0..4]);
    Some((
        key,
        l3 + doff,
        u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        payload,
    ))
}

impl Default for Gro<'_> {
    fn default() -> Self {
        Self {
            flows: Vec::with_capacity(MAX_FLOWS),
        }
    }
}

/// Whether `p` may follow `head` in one merged packet: same traffic class and TTL / hop limit
/// (and IPv6 flow label), same ACK number, same TCP options.
fn same_headers(head: &[u8], p: &[u8], l3: usize, hdr_len: usize) -> bool {
    let ip_same = if l3 == 40 {
        head[0..4] == p[0..4] && head[7] == p[7]
    } else {
        head[1] == p[1] && head[8] == p[8]
    };
    ip_same
        && head[l3 + 8..l3 + 12] == p[l3 + 8..l3 + 12]
        && head[l3 + 20..hdr_len] == p[l3 + 20..hdr_len]
}

impl<'a> Gro<'a> {
    /// Takes one inbound packet; `write(parts)` is called with (vnet header, packet pieces) for
    /// whatever is ready to go into the TUN device.
    pub fn push(&mut self, p: &'a [u8], write: &mut impl FnMut(&[&[u8]])) {
        let Some((key, hdr_len, seq, payload)) = mergeable(p) else {
            // Keep per-flow order: anything pending between these addresses goes first.
            self.flush_matching(p, write);
            write(&[
                &VnetHdr {
                    flags: vnet::F_DATA_VALID,
                    ..Default::default()
                }
                .bytes(),
                p,
            ]);
            return;
        };
        if let Some(i) = self.flows.iter().position(|f| f.key == key) {
            if self.can_append(i, p, hdr_len, seq, payload) {
                let f = &mut self.flows[i];
                f.more[f.n_more] = &p[hdr_len..];
                f.n_more += 1;
                f.len += payload;
                f.next_seq = seq.wrapping_add(payload as u32);
                if p[f.l3 + 13] & 0x08 != 0 {
                    f.psh = true;
                    f.closed = true;
                }
                if payload < f.seg_size || f.n_more == MAX_SEGS {
                    f.closed = true;
                }
                return;
            }
            self.flush_one(i, write);
        }
        if self.flows.len() >= MAX_FLOWS {
            self.flush_one(0, write);
        }
        let l3 = if key.v6 { 40 } else { 20 };
        let psh = p[l3 + 13] & 0x08 != 0;
        self.flows.push(Flow {
            key,
            l3,
            first: p,
            hdr_len,
            seg_size: payload,
            more: [&[]; MAX_SEGS],
            n_more: 0,
            len: p.len(),
            next_seq: seq.wrapping_add(payload as u32),
            psh,
            closed: psh,
        });
    }

    fn can_append(&self, i: usize, p: &[u8], hdr_len: usize, seq: u32, payload: usize) -> bool {
        let f = &self.flows[i];
        let head = f.first;
        !f.closed
            && hdr_len == f.hdr_len
            && seq == f.next_seq
            && payload <= f.seg_size
            && f.len + payload <= MAX_LEN
            && same_headers(head, p, f.l3, hdr_len)
    }

    fn flush_matching(&mut self, p: &[u8], write: &mut impl FnMut(&[&[u8]])) {
        let v6 = p.first().is_some_and(|b| b >> 4 == 6);
        let a = addr_range(v6);
        let Some(addrs) = p.get(a.clone()) else {
            return;
        };
        while let Some(i) = self
            .flows
            .iter()
            .position(|f| f.key.v6 == v6 && f.key.addrs[..a.len()] == *addrs)
        {
            self.flush_one(i, write);
        }
    }

    fn flush_one(&mut self, i: usize, write: &mut impl FnMut(&[&[u8]])) {
        let f = self.flows.remove(i);
        if f.n_more == 0 {
            write(&[
                &VnetHdr {
                    flags: vnet::F_DATA_VALID,
                    ..Default::default()
                }
                .bytes(),
                f.first,
            ]);
            return;
        }
        let mut hdr = [0u8; MAX_HDR];
        let h = &mut hdr[..f.hdr_len];
        h.copy_from_slice(&f.first[..f.hdr_len]);
        let l3 = f.l3;
        if f.key.v6 {
            h[4..6].copy_from_slice(&((f.len - 40) as u16).to_be_bytes());
        } else {
            h[2..4].copy_from_slice(&(f.len as u16).to_be_bytes());
            fix_ipv4_checksum(&mut h[..20]);
        }
        if f.psh {
            h[l3 + 13] |= 0x08;
        }
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the kernel finishes it.
        let (src, dst) = if f.key.v6 {
            (8..24, 24..40)
        } else {
            (12..16, 16..20)
        };
        let ps = csum_fold(pseudo_sum(&h[src], &h[dst], PROTO_TCP, f.len - l3));
        h[l3 + 16..l3 + 18].copy_from_slice(&ps.to_be_bytes());
        let v = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: if f.key.v6 {
                vnet::GSO_TCPV6
            } else {
                vnet::GSO_TCPV4
            },
            hdr_len: f.hdr_len as u16,
            gso_size: f.seg_size as u16,
            csum_start: l3 as u16,
            csum_offset: 16,
        }
        .bytes();
        let mut parts: [&[u8]; MAX_SEGS + 3] = [&[]; MAX_SEGS + 3];
        parts[0] = &v;
        parts[1] = &hdr[..f.hdr_len];
        parts[2] = &f.first[f.hdr_len..];
        parts[3..3 + f.n_more].copy_from_slice(&f.more[..f.n_more]);
        write(&parts[..3 + f.n_more]);
    }

    /// Writes everything pending (end of a receive batch).
    pub fn flush(&mut self, write: &mut impl FnMut(&[&[u8]])) {
        while !self.flows.is_empty() {
            self.flush_one(0, write);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gso::{segment, tests::materialize};
    use super::super::packet::tests::{tcp_checksum_ok, tcp_packet};
    use super::super::packet::{csum_add, csum_fold, parse_ipv4};
    use super::*;

    fn collect(pkts: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut w =
            |parts: &[&[u8]]| out.push((VnetHdr::parse(parts[0]).unwrap(), parts[1..].concat()));
        let mut g = Gro::default();
        for p in pkts {
            g.push(p, &mut w);
        }
        g.flush(&mut w);
        out
    }

    #[test]
    fn segments_round_trip_into_one_gso_packet() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut big = tcp_packet(42, 0x18, &payload);
        let h = VnetHdr {
            gso_type: vnet::GSO_TCPV4,
            gso_size: 1448,
            ..Default::default()
        };
        let mut hdrs = Vec::new();
        let s = segment(flannel_core::Family::V4, &h, &mut big, &mut hdrs).unwrap();
        let pkts = materialize(&s, &hdrs, &big);
        let out = collect(&pkts);
        assert_eq!(out.len(), 1, "one coalesced packet");
        let (vh, p) = &out[0];
        assert_eq!(
            (vh.gso_type, vh.gso_size, vh.hdr_len, vh.flags),
            (vnet::GSO_TCPV4, 1448, 40, vnet::F_NEEDS_CSUM)
        );
        let ip = parse_ipv4(p).unwrap();
        assert_eq!(ip.total_len, 40 + payload.len());
        assert_eq!(&p[40..], &payload[..]);
        assert_eq!(p[33] & 0x08, 0x08, "PSH of the last segment kept");
        // Finishing the partial checksum as the kernel would gives a valid packet.
        let mut done = p.clone();
        let c = !csum_fold(csum_add(0, &done[20..]));
        done[36..38].copy_from_slice(&c.to_be_bytes());
        assert!(tcp_checksum_ok(&done));
    }

    /// An IPv6 TCP packet fd10:1::2 → fd10:2::3 with a valid checksum.
    fn tcp6_packet(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[PROTO_TCP, 64]);
        p.extend_from_slice(&"fd10:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd10:2::3".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let v4 = tcp_packet(seq, flags, payload);
        p.extend_from_slice(&v4[20..]);
        p[56] = 0;
        p[57] = 0;
        let c = !csum_fold(csum_add(
            pseudo_sum(&p[8..24], &p[24..40], PROTO_TCP, 20 + payload.len()),
            &p[40..],
        ));
        p[56..58].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp6_checksum_ok(p: &[u8]) -> bool {
        csum_fold(csum_add(
            pseudo_sum(&p[8..24], &p[24..40], PROTO_TCP, p.len() - 40),
            &p[40..],
        )) == 0xffff
    }

    #[test]
    fn ipv6_segments_round_trip_into_one_gso_packet() {
        let payload: Vec<u8> = (0..9_000u32).map(|i| (i * 3) as u8).collect();
        let mut big = tcp6_packet(7, 0x18, &payload);
        let h = VnetHdr {
            gso_type: vnet::GSO_TCPV6,
            gso_size: 1380,
            ..Default::default()
        };
        let mut hdrs = Vec::new();
        let s =
            super::super::gso::segment(flannel_core::Family::V6, &h, &mut big, &mut hdrs).unwrap();
        assert_eq!(s.count, 7);
        let pkts = materialize(&s, &hdrs, &big);
        for (i, p) in pkts.iter().enumerate() {
            assert!(tcp6_checksum_ok(p), "segment {i}");
            assert_eq!(p[53] & 0x08 != 0, i == 6, "PSH on the last segment only");
        }
        assert_eq!(pkts[6].len(), 60 + 9_000 - 6 * 1380);
        let out = collect(&pkts);
        assert_eq!(out.len(), 1, "one coalesced packet");
        let (vh, p) = &out[0];
        assert_eq!(
            (vh.gso_type, vh.gso_size, vh.hdr_len, vh.csum_start),
            (vnet::GSO_TCPV6, 1380, 60, 40)
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([p[4], p[5]])),
            20 + payload.len()
        );
        assert_eq!(&p[60..], &payload[..]);
        let mut done = p.clone();
        let c = !csum_fold(csum_add(0, &done[40..]));
        done[56..58].copy_from_slice(&c.to_be_bytes());
        assert!(tcp6_checksum_ok(&done));
        // A v4 flow and a v6 flow in one batch stay apart, each in order.
        let mixed = [
            tcp_packet(0, 0x10, &[1; 100]),
            tcp6_packet(0, 0x10, &[2; 100]),
            tcp_packet(100, 0x10, &[3; 100]),
            tcp6_packet(100, 0x10, &[4; 100]),
        ];
        let out = collect(&mixed);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.gso_type, vnet::GSO_TCPV4);
        assert_eq!(out[1].0.gso_type, vnet::GSO_TCPV6);
    }

    #[test]
    fn gaps_other_flows_and_non_data_segments_are_not_merged() {
        let a1 = tcp_packet(100, 0x10, &[1; 100]);
        let a3 = tcp_packet(300, 0x10, &[3; 100]); // gap: 200 missing
        let syn = tcp_packet(0, 0x02, &[]);
        let out = collect(&[a1.clone(), a3.clone(), syn.clone()]);
        assert_eq!(out.len(), 3);
        assert!(out
            .iter()
            .all(|(h, _)| h.gso_type == vnet::GSO_NONE && h.flags == vnet::F_DATA_VALID));
        assert_eq!((&out[0].1, &out[1].1, &out[2].1), (&a1, &a3, &syn));
    }

    #[test]
    fn a_short_segment_ends_the_run_and_order_is_kept() {
        let p1 = tcp_packet(0, 0x10, &[1; 100]);
        let p2 = tcp_packet(100, 0x10, &[2; 50]);
        let p3 = tcp_packet(150, 0x10, &[3; 100]);
        let out = collect(&[p1, p2, p3.clone()]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.gso_size, 100);
        assert_eq!(out[0].1.len(), 40 + 150);
        assert_eq!(out[1].1, p3);
    }

    #[test]
    fn at_most_64_segments_per_packet() {
        let pkts: Vec<Vec<u8>> = (0..70u32)
            .map(|i| tcp_packet(i * 100, 0x10, &[i as u8; 100]))
            .collect();
        let out = collect(&pkts);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.len(), 40 + 65 * 100, "first packet plus 64 more");
        assert_eq!(out[1].1.len(), 40 + 5 * 100);
    }

    #[test]
    fn garbage_passes_through_untouched() {
        let out = collect(&[vec![0x45, 0, 0, 3], vec![]]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, vec![0x45, 0, 0, 3]);
    }
}
