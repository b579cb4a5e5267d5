//! IPv4 packet helpers for the udp data path: checksums, TTL, ICMP errors. Pure functions on
//! byte slices; nothing here allocates except into buffers the caller owns.

use std::net::Ipv4Addr;

pub const IPV4_HDR_MIN: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Adds `data` to a ones-complement running sum (big-endian 16-bit words).
pub fn csum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        sum += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        sum += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        sum += u64::from(rest[i]) << 8;
    }
    sum
}

/// Folds a running sum to 16 bits (not complemented).
pub fn csum_fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !csum_fold(csum_add(0, data))
}

/// The pseudo-header sum for TCP/UDP over IPv4.
pub fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    let s = csum_add(0, src);
    let s = csum_add(s, dst);
    s + u64::from(proto) + len as u64
}

/// Recomputes the IPv4 header checksum in place.
pub fn fix_ipv4_checksum(hdr: &mut [u8]) {
    hdr[10] = 0;
    hdr[11] = 0;
    let c = checksum(hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}

/// A parsed IPv4 header (only what the data path needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Hdr {
    pub ihl: usize,
    pub total_len: usize,
    pub proto: u8,
    pub ttl: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// More-fragments flag or a non-zero fragment offset.
    pub fragment: bool,
    pub first_fragment: bool,
}

/// Parses and checks an IPv4 header: version 4, sane header length, total length within `pkt`.
pub fn parse_ipv4(pkt: &[u8]) -> Option<Ipv4Hdr> {
    if pkt.len() < IPV4_HDR_MIN || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < IPV4_HDR_MIN || total_len < ihl || total_len > pkt.len() {
        return None;
    }
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    let offset = frag & 0x1fff;
    Some(Ipv4Hdr {
        ihl,
        total_len,
        proto: pkt[9],
        ttl: pkt[8],
        src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
        fragment: frag & 0x2000 != 0 || offset != 0,
        first_fragment: offset == 0,
    })
}

/// Decrements the TTL with an incremental checksum update (RFC 1624). Returns false when the
/// packet must be dropped instead (TTL would reach 0), as upstream's proxy does.
pub fn decrement_ttl(pkt: &mut [u8]) -> bool {
    if pkt.len() < IPV4_HDR_MIN || pkt[8] <= 1 {
        return false;
    }
    let old = u16::from_be_bytes([pkt[8], pkt[9]]);
    pkt[8] -= 1;
    let new = u16::from_be_bytes([pkt[8], pkt[9]]);
    let hc = u16::from_be_bytes([pkt[10], pkt[11]]);
    // HC' = ~(~HC + ~m + m')
    let sum = u64::from(!hc) + u64::from(!old) + u64::from(new);
    let c = !csum_fold(sum);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
    true
}

/// Builds an ICMP "destination net unreachable" (type 3, code 0, TTL 8, as upstream) answering
/// `orig`, from `src`, into `out`. Returns false when none may be sent (ICMP or a non-first
/// fragment).
pub fn icmp_net_unreachable(orig: &[u8], src: Ipv4Addr, out: &mut Vec<u8>) -> bool {
    let Some(h) = parse_ipv4(orig) else {
        return false;
    };
    // Never about an ICMP error (RFC 1122 3.2.2); queries such as echo do get an answer
    // (upstream stays silent for every ICMP packet, so ping showed nothing).
    let icmp_query = h.proto == PROTO_ICMP && matches!(orig.get(h.ihl), Some(8 | 13 | 15 | 17));
    if (h.proto == PROTO_ICMP && !icmp_query) || !h.first_fragment {
        return false;
    }
    let quoted = &orig[..(h.ihl + 8).min(h.total_len)];
    let total = IPV4_HDR_MIN + 8 + quoted.len();
    out.clear();
    out.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        8,
        PROTO_ICMP,
        0,
        0,
    ]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&h.src.octets());
    fix_ipv4_checksum(&mut out[..IPV4_HDR_MIN]);
    out.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(quoted);
    let c = checksum(&out[IPV4_HDR_MIN..]);
    out[IPV4_HDR_MIN + 2..IPV4_HDR_MIN + 4].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid IPv4/TCP packet with `payload`, for tests.
    pub fn tcp_packet(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 20 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0x12,
            0x34,
            0x40,
            0,
            64,
            PROTO_TCP,
            0,
            0,
        ];
        p.extend_from_slice(&[10, 244, 1, 2, 10, 244, 2, 3]);
        fix_ipv4_checksum(&mut p[..20]);
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&777u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&502u16.to_be_bytes());
        p.extend_from_slice(&t);
        p.extend_from_slice(payload);
        let sum = csum_add(
            pseudo_sum(&p[12..16], &p[16..20], PROTO_TCP, 20 + payload.len()),
            &p[20..],
        );
        let c = !csum_fold(sum);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Whether the TCP checksum of a packet verifies.
    pub fn tcp_checksum_ok(p: &[u8]) -> bool {
        let h = parse_ipv4(p).unwrap();
        let sum = csum_add(
            pseudo_sum(&p[12..16], &p[16..20], PROTO_TCP, h.total_len - h.ihl),
            &p[h.ihl..h.total_len],
        );
        csum_fold(sum) == 0xffff
    }

    #[test]
    fn checksums_match_rfc1071_example() {
        // RFC 1071 §3 example words.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(csum_fold(csum_add(0, &data)), 0xddf2);
        let p = tcp_packet(1, 0x10, b"hello");
        assert_eq!(checksum(&p[..20]), 0, "header checksum verifies");
        assert!(tcp_checksum_ok(&p));
    }

    #[test]
    fn ttl_decrement_keeps_the_header_checksum_valid_and_drops_at_one() {
        let mut p = tcp_packet(1, 0x10, b"x");
        assert!(decrement_ttl(&mut p));
        assert_eq!(p[8], 63);
        assert_eq!(checksum(&p[..20]), 0);
        p[8] = 1;
        fix_ipv4_checksum(&mut p[..20]);
        assert!(!decrement_ttl(&mut p));
    }

    #[test]
    fn parse_rejects_truncated_and_bad_headers() {
        let p = tcp_packet(1, 0x10, b"abc");
        assert!(parse_ipv4(&p).is_some());
        assert!(parse_ipv4(&p[..19]).is_none());
        assert!(
            parse_ipv4(&p[..30]).is_none(),
            "total length beyond the buffer"
        );
        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert!(parse_ipv4(&v6).is_none());
        let mut short_ihl = p.clone();
        short_ihl[0] = 0x44;
        assert!(parse_ipv4(&short_ihl).is_none());
    }

    #[test]
    fn icmp_unreachable_quotes_the_header_and_is_valid() {
        let p = tcp_packet(1, 0x10, b"0123456789abcdef");
        let mut out = Vec::new();
        assert!(icmp_net_unreachable(
            &p,
            Ipv4Addr::new(10, 244, 1, 0),
            &mut out
        ));
        let h = parse_ipv4(&out).unwrap();
        assert_eq!(
            (h.proto, h.ttl, h.src, h.dst),
            (
                PROTO_ICMP,
                8,
                Ipv4Addr::new(10, 244, 1, 0),
                Ipv4Addr::new(10, 244, 1, 2)
            )
        );
        assert_eq!((out[20], out[21]), (3, 0));
        assert_eq!(checksum(&out[..20]), 0);
        assert_eq!(checksum(&out[20..]), 0);
        assert_eq!(&out[28..], &p[..28]);
        let icmp = out.clone();
        assert!(
            !icmp_net_unreachable(&icmp, Ipv4Addr::new(10, 244, 1, 0), &mut out),
            "never about an ICMP error"
        );
        let mut echo = p.clone();
        echo[9] = PROTO_ICMP;
        echo[20] = 8;
        fix_ipv4_checksum(&mut echo[..20]);
        assert!(
            icmp_net_unreachable(&echo, Ipv4Addr::new(10, 244, 1, 0), &mut out),
            "echo gets an answer"
        );
    }
}
