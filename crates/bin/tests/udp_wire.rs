//! The udp backend in the lab, and on the wire against an "upstream node": a namespace on the
//! lab's switch that speaks upstream's format by hand (a raw IPv4 packet as the UDP payload,
//! port 8285), byte by byte.

mod common;

use common::{bin_dir, eventually, ip, require_root, unique, Netns, TempDir};
use flannel_backend::udp::packet::{checksum, fix_ipv4_checksum, parse_ipv4, PROTO_ICMP};
use flannel_lab::cluster::etcd_put;
use flannel_lab::{down, up, LabSpec, LabState};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

struct Lab {
    state: LabState,
    name: String,
    root: TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = down(&self.name, self.root.path());
    }
}

fn lab() -> Lab {
    require_root();
    let root = TempDir::new("udp");
    let name = unique("u");
    let spec = LabSpec {
        lab: name.clone(),
        nodes: 2,
        pods_per_node: 1,
        backend: "udp".into(),
        state_root: root.path().to_path_buf(),
        bin_dir: bin_dir(),
        flanneld_args: vec!["--iptables-resync=1".into()],
        ..LabSpec::default()
    };
    match up(&spec) {
        Ok(state) => Lab { state, name, root },
        Err(e) => {
            let _ = down(&name, root.path());
            panic!("lab up failed: {e:#}");
        }
    }
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

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns(2) on this thread only, with an open namespace fd.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn udp_lab_pings_and_sets_up_flannel0_like_upstream() {
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
    let lab = lab();
    let node = &lab.state.nodes[1];
    let pod = node.pods[0].ip.parse::<Ipv4Addr>().unwrap();
    // An "upstream node" at 10.0.0.99 on the lab's switch, holding 10.244.200.0/24.
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
        "/coreos.com/network/subnets/10.244.200.0-24",
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
                &echo_request(Ipv4Addr::new(10, 244, 200, 5), pod, i),
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
                &echo_request(Ipv4Addr::new(10, 244, 200, 6), pod, 99),
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
        (pod, Ipv4Addr::new(10, 244, 200, 5), PROTO_ICMP)
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
}
