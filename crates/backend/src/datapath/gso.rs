//! Outbound: what the TUN device hands us (one packet, or a TCP/UDP "super-packet" of up to
//! 64 KB with a segment size, thanks to TSO/USO) becomes MTU-sized IPv4 packets. Nothing is
//! copied but the headers: each segment is (its own header, a slice of the original payload),
//! ready for one scatter-gather UDP GSO send. The TTL is decremented, as upstream's proxy does.

use super::packet::{
    csum_add, csum_fold, decrement_ttl, fix_ipv4_checksum, parse_ipv4, pseudo_sum, PROTO_TCP,
    PROTO_UDP,
};
use super::vnet::{self, VnetHdr};
use flannel_core::Family;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegError {
    /// Not an IPv4 packet, or its headers do not add up.
    Malformed,
    /// A GSO type the udp backend does not carry (IPv6).
    Unsupported(u8),
    /// TTL reached 0.
    TtlExpired,
}

/// How a packet was cut: `count` segments; segment `i` is `hdrs[i*hdr_len..][..hdr_len]`
/// followed by `pkt[payload_start + i*gso..]` (at most `gso` bytes, up to `payload_end`).
/// A packet that needed no cutting is one segment with no separate header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub hdr_len: usize,
    pub gso: usize,
    pub payload_start: usize,
    pub payload_end: usize,
}

impl Segments {
    /// The length of every segment but the last.
    pub fn seg_len(&self) -> usize {
        self.hdr_len + self.gso
    }

    /// Header and payload of segment `i`.
    pub fn parts<'a>(&self, i: usize, hdrs: &'a [u8], pkt: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        let h = &hdrs[i * self.hdr_len..(i + 1) * self.hdr_len];
        let start = (self.payload_start + i * self.gso).min(self.payload_end);
        let end = (start + self.gso).min(self.payload_end);
        (h, &pkt[start..end])
    }
}

/// Completes a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the field already holds the
/// pseudo-header sum; the rest of the sum runs from `start` to the end.
fn complete_checksum(
    p: &mut [u8],
    ihl: usize,
    start: usize,
    offset: usize,
) -> Result<(), SegError> {
    // The checksum lives in the L4 header: anything pointing into the IP header is bogus.
    if start < ihl || start + offset + 2 > p.len() {
        return Err(SegError::Malformed);
    }
    let c = !csum_fold(csum_add(0, &p[start..]));
    p[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Cuts `pkt` (described by `h`), an IP packet of `family`, into segments; headers go to
/// `hdrs` (cleared first). A TCP super-packet (TSO, TSO6 without extension headers) or, over
/// IPv4, a UDP one (USO) becomes MTU-sized segments with their own headers and checksums; a
/// plain packet is finished in place (a partial checksum completed). IPv4's TTL is counted
/// down here; IPv6's hop limit is left alone (the kernel's routing into the device counted
/// this hop).
pub fn segment(
    family: Family,
    h: &VnetHdr,
    pkt: &mut [u8],
    hdrs: &mut Vec<u8>,
) -> Result<Segments, SegError> {
    hdrs.clear();
    let (l3, len, proto) = match family {
        Family::V4 => {
            let ip = parse_ipv4(pkt).ok_or(SegError::Malformed)?;
            (ip.ihl, ip.total_len, ip.proto)
        }
        Family::V6 => {
            if pkt.len() < 40 || pkt[0] >> 4 != 6 {
                return Err(SegError::Malformed);
            }
            let len = 40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            if len > pkt.len() {
                return Err(SegError::Malformed);
            }
            (40, len, pkt[6])
        }
    };
    let pkt = &mut pkt[..len];
    match (family, h.gso_type & !vnet::GSO_ECN) {
        (_, vnet::GSO_NONE) => {
            if h.flags & vnet::F_NEEDS_CSUM != 0 {
                complete_checksum(
                    pkt,
                    l3,
                    usize::from(h.csum_start),
                    usize::from(h.csum_offset),
                )?;
            }
            if family == Family::V4 && !decrement_ttl(pkt) {
                return Err(SegError::TtlExpired);
            }
            Ok(Segments {
                count: 1,
                hdr_len: 0,
                gso: len,
                payload_start: 0,
                payload_end: len,
            })
        }
        (Family::V4, vnet::GSO_TCPV4) | (Family::V6, vnet::GSO_TCPV6) if proto == PROTO_TCP => {
            split(pkt, l3, h.gso_size, true, hdrs)
        }
        (Family::V4, vnet::GSO_UDP_L4) if proto == PROTO_UDP => {
            split(pkt, l3, h.gso_size, false, hdrs)
        }
        (_, other) => Err(SegError::Unsupported(other)),
    }
}

/// Cuts a TCP or UDP super-packet whose IP header is `l3` bytes long (an IPv4 header, or 40:
/// IPv6 without extension headers) into segments of `gso` payload bytes.
fn split(
    pkt: &[u8],
    l3: usize,
    gso: u16,
    tcp: bool,
    hdrs: &mut Vec<u8>,
) -> Result<Segments, SegError> {
    let v6 = pkt[0] >> 4 == 6;
    if !v6 && pkt[8] <= 1 {
        return Err(SegError::TtlExpired);
    }
    let l4_len = if tcp {
        let doff = usize::from(*pkt.get(l3 + 12).ok_or(SegError::Malformed)? >> 4) * 4;
        if doff < 20 {
            return Err(SegError::Malformed);
        }
        doff
    } else {
        8
    };
    let hdr_len = l3 + l4_len;
    let gso = usize::from(gso);
    if pkt.len() < hdr_len || gso == 0 {
        return Err(SegError::Malformed);
    }
    let payload = &pkt[hdr_len..];
    let count = payload.len().div_ceil(gso).max(1);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    // The addresses of the pseudo-header, the same in every segment.
    let (alen, at) = if v6 { (16, 8) } else { (4, 12) };
    let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
    src[..alen].copy_from_slice(&pkt[at..at + alen]);
    dst[..alen].copy_from_slice(&pkt[at + alen..at + 2 * alen]);
    let seq0 = if tcp {
        u32::from_be_bytes([pkt[l3 + 4], pkt[l3 + 5], pkt[l3 + 6], pkt[l3 + 7]])
    } else {
        0
    };
    let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
    hdrs.reserve(count * hdr_len);
    for i in 0..count {
        let chunk = &payload[(i * gso).min(payload.len())..((i + 1) * gso).min(payload.len())];
        let start = hdrs.len();
        hdrs.extend_from_slice(&pkt[..hdr_len]);
        let h = &mut hdrs[start..];
        if v6 {
            // The hop limit is left alone: the kernel's routing into the device counted it.
            h[4..6].copy_from_slice(&((l4_len + chunk.len()) as u16).to_be_bytes());
        } else {
            h[2..4].copy_from_slice(&((hdr_len + chunk.len()) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            h[8] -= 1;
            fix_ipv4_checksum(&mut h[..l3]);
        }
        let l4 = &mut h[l3..];
        if tcp {
            l4[4..8].copy_from_slice(&seq0.wrapping_add((i * gso) as u32).to_be_bytes());
            if i + 1 < count {
                l4[13] &= !(0x01 | 0x08); // FIN and PSH only on the last segment
            }
            if i > 0 {
                l4[13] &= !0x80; // CWR only on the first
            }
            l4[16] = 0;
            l4[17] = 0;
        } else {
            l4[4..6].copy_from_slice(&((l4_len + chunk.len()) as u16).to_be_bytes());
            l4[6] = 0;
            l4[7] = 0;
        }
        let sum = csum_add(
            csum_add(
                pseudo_sum(&src[..alen], &dst[..alen], proto, l4_len + chunk.len()),
                l4,
            ),
            chunk,
        );
        let mut c = !csum_fold(sum);
        if !tcp && c == 0 {
            c = 0xffff;
        }
        let at = if tcp { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    Ok(Segments {
        count,
        hdr_len,
        gso,
        payload_start: hdr_len,
        payload_end: pkt.len(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::packet::tests::{tcp_checksum_ok, tcp_packet};
    use super::super::packet::{checksum, parse_ipv4};
    use super::*;

    /// The segments as separate packets (what the wire sees).
    pub fn materialize(s: &Segments, hdrs: &[u8], pkt: &[u8]) -> Vec<Vec<u8>> {
        (0..s.count)
            .map(|i| {
                let (h, p) = s.parts(i, hdrs, pkt);
                [h, p].concat()
            })
            .collect()
    }

    #[test]
    fn tso_super_packet_becomes_valid_mtu_segments() {
        let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let mut big = tcp_packet(1000, 0x18, &payload); // ACK|PSH
        let h = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut hdrs = Vec::new();
        let s = segment(Family::V4, &h, &mut big, &mut hdrs).unwrap();
        assert_eq!((s.count, s.seg_len()), (3, 1440));
        let segs = materialize(&s, &hdrs, &big);
        assert_eq!(
            segs.iter().map(Vec::len).collect::<Vec<_>>(),
            [1440, 1440, 1240]
        );
        let mut got = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let ip = parse_ipv4(seg).unwrap();
            assert_eq!(ip.total_len, seg.len());
            assert_eq!(ip.ttl, 63);
            assert_eq!(checksum(&seg[..20]), 0);
            assert!(tcp_checksum_ok(seg), "segment {i}");
            assert_eq!(
                u32::from_be_bytes([seg[24], seg[25], seg[26], seg[27]]),
                1000 + 1400 * i as u32
            );
            assert_eq!(seg[33] & 0x08 != 0, i == 2, "PSH only on the last");
            got.extend_from_slice(&seg[40..]);
        }
        assert_eq!(got, payload);
    }

    #[test]
    fn plain_packets_get_their_partial_checksum_completed_in_place() {
        let mut p = tcp_packet(5, 0x10, b"abcdefgh");
        // As the kernel hands it over with NEEDS_CSUM: the field holds the pseudo-header sum.
        let ps = csum_fold(pseudo_sum(&p[12..16], &p[16..20], PROTO_TCP, 28));
        p[36..38].copy_from_slice(&ps.to_be_bytes());
        let h = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        let mut hdrs = Vec::new();
        let s = segment(Family::V4, &h, &mut p, &mut hdrs).unwrap();
        assert_eq!((s.count, s.hdr_len), (1, 0));
        let seg = materialize(&s, &hdrs, &p).remove(0);
        assert!(tcp_checksum_ok(&seg));
        assert_eq!(seg[8], 63);
    }

    #[test]
    fn bad_input_is_refused_not_crashed_on() {
        let mut hdrs = Vec::new();
        let h = VnetHdr {
            gso_type: vnet::GSO_TCPV4,
            gso_size: 0,
            ..Default::default()
        };
        assert_eq!(
            segment(Family::V4, &h, &mut tcp_packet(1, 0x10, b"abc"), &mut hdrs),
            Err(SegError::Malformed)
        );
        assert_eq!(
            segment(
                Family::V4,
                &VnetHdr::default(),
                &mut [0x45, 0, 0],
                &mut hdrs
            ),
            Err(SegError::Malformed)
        );
        // A checksum offset pointing into the IP header (a fuzzer found this one).
        let bogus = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            ..Default::default()
        };
        assert_eq!(
            segment(
                Family::V4,
                &bogus,
                &mut tcp_packet(1, 0x10, b"abc"),
                &mut hdrs
            ),
            Err(SegError::Malformed)
        );
        let h6 = VnetHdr {
            gso_type: vnet::GSO_TCPV6,
            gso_size: 100,
            ..Default::default()
        };
        assert_eq!(
            segment(Family::V4, &h6, &mut tcp_packet(1, 0x10, b"abc"), &mut hdrs),
            Err(SegError::Unsupported(vnet::GSO_TCPV6))
        );
        let mut ttl1 = tcp_packet(1, 0x10, b"abc");
        ttl1[8] = 1;
        assert_eq!(
            segment(Family::V4, &VnetHdr::default(), &mut ttl1, &mut hdrs),
            Err(SegError::TtlExpired)
        );
        let h = VnetHdr {
            gso_type: vnet::GSO_TCPV4,
            gso_size: 1,
            ..Default::default()
        };
        let mut bad_doff = tcp_packet(1, 0x10, b"abc");
        bad_doff[32] = 0x10;
        assert_eq!(
            segment(Family::V4, &h, &mut bad_doff, &mut hdrs),
            Err(SegError::Malformed)
        );
    }
}
