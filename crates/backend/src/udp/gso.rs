//! Outbound: what the TUN device hands us (one packet, or a TCP/UDP "super-packet" of up to
//! 64 KB with a segment size, thanks to TSO/USO) becomes MTU-sized IPv4 packets, written back to
//! back into one buffer so a single UDP GSO send turns them into one datagram each. The TTL is
//! decremented on the way, as upstream's proxy does.

use super::packet::{
    csum_add, csum_fold, decrement_ttl, fix_ipv4_checksum, parse_ipv4, pseudo_sum, PROTO_TCP,
    PROTO_UDP,
};
use super::vnet::{self, VnetHdr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegError {
    /// Not an IPv4 packet, or its headers do not add up.
    Malformed,
    /// A GSO type the udp backend does not carry (IPv6).
    Unsupported(u8),
    /// TTL reached 0.
    TtlExpired,
}

/// Completes a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the field already holds the
/// pseudo-header sum; the rest of the sum runs from `start` to the end.
fn complete_checksum(p: &mut [u8], start: usize, offset: usize) -> Result<(), SegError> {
    if start + offset + 2 > p.len() {
        return Err(SegError::Malformed);
    }
    let c = !csum_fold(csum_add(0, &p[start..]));
    p[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Segments `pkt` (described by `h`) into `out`. Returns `(count, seg_len)`: every segment but
/// the last is exactly `seg_len` bytes.
pub fn segment(h: &VnetHdr, pkt: &[u8], out: &mut Vec<u8>) -> Result<(usize, usize), SegError> {
    out.clear();
    let ip = parse_ipv4(pkt).ok_or(SegError::Malformed)?;
    let pkt = &pkt[..ip.total_len];
    match h.gso_type & !vnet::GSO_ECN {
        vnet::GSO_NONE => {
            out.extend_from_slice(pkt);
            if h.flags & vnet::F_NEEDS_CSUM != 0 {
                complete_checksum(out, usize::from(h.csum_start), usize::from(h.csum_offset))?;
            }
            if !decrement_ttl(out) {
                return Err(SegError::TtlExpired);
            }
            Ok((1, out.len()))
        }
        vnet::GSO_TCPV4 if ip.proto == PROTO_TCP => split(pkt, ip.ihl, h.gso_size, true, out),
        vnet::GSO_UDP_L4 if ip.proto == PROTO_UDP => split(pkt, ip.ihl, h.gso_size, false, out),
        other => Err(SegError::Unsupported(other)),
    }
}

fn split(
    pkt: &[u8],
    ihl: usize,
    gso: u16,
    tcp: bool,
    out: &mut Vec<u8>,
) -> Result<(usize, usize), SegError> {
    if pkt[8] <= 1 {
        return Err(SegError::TtlExpired);
    }
    let l4_len = if tcp {
        let doff = usize::from(*pkt.get(ihl + 12).ok_or(SegError::Malformed)? >> 4) * 4;
        if doff < 20 {
            return Err(SegError::Malformed);
        }
        doff
    } else {
        8
    };
    let hdr_len = ihl + l4_len;
    let gso = usize::from(gso);
    if pkt.len() < hdr_len || gso == 0 {
        return Err(SegError::Malformed);
    }
    let payload = &pkt[hdr_len..];
    let count = payload.len().div_ceil(gso).max(1);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let (src, dst) = (
        [pkt[12], pkt[13], pkt[14], pkt[15]],
        [pkt[16], pkt[17], pkt[18], pkt[19]],
    );
    let seq0 = if tcp {
        u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]])
    } else {
        0
    };
    out.reserve(payload.len() + count * hdr_len);
    for i in 0..count {
        let chunk = &payload[(i * gso).min(payload.len())..((i + 1) * gso).min(payload.len())];
        let start = out.len();
        out.extend_from_slice(&pkt[..hdr_len]);
        out.extend_from_slice(chunk);
        let seg = &mut out[start..];
        let total = hdr_len + chunk.len();
        seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        seg[8] -= 1;
        fix_ipv4_checksum(&mut seg[..ihl]);
        let l4 = &mut seg[ihl..];
        if tcp {
            let seq = seq0.wrapping_add((i * gso) as u32);
            l4[4..8].copy_from_slice(&seq.to_be_bytes());
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
        let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
        let l4 = &mut out[start + ihl..];
        let mut c = !csum_fold(csum_add(pseudo_sum(&src, &dst, proto, l4.len()), l4));
        if !tcp && c == 0 {
            c = 0xffff;
        }
        let at = if tcp { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    Ok((count, hdr_len + gso))
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::{tcp_checksum_ok, tcp_packet};
    use super::super::packet::{checksum, parse_ipv4};
    use super::*;

    #[test]
    fn tso_super_packet_becomes_valid_mtu_segments() {
        let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let big = tcp_packet(1000, 0x18, &payload); // ACK|PSH
        let h = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        let (n, seg_len) = segment(&h, &big, &mut out).unwrap();
        assert_eq!((n, seg_len), (3, 1440));
        assert_eq!(out.len(), 2 * 1440 + 40 + 1200);
        let mut got = Vec::new();
        for (i, seg) in out.chunks(seg_len).enumerate() {
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
    fn plain_packets_get_their_partial_checksum_completed() {
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
        let mut out = Vec::new();
        assert_eq!(segment(&h, &p, &mut out).unwrap(), (1, p.len()));
        assert!(tcp_checksum_ok(&out));
        assert_eq!(out[8], 63);
    }

    #[test]
    fn bad_input_is_refused_not_crashed_on() {
        let mut out = Vec::new();
        let h = VnetHdr {
            gso_type: vnet::GSO_TCPV4,
            gso_size: 0,
            ..Default::default()
        };
        assert_eq!(
            segment(&h, &tcp_packet(1, 0x10, b"abc"), &mut out),
            Err(SegError::Malformed)
        );
        assert_eq!(
            segment(&VnetHdr::default(), &[0x45, 0, 0], &mut out),
            Err(SegError::Malformed)
        );
        let h6 = VnetHdr {
            gso_type: vnet::GSO_TCPV6,
            gso_size: 100,
            ..Default::default()
        };
        assert_eq!(
            segment(&h6, &tcp_packet(1, 0x10, b"abc"), &mut out),
            Err(SegError::Unsupported(vnet::GSO_TCPV6))
        );
        let mut ttl1 = tcp_packet(1, 0x10, b"abc");
        ttl1[8] = 1;
        assert_eq!(
            segment(&VnetHdr::default(), &ttl1, &mut out),
            Err(SegError::TtlExpired)
        );
        let h = VnetHdr {
            gso_type: vnet::GSO_TCPV4,
            gso_size: 1,
            ..Default::default()
        };
        let mut bad_doff = tcp_packet(1, 0x10, b"abc");
        bad_doff[32] = 0x10;
        assert_eq!(segment(&h, &bad_doff, &mut out), Err(SegError::Malformed));
    }
}
