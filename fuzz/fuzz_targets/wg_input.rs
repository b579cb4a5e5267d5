//! What the wireguard backend reads from outside: the `Backend` config, other nodes' lease data
//! (`{"PublicKey","Port"}`), the peers a lease set asks for, the IPv6 packets the TUN device
//! hands over, and above all any datagram that reaches the listening port (handshake
//! messages, cookies, data, garbage) through the Noise core and our allowed-IPs check. No
//! panic; a packet we deliver always comes from the sending peer's allowed IPs.
#![no_main]
use flannel_backend::datapath::gso::segment;
use flannel_core::Family;
use flannel_backend::datapath::vnet::{self, VnetHdr};
use flannel_backend::wg::table::{PeerState, WgTable};
use flannel_backend::datapath::counters::Counters;
use flannel_backend::wg::worker::{open_datagram, Identity};
use flannel_core::raw_json::RawJson;
use flannel_backend::wg::config::{desired_peers, Device, PeerInputs, WgConfig, WgData, WgPeer};
use flannel_core::{Lease, LeaseAttrs};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn fixture() -> &'static (Identity, WgTable) {
    static F: OnceLock<(Identity, WgTable)> = OnceLock::new();
    F.get_or_init(|| {
        let id = Identity::new([1u8; 32]);
        let peer = WgPeer {
            public_key: Identity::new([2u8; 32]).public.to_bytes(),
            endpoint: "10.0.0.52:51820".parse().unwrap(),
            allowed: vec!["10.244.1.0/24".parse().unwrap(), "fd10:1::/64".parse().unwrap()],
        };
        let state = PeerState::new(&id, &peer, 7, None, 0);
        (id, WgTable::new(vec![Arc::new(state)]))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) {
                if let Ok(c) = WgConfig::from_backend(&v) {
                    assert!(c.listen_port > 0 && c.listen_port_v6 > 0);
                    let _ = c.device_mtu(1500);
                }
            }
            if let Ok(t) = std::str::from_utf8(rest) {
                if let Ok(raw) = RawJson::from_text(t) {
                    if let Ok(d) = WgData::from_raw(&raw) {
                        assert_eq!(WgData::from_raw(&d.to_raw()), Ok(d));
                    }
                }
            }
        }
        1 => {
            // Another node's lease among ours: whatever it holds, a peer or a reason.
            let Ok(attrs) = LeaseAttrs::from_json(rest) else { return };
            let own = Lease::v4("10.244.1.0/24".parse().unwrap(), LeaseAttrs::v4("10.0.0.51".parse().unwrap(), "wireguard", None));
            let other = Lease { subnet: "10.244.2.0/24".parse().unwrap(), ipv6_subnet: Some("fd10:2::/64".parse().unwrap()), attrs };
            for mode in ["separate", "auto", "ipv4", "ipv6"] {
                let cfg = WgConfig::from_backend(&serde_json::json!({"Mode": mode})).unwrap();
                let input = PeerInputs { cfg: &cfg, own: &own, v4: true, v6: true, local_v6: None };
                for dev in [Device::Main, Device::V6] {
                    let (peers, skipped) = desired_peers(input, dev, std::slice::from_ref(&other));
                    assert!(peers.len() + skipped.len() <= 1);
                }
            }
        }
        2 => {
            let Some(h) = VnetHdr::parse(rest) else { return };
            let mut pkt = rest[vnet::LEN..].to_vec();
            let mut hdrs = Vec::new();
            if let Ok(s) = segment(Family::V6, &h, &mut pkt, &mut hdrs) {
                for i in 0..s.count {
                    let (hd, p) = s.parts(i, &hdrs, &pkt);
                    let seg = [hd, p].concat();
                    assert!(seg.len() >= 40 && seg[0] >> 4 == 6);
                    assert_eq!(40 + usize::from(u16::from_be_bytes([seg[4], seg[5]])), seg.len());
                }
            }
        }
        _ => {
            let (id, table) = fixture();
            let c = Counters::default();
            let mut slot = vec![0u8; rest.len()];
            let mut scratch = vec![0u8; 2048];
            let from = "10.0.0.52:51820".parse().unwrap();
            let got = open_datagram(id, table, rest, from, &mut slot, &mut scratch, &c, &mut |_, _| {});
            if let Some(p) = got {
                let peer = &table.peers()[0];
                let src = match p[0] >> 4 {
                    4 => std::net::IpAddr::from([p[12], p[13], p[14], p[15]]),
                    _ => std::net::IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap()),
                };
                assert!(peer.allows(src));
            }
        }
    }
});
