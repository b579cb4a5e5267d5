//! The udp backend's packet path on hostile input: outbound segmentation of whatever the TUN
//! device (or a bug) hands over, inbound validation, TTL, GRO and ICMP errors. No panics, and
//! every segment produced is a well-formed IPv4 packet no larger than its declared size.
#![no_main]
use flannel_backend::udp::gro::Gro;
use flannel_backend::udp::gso::segment;
use flannel_backend::udp::packet::{decrement_ttl, icmp_net_unreachable, parse_ipv4};
use flannel_backend::udp::vnet::{self, VnetHdr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < vnet::LEN {
        return;
    }
    let Some(h) = VnetHdr::parse(data) else { return };
    let mut pkt = data[vnet::LEN..].to_vec();
    let mut hdrs = Vec::new();
    if let Ok(s) = segment(&h, &mut pkt, &mut hdrs) {
        for i in 0..s.count {
            let (hd, p) = s.parts(i, &hdrs, &pkt);
            let seg = [hd, p].concat();
            let ip = parse_ipv4(&seg).expect("segments are IPv4");
            assert_eq!(ip.total_len, seg.len());
        }
    }
    let mut icmp = Vec::new();
    let _ = icmp_net_unreachable(&data[vnet::LEN..], std::net::Ipv4Addr::new(10, 244, 1, 0), &mut icmp);
    // Inbound: split like a GRO batch of 100-byte datagrams, validate, decrement, coalesce.
    let mut inbound = data[vnet::LEN..].to_vec();
    let mut chunks: Vec<&mut [u8]> = inbound.chunks_mut(100).collect();
    for c in chunks.iter_mut() {
        if let Some(ip) = parse_ipv4(c) {
            let _ = decrement_ttl(&mut c[..ip.total_len]);
        }
    }
    let mut gro = Gro::default();
    let mut out = 0usize;
    let mut w = |parts: &[&[u8]]| out += parts.iter().map(|p| p.len()).sum::<usize>();
    for c in chunks.iter() {
        gro.push(c, &mut w);
    }
    gro.flush(&mut w);
});
