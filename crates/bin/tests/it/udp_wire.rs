//! The udp backend in the lab, and on the wire against an "upstream node": a namespace on the
//! lab's switch that speaks upstream's format by hand (a raw IPv4 packet as the UDP payload,
//! port 8285), byte by byte.

use crate::common;

use common::lab::Lab;
use common::{eventually, in_ns, ip, Netns};
use flannel_backend::udp::packet::{checksum, fix_ipv4_checksum, parse_ipv4, PROTO_ICMP};
use flannel_lab::cluster::etcd_put;
use flannel_lab::LabSpec;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

fn lab() -> Lab {
    Lab::up_with(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        backend: "udp".into(),
        // Drop counters are said on the short (firewall) timer, not the kernel pass's 30 s.
        flanneld_args: vec!["--iptables-resync=1".into()],
        ..LabSpec::default()
    })
}

/// An ICMP echo request from `src` to `dst`, as a raw IPv4 packet.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, PROTO_ICMP, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    fix_ipv4_checksum(&mut p[..20]);
    p.extend_from_slice(&[8, 0, 0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(b"flannel!");
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn udp_lab_pings_and_sets_up_flannel0_like_upstream() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab();
    let m = flannel_lab::ping::ping_all(&lab.state);
    assert!(m.all_ok(), "{}", m.render());
    let n = &lab.state.nodes[0];
    let link = ip(&["-n", &n.netns, "-d", "link", "show", "flannel0"]);
    assert!(
        link.contains("mtu 1472") && link.contains("tun type tun") && link.contains("vnet_hdr on"),
        "{link}"
    );
    assert!(ip(&["-n", &n.netns, "addr", "show", "flannel0"])
        .contains(&format!("inet {}/32", n.subnet.trim_end_matches("/24"))));
    assert!(ip(&["-n", &n.netns, "route"]).contains("10.244.0.0/16 dev flannel0 proto 252"));
    let env =
        std::fs::read_to_string(lab.state.state_dir.join(&n.name).join("subnet.env")).unwrap();
    assert!(env.contains("FLANNEL_MTU=1472"), "{env}");
    let value =
        flannel_lab::cluster::etcd_get(&lab.state, &flannel_lab::cluster::lease_key(&n.subnet))
            .unwrap();
    assert_eq!(
        value.trim(),
        format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, n.ip),
        "no BackendType, like upstream"
    );
    // No lease for the destination: ICMP net unreachable from flannel0's address.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &n.pods[0].netns,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "10.244.250.1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Destination Net Unreachable"), "{text}");
}

#[test]
fn upstream_framing_both_ways_and_strangers_dropped() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab();
    let p = lab.spare_octet(200);
    let node = &lab.state.nodes[1];
    let pod = node.pods[0].ip.parse::<Ipv4Addr>().unwrap();
    // An "upstream node" at 10.0.0.99 on the lab's switch, holding a spare 10.244.x.0/24.
    let fake = Netns::new("up");
    ip(&[
        "-n",
        &format!("{}-sw", lab.name),
        "link",
        "add",
        "fk99",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &fake.0,
    ]);
    ip(&[
        "-n",
        &format!("{}-sw", lab.name),
        "link",
        "set",
        "fk99",
        "master",
        "br0",
        "up",
    ]);
    ip(&["-n", &fake.0, "addr", "add", "10.0.0.99/24", "dev", "eth0"]);
    ip(&["-n", &fake.0, "addr", "add", "10.0.0.98/24", "dev", "eth0"]);
    ip(&["-n", &fake.0, "link", "set", "eth0", "up"]);
    // Exactly what upstream's udp backend writes: PublicIP only, no BackendType.
    etcd_put(
        &lab.state,
        &format!("/coreos.com/network/subnets/10.244.{p}.0-24"),
        r#"{"PublicIP":"10.0.0.99","PublicIPv6":null}"#,
    )
    .unwrap();
    let node_ip: Ipv4Addr = node.ip.parse().unwrap();
    let ns = fake.0.clone();
    let (reply, stranger_reply) = in_ns(&ns, move || {
        let sock = UdpSocket::bind("10.0.0.99:8285").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 2048];
        // Until the node has programmed the new peer, requests may go unanswered: retry.
        let mut reply = None;
        for i in 0..20 {
            sock.send_to(
                &echo_request(Ipv4Addr::new(10, 244, p, 5), pod, i),
                (node_ip, 8285),
            )
            .unwrap();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                reply = Some((buf[..n].to_vec(), from));
                break;
            }
        }
        // A sender that is no peer (10.0.0.98) gets nothing back.
        let stranger = UdpSocket::bind("10.0.0.98:8285").unwrap();
        stranger
            .set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        stranger
            .send_to(
                &echo_request(Ipv4Addr::new(10, 244, p, 6), pod, 99),
                (node_ip, 8285),
            )
            .unwrap();
        let stranger_reply =
            stranger.recv_from(&mut buf).is_ok() || sock.recv_from(&mut buf).is_ok();
        (reply, stranger_reply)
    });
    let (pkt, from) = reply.expect("the pod answered through the udp backend");
    assert_eq!(from.to_string(), format!("{node_ip}:8285"));
    // The UDP payload is the raw IPv4 packet, nothing before it: an echo reply to our pod.
    let h = parse_ipv4(&pkt).expect("payload is an IPv4 packet");
    assert_eq!(h.total_len, pkt.len());
    assert_eq!(
        (h.src, h.dst, h.proto),
        (pod, Ipv4Addr::new(10, 244, p, 5), PROTO_ICMP)
    );
    assert_eq!(
        checksum(&pkt[..20]),
        0,
        "valid header checksum after the TTL decrement"
    );
    assert_eq!(pkt[20], 0, "ICMP echo reply");
    assert_eq!(&pkt[28..36], b"flannel!");
    assert!(h.ttl < 64, "TTL decremented on the way (got {})", h.ttl);
    assert!(!stranger_reply, "datagrams from a non-peer are dropped");
    let log = lab.state.nodes[1].log.clone();
    let seen = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("dropped udp datagrams from senders that are not peers")
    });
    assert!(seen.is_some(), "the drop is logged");

    // The lease goes: the node stops answering 10.0.0.99 (its peer table entry is gone).
    flannel_lab::cluster::etcd_del(
        &lab.state,
        &format!("/coreos.com/network/subnets/10.244.{p}.0-24"),
    )
    .unwrap();
    let ns = fake.0.clone();
    let silent = in_ns(&ns, move || {
        let sock = UdpSocket::bind("10.0.0.99:8285").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 2048];
        // A try is answered only by a reply carrying its own id: on a busy machine a reply
        // sent before the lease went can arrive after the next request (it would pass for
        // that one's answer, and the next for the next).
        (0..20u16).any(|i| {
            let id = 100 + i;
            sock.send_to(
                &echo_request(Ipv4Addr::new(10, 244, p, 5), pod, id),
                (node_ip, 8285),
            )
            .unwrap();
            let mut answered = false;
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                answered |= n >= 26 && buf[24..26] == id.to_be_bytes();
            }
            !answered
        })
    });
    assert!(
        silent,
        "the node still answers a peer whose lease was deleted"
    );
}

/// A UDP datagram from `src:4000` to `dst:9999` carrying `payload`, as a raw IPv4 packet.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (28 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    fix_ipv4_checksum(&mut p[..20]);
    p.extend_from_slice(&4000u16.to_be_bytes());
    p.extend_from_slice(&9999u16.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    p.extend_from_slice(payload);
    p
}

/// A UDP socket on port 9999 inside `ns`, collecting what arrives until dropped.
fn listener(ns: &str) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    flannel_testkit::netns::spawn_in_ns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:9999").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    ready_rx.recv().unwrap();
    rx
}

#[test]
fn spoofed_inner_packets_are_dropped_and_counted() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab();
    let p = lab.spare_octet(200);
    let node = &lab.state.nodes[1];
    let node_ip: Ipv4Addr = node.ip.parse().unwrap();
    let pod: Ipv4Addr = node.pods[0].ip.parse().unwrap();
    let other_pod: Ipv4Addr = lab.state.nodes[0].pods[0].ip.parse().unwrap();
    let peer = lab.on_switch("sp", "10.0.0.99/24");
    let victim = lab.on_switch("vi", "10.0.0.97/24");
    etcd_put(
        &lab.state,
        &format!("/coreos.com/network/subnets/10.244.{p}.0-24"),
        r#"{"PublicIP":"10.0.0.99","PublicIPv6":null}"#,
    )
    .unwrap();
    let at_pod = listener(&node.pods[0].netns);
    let at_victim = listener(&victim.0);
    // One socket for every send, made in the peer's namespace (it stays there): binding the
    // same address again and again races with forks of parallel tests holding the old one.
    let sock = in_ns(&peer.0, || UdpSocket::bind("10.0.0.99:8285").unwrap());
    let send = |inner: Vec<u8>| {
        sock.send_to(&inner, (node_ip, 8285)).unwrap();
    };
    // The legitimate packet first, until the node knows the new peer.
    let ok = eventually(Duration::from_secs(10), || {
        send(udp_packet(Ipv4Addr::new(10, 244, p, 5), pod, b"legit"));
        at_pod.recv_timeout(Duration::from_millis(200)).as_deref() == Ok("legit")
    });
    assert!(ok.is_some(), "the peer's own pod traffic must pass");
    // Relayed off the network, it would reach the victim (masqueraded by the node).
    send(udp_packet(
        Ipv4Addr::new(10, 244, p, 5),
        Ipv4Addr::new(10, 0, 0, 97),
        b"relay",
    ));
    // A source in another node's subnet: the peer impersonates that node's pod.
    send(udp_packet(other_pod, pod, b"spoofed"));
    // From outside the cluster (not masqueraded): allowed, as with vxlan.
    send(udp_packet(Ipv4Addr::new(192, 168, 7, 7), pod, b"outside"));
    assert!(
        at_victim.recv_timeout(Duration::from_millis(1500)).is_err(),
        "a packet for an address outside our subnet was relayed"
    );
    let mut got = Vec::new();
    while let Ok(m) = at_pod.recv_timeout(Duration::from_millis(500)) {
        got.push(m);
    }
    assert_eq!(got, ["outside"], "what reached the pod");
    let log = node.log.clone();
    let seen = eventually(Duration::from_secs(5), || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        l.contains("not for this node's subnet") && l.contains("source in another node's subnet")
    });
    assert!(
        seen.is_some(),
        "each drop reason is counted and logged:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
