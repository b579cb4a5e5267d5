//! The udp backend's packet path on hostile input: outbound segmentation of whatever the TUN
//! device (or a bug) hands over, inbound validation (the peer table's verdict on each inner
//! packet), TTL, GRO and ICMP errors. No panics, every segment produced is a well-formed IPv4
//! packet no larger than its declared size, and nothing accepted from a peer is addressed
//! outside our subnet or spoofs another node's.
#![no_main]
use flannel_backend::udp::gro::Gro;
use flannel_backend::udp::gso::segment;
use flannel_core::Family;
use flannel_backend::udp::packet::{decrement_ttl, icmp_net_unreachable, parse_ipv4};
use flannel_backend::udp::table::{Inbound, PeerTable};
use std::net::Ipv4Addr;
use flannel_backend::udp::vnet::{self, VnetHdr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < vnet::LEN {
        return;
    }
    let Some(h) = VnetHdr::parse(data) else { return };
    let mut pkt = data[vnet::LEN..].to_vec();
    let mut hdrs = Vec::new();
    if let Ok(s) = segment(Family::V4, &h, &mut pkt, &mut hdrs) {
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
    let own = "10.244.1.0/24".parse().unwrap();
    let network: ipnet::Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let peer_net: ipnet::Ipv4Net = "10.244.2.0/24".parse().unwrap();
    let table = PeerTable::new([(peer_net, Ipv4Addr::new(10, 0, 0, 52))], 8285, own, network);
    let subnets = table.peer_subnets(Ipv4Addr::new(10, 0, 0, 52)).unwrap();
    let mut chunks: Vec<&mut [u8]> = inbound.chunks_mut(100).collect();
    for c in chunks.iter_mut() {
        if let Some(ip) = parse_ipv4(c) {
            if table.inbound(subnets, ip.src, ip.dst) == Inbound::Accept {
                assert!(own.contains(&ip.dst));
                assert!(!network.contains(&ip.src) || peer_net.contains(&ip.src));
            }
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
