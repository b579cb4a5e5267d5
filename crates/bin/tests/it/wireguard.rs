//! The wireguard backend in the lab: every pair in both families through our userspace
//! WireGuard, nothing of the pods readable on the wire, the key file, peers that follow the
//! leases, a restart that talks again at once, and an independent WireGuard (Debian's
//! `wireguard-go`, set up with `wg` from a lease as an upstream node would be) on the switch.

use crate::common;

use common::lab::Lab;
use common::{eventually, ip, Netns, Proc, TempDir};
use flannel_lab::cluster::{etcd_del, etcd_get, etcd_put, lease_key, stop_flanneld};
use flannel_lab::{IpFamily, LabSpec, LabState};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn spec(family: IpFamily) -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 1,
        backend: "wireguard".into(),
        ip_family: family,
        ..LabSpec::default()
    }
}

/// A lab of the test's own, for a test that changes something.
fn lab(family: IpFamily) -> Lab {
    Lab::up_with(spec(family))
}

/// Runs `wg` with `args` and `input` on stdin; its output.
fn wg(args: &[&str], input: &str) -> String {
    let mut c = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wg (wireguard-tools) is installed");
    use std::io::Write;
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "wg {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn key_file(state: &LabState, node: &str) -> std::path::PathBuf {
    state.state_dir.join(node).join("wgkey")
}

/// The lease of node `n` as JSON (its key names both subnets in a dual-stack lab).
fn node_lease(state: &LabState, n: &flannel_lab::state::NodeState) -> serde_json::Value {
    let key = flannel_core::subnet_key::SubnetKey::new(
        n.subnet.parse().unwrap(),
        (!n.subnet6.is_empty()).then(|| n.subnet6.parse().unwrap()),
    );
    lease_at(state, &key.to_string())
}

/// The lease at `subnets/<key>` as JSON.
fn lease_at(state: &LabState, key: &str) -> serde_json::Value {
    let key = format!("{}/subnets/{key}", flannel_lab::names::ETCD_PREFIX);
    let v = etcd_get(state, &key).unwrap();
    serde_json::from_str(v.trim()).unwrap_or_else(|e| panic!("lease {v:?}: {e}"))
}

fn ping(ns: &str, dst: &str, pattern: Option<&str>) -> bool {
    let mut args = vec!["netns", "exec", ns, "ping", "-c", "1", "-W", "1"];
    if let Some(p) = pattern {
        args.extend(["-p", p]);
    }
    args.push(dst);
    Command::new("ip")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const MARKER: &str = "f1a22e15ec2e7f1a22e15ec2e7c0ffee";

#[test]
fn every_pair_talks_in_both_families_and_the_wire_shows_no_pod() {
    if common::skip_without_root() {
        return;
    }
    // It only pings and listens: the lab doctor's healthy-node check reads too.
    let lab = Lab::shared(spec(IpFamily::Dual));
    let m = flannel_lab::ping::ping_all(&lab.state);
    assert!(m.all_ok(), "{}", m.render());
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);

    // Devices as upstream makes them: MTU − 80, the subnet's address, one route per network.
    for (dev, addr, route, v6) in [
        (
            "flannel-wg",
            format!("inet {}/32", a.subnet.trim_end_matches("/24")),
            "10.244.0.0/16 dev flannel-wg",
            false,
        ),
        (
            "flannel-wg-v6",
            format!("inet6 {}/128", a.subnet6.trim_end_matches("/64")),
            "fd00:10:244::/56 dev flannel-wg-v6",
            true,
        ),
    ] {
        let link = ip(&["-n", &a.netns, "-d", "link", "show", dev]);
        assert!(
            link.contains("mtu 1420") && link.contains("tun type tun"),
            "{link}"
        );
        assert!(
            ip(&["-n", &a.netns, "addr", "show", dev]).contains(&addr),
            "{dev} lacks {addr}"
        );
        let routes = ip(&["-n", &a.netns, if v6 { "-6" } else { "-4" }, "route"]);
        assert!(routes.contains(route), "{routes}");
    }
    let env = std::fs::read_to_string(&a.subnet_file).unwrap();
    assert!(env.contains("FLANNEL_MTU=1420"), "{env}");

    // The key file: 0400, and its public key (as `wg pubkey` computes it) in the lease, with
    // the port of each family.
    let kf = key_file(&lab.state, &a.name);
    let mode = std::fs::metadata(&kf).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400, "{}", kf.display());
    let public = wg(&["pubkey"], &std::fs::read_to_string(&kf).unwrap());
    let l = node_lease(&lab.state, a);
    assert_eq!(l["BackendType"], "wireguard", "{l}");
    assert_eq!(l["BackendData"]["PublicKey"], public.as_str(), "{l}");
    assert_eq!(l["BackendData"]["Port"], 51820, "{l}");
    assert_eq!(l["BackendV6Data"]["PublicKey"], public.as_str(), "{l}");
    assert_eq!(l["BackendV6Data"]["Port"], 51821, "{l}");

    // A capture of everything on b's underlay while a's pod pings b's pod with a marker, in
    // both families: WireGuard datagrams cross, but neither the marker nor a pod address.
    let pcap = TempDir::new("wgcap");
    let file = pcap.path().join("eth0.pcap");
    let mut dump = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &b.netns,
                "tcpdump",
                "-i",
                "eth0",
                "--immediate-mode",
                "-U",
                "-n",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // tcpdump says "listening on eth0" once it captures.
    let mut err = std::io::BufReader::new(dump.0.stderr.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0) > 0
        && !line.contains("listening on")
    {
        line.clear();
    }
    let (src, dst) = (&a.pods[0], &b.pods[0]);
    // A fresh lab's IPv6 neighbours settle (duplicate address detection on cni0) in a second
    // or two; the capture wants pings that get through.
    let v6_ready = eventually(Duration::from_secs(5), || ping(&src.netns, &dst.ip6, None));
    assert!(v6_ready.is_some(), "IPv6 pod to pod");
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        assert!(
            ping(&src.netns, &dst.ip, Some(MARKER)),
            "v4 ping with the marker"
        );
        assert!(
            ping(&src.netns, &dst.ip6, Some(MARKER)),
            "v6 ping with the marker"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    // SIGINT: tcpdump writes out what it holds and ends.
    let _ = Command::new("kill")
        .args(["-INT", &dump.0.id().to_string()])
        .status();
    let ended = eventually(Duration::from_secs(5), || {
        dump.0.try_wait().is_ok_and(|s| s.is_some())
    });
    assert!(ended.is_some(), "tcpdump did not end on SIGINT");
    let bytes = std::fs::read(&file).unwrap();
    let text = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("{}.51820 > {}.51820: UDP", a.ip, b.ip))
            && text.contains(&format!("{}.51821 > {}.51821: UDP", a.ip6, b.ip6)),
        "the capture holds our WireGuard datagrams in both families:\n{text}"
    );
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let marker: Vec<u8> = (0..MARKER.len() / 2)
        .map(|i| u8::from_str_radix(&MARKER[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        !find(&marker),
        "the marker payload crossed the underlay in clear"
    );
    for pod in [src, dst] {
        let v4: std::net::Ipv4Addr = pod.ip.parse().unwrap();
        let v6: std::net::Ipv6Addr = pod.ip6.parse().unwrap();
        assert!(!find(&v4.octets()), "pod address {v4} on the underlay");
        assert!(!find(&v6.octets()), "pod address {v6} on the underlay");
    }
}

#[test]
fn a_restarted_node_keeps_its_key_and_talks_at_once_and_peers_follow_leases() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab(IpFamily::V4);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    assert!(ping(&a.pods[0].netns, &b.pods[0].ip, None));
    let key_before = std::fs::read_to_string(key_file(&lab.state, &b.name)).unwrap();
    let lease_before = node_lease(&lab.state, b);

    // Restart b: its device goes with the process; the new one greets every peer at start,
    // so the first ping after "ready" (one try, 1 s) gets through.
    let before = common::lab::ready_count(b);
    stop_flanneld(b).unwrap();
    assert!(
        !ping(&a.pods[0].netns, &b.pods[0].ip, None),
        "b's device is gone while it is down"
    );
    let _b = common::lab::start_until_ready(b, before);
    let since_ready = std::time::Instant::now();
    let back = eventually(Duration::from_secs(1), || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &a.pods[0].netns,
                "ping",
                "-c",
                "1",
                "-W",
                "0.2",
                &b.pods[0].ip,
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(
        back.is_some() && since_ready.elapsed() <= Duration::from_millis(1300),
        "a's pod must reach b's pod within 1 s of b being ready (took {:?})",
        since_ready.elapsed()
    );
    assert!(ping(&b.pods[0].netns, &a.pods[0].ip, None));
    assert_eq!(
        std::fs::read_to_string(key_file(&lab.state, &b.name)).unwrap(),
        key_before
    );
    assert_eq!(
        node_lease(&lab.state, b)["BackendData"],
        lease_before["BackendData"]
    );

    // Peers follow the leases: a made-up node's lease adds a peer on a, its removal takes it
    // away (flannel_wireguard_peers, as an operator reads it).
    let peers = |n| {
        flannel_lab::metrics::scrape(n)
            .ok()
            .and_then(|m| m.get("flannel_wireguard_peers").copied())
    };
    assert_eq!(peers(a), Some(1.0));
    let o = lab.spare_octet(200);
    let key = wg(&["pubkey"], &wg(&["genkey"], ""));
    let subnet = format!("10.244.{o}.0/24");
    etcd_put(
        &lab.state,
        &lease_key(&subnet),
        &format!(r#"{{"PublicIP":"10.0.0.97","BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51820}}}}"#),
    )
    .unwrap();
    let added = eventually(Duration::from_secs(5), || peers(a) == Some(2.0));
    assert!(
        added.is_some(),
        "the new lease's peer was not added: {:?}",
        peers(a)
    );
    etcd_del(&lab.state, &lease_key(&subnet)).unwrap();
    let removed = eventually(Duration::from_secs(5), || peers(a) == Some(1.0));
    assert!(
        removed.is_some(),
        "the peer stayed after its lease went: {:?}",
        peers(a)
    );
    assert!(
        ping(&a.pods[0].netns, &b.pods[0].ip, None),
        "the other peer is untouched"
    );
}

/// An upstream node on the lab's switch: `wireguard-go` with device `dev` configured by `wg`
/// as upstream's flanneld configures its kernel device (§5.4): private key, port 51820, one
/// peer per lease, address subnet/32, a route to the network.
struct UpstreamNode {
    ns: Netns,
    dev: String,
    _go: Proc,
    dir: TempDir,
}

impl UpstreamNode {
    fn new(lab: &Lab, addr: &str, subnet_ip: &str) -> Self {
        let ns = lab.on_switch("wg", &format!("{addr}/24"));
        let dev = format!("wgu{}", std::process::id() % 100_000);
        let go = Command::new("ip")
            .args(["netns", "exec", &ns.0, "wireguard-go", "-f", &dev])
            // wireguard-go refuses to run where the kernel could have WireGuard.
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go is installed");
        let go = Proc(go);
        let up = eventually(Duration::from_secs(5), || {
            Command::new("ip")
                .args(["-n", &ns.0, "link", "show", &dev])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(up.is_some(), "wireguard-go made no device {dev}");
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{subnet_ip}/32"),
            "dev",
            &dev,
        ]);
        ip(&["-n", &ns.0, "link", "set", &dev, "up"]);
        ip(&["-n", &ns.0, "route", "add", "10.244.0.0/16", "dev", &dev]);
        UpstreamNode {
            ns,
            dev,
            _go: go,
            dir: TempDir::new("wgup"),
        }
    }

    /// `wg set` as upstream's flanneld would: our key, our port, a peer per lease of ours.
    fn configure(&self, private: &str, lab: &LabState) {
        let kf = self.dir.path().join("key");
        std::fs::write(&kf, private).unwrap();
        let mut args: Vec<String> = vec![
            "set".into(),
            self.dev.clone(),
            "private-key".into(),
            kf.display().to_string(),
            "listen-port".into(),
            "51820".into(),
        ];
        for n in &lab.nodes {
            let l = node_lease(lab, n);
            let key = l["BackendData"]["PublicKey"].as_str().unwrap().to_string();
            let port = l["BackendData"]["Port"].as_u64().unwrap();
            args.extend([
                "peer".into(),
                key,
                "endpoint".into(),
                format!("{}:{port}", l["PublicIP"].as_str().unwrap()),
                "allowed-ips".into(),
                n.subnet.clone(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut full = vec!["netns", "exec", &self.ns.0, "wg"];
        full.extend(args);
        let o = Command::new("ip").args(&full).output().unwrap();
        assert!(
            o.status.success(),
            "wg set: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl UpstreamNode {
    /// What a failure needs: both sides' view of the handshake.
    fn diagnose(&self, ours: &flannel_lab::state::NodeState) -> String {
        let shown = Command::new("ip")
            .args(["netns", "exec", &self.ns.0, "wg", "show", &self.dev, "dump"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let metrics: Vec<String> = flannel_lab::metrics::scrape(ours)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.contains("wireguard"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let log = std::fs::read_to_string(&ours.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        format!(
            "wireguard-go's device:\n{shown}\nour metrics:\n{}\nour log (last lines first):\n{}",
            metrics.join("\n"),
            tail.join("\n")
        )
    }
}

impl Drop for UpstreamNode {
    /// SIGTERM first: wireguard-go removes its UAPI socket under /var/run/wireguard then.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self._go.0.id().to_string()])
            .status();
        let _ = eventually(Duration::from_secs(2), || {
            self._go.0.try_wait().is_ok_and(|s| s.is_some())
        });
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.dev));
    }
}

#[test]
fn wireguard_go_configured_from_our_leases_talks_with_us_but_not_with_the_wrong_key() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab(IpFamily::V4);
    let o = lab.spare_octet(210);
    let subnet = format!("10.244.{o}.0/24");
    let node_ip = format!("10.244.{o}.0");
    let up = UpstreamNode::new(&lab, "10.0.0.96", &node_ip);
    // The lease publishes K1; the node holds K2 first.
    let k1 = wg(&["genkey"], "");
    let k2 = wg(&["genkey"], "");
    let pub1 = wg(&["pubkey"], &k1);
    etcd_put(
        &lab.state,
        &lease_key(&subnet),
        &format!(r#"{{"PublicIP":"10.0.0.96","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{pub1}","Port":51820}}}}"#),
    )
    .unwrap();
    up.configure(&k2, &lab.state);
    let pod = &lab.state.nodes[0].pods[0];
    let peer_known = eventually(Duration::from_secs(5), || {
        flannel_lab::metrics::scrape(&lab.state.nodes[0])
            .ok()
            .and_then(|m| m.get("flannel_wireguard_peers").copied())
            == Some(2.0)
    });
    assert!(
        peer_known.is_some(),
        "our node did not take the upstream node's lease"
    );
    for _ in 0..2 {
        assert!(
            !ping(&pod.netns, &node_ip, None),
            "a node holding another key than it publishes was reached"
        );
        assert!(
            !ping(&up.ns.0, &pod.ip, None),
            "a node holding another key than it publishes got through"
        );
    }
    // With the key it publishes, both ways work, to and from every node of ours.
    up.configure(&k1, &lab.state);
    // The wrong-key pings left both sides with a handshake sent and unanswered; WireGuard
    // sends the next one only after REKEY_TIMEOUT (5 s, plus up to 1/3 s of jitter in
    // wireguard-go), so the first success may take two of those on a busy machine.
    for n in &lab.state.nodes {
        let p = &n.pods[0];
        let there = eventually(Duration::from_secs(15), || ping(&up.ns.0, &p.ip, None));
        assert!(
            there.is_some(),
            "wireguard-go's node cannot reach {}\n{}",
            p.ip,
            up.diagnose(n)
        );
        assert!(
            ping(&p.netns, &node_ip, None),
            "{} cannot reach wireguard-go's node",
            p.ip
        );
    }
    let shown = Command::new("wg")
        .args(["show", &up.dev, "latest-handshakes"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(
        shown.lines().filter(|l| !l.ends_with("\t0")).count(),
        lab.state.nodes.len(),
        "{shown}"
    );
}

#[test]
fn a_single_device_mode_carries_both_families_over_the_ipv6_underlay() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab(IpFamily::Dual);
    // Upstream's `Mode: ipv6`: one device for both families, peers reached over IPv6. The
    // network config is read at start: write it, restart every flanneld.
    let conf = flannel_lab::names::net_conf("wireguard", false, IpFamily::Dual, false).replace(
        r#""Type": "wireguard""#,
        r#""Type": "wireguard", "Mode": "ipv6""#,
    );
    assert!(conf.contains("\"Mode\""), "{conf}");
    etcd_put(
        &lab.state,
        &format!("{}/config", flannel_lab::names::ETCD_PREFIX),
        &conf,
    )
    .unwrap();
    let mut running = Vec::new();
    for n in &lab.state.nodes {
        running.push(common::lab::restart_flanneld(n));
    }
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let links = ip(&["-n", &a.netns, "link", "show"]);
    assert!(
        links.contains("flannel-wg:") && !links.contains("flannel-wg-v6"),
        "{links}"
    );
    let v6routes = ip(&["-n", &a.netns, "-6", "route"]);
    assert!(
        v6routes.contains("fd00:10:244::/56 dev flannel-wg"),
        "{v6routes}"
    );
    let both = eventually(Duration::from_secs(5), || {
        ping(&a.pods[0].netns, &b.pods[0].ip, None) && ping(&a.pods[0].netns, &b.pods[0].ip6, None)
    });
    assert!(both.is_some(), "both families through the one device");
    // The IPv4 pod traffic crossed the underlay in IPv6 datagrams to the peer's port.
    let l = node_lease(&lab.state, b);
    assert_eq!(
        l["BackendV6Data"]["Port"], 51820,
        "one device listens on ListenPort: {l}"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &a.netns, "ss", "-u", "-a", "-n"])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&out.stdout);
    assert!(ss.contains(":51820") && !ss.contains(":51821"), "{ss}");
    let m = flannel_lab::metrics::scrape(a).unwrap();
    assert_eq!(m.get("flannel_wireguard_peers"), Some(&1.0));
}

#[test]
fn a_deleted_device_comes_back_with_its_peers() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab(IpFamily::V4);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    assert!(ping(&a.pods[0].netns, &b.pods[0].ip, None));
    let index = |ns: &str| ip(&["-n", ns, "-o", "link", "show", "flannel-wg"]);
    let before = index(&b.netns);
    ip(&["-n", &b.netns, "link", "del", "flannel-wg"]);
    let back = eventually(Duration::from_secs(3), || {
        Command::new("ip")
            .args(["-n", &b.netns, "link", "show", "flannel-wg"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(back.is_some(), "flannel-wg was not created again");
    assert_ne!(index(&b.netns), before, "a new device");
    let talks = eventually(Duration::from_secs(3), || {
        ping(&a.pods[0].netns, &b.pods[0].ip, None)
    });
    assert!(talks.is_some(), "pods talk again through the new device");
    assert!(ip(&["-n", &b.netns, "route"]).contains("10.244.0.0/16 dev flannel-wg"));
    let m = flannel_lab::metrics::scrape(b).unwrap();
    assert!(
        m.get("flannel_repairs_total{kind=\"device\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "the device counts as a repair: {m:?}"
    );
}

#[test]
fn kubernetes_mode_publishes_the_key_in_the_node_annotations() {
    if common::skip_without_root() {
        return;
    }
    let lab = Lab::up_with(LabSpec {
        datastore: flannel_lab::cluster::Datastore::Kube,
        nodes: 2,
        pods_per_node: 1,
        backend: "wireguard".into(),
        backend_set: true,
        ip_family: IpFamily::Dual,
        ..LabSpec::default()
    });
    let s = &lab.state;
    let m = flannel_lab::ping::ping_all(s);
    assert!(m.all_ok(), "{}", m.render());
    let nodes: serde_json::Value = serde_json::from_str(
        &flannel_lab::cluster::kubectl(s, &["get", "nodes", "-o", "json"]).unwrap(),
    )
    .unwrap();
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap();
        let node = s.nodes.iter().find(|x| x.name == name).unwrap();
        let a = &n["metadata"]["annotations"];
        assert_eq!(
            a["flannel.alpha.coreos.com/backend-type"], "wireguard",
            "{a}"
        );
        // The node's own /run/flannel/wgkey (the DaemonSet pod's view).
        let kf =
            flannel_lab::nodefs::host_path(&node.binds, std::path::Path::new("/run/flannel/wgkey"));
        let public = wg(&["pubkey"], &std::fs::read_to_string(&kf).unwrap());
        for (key, port) in [("backend-data", 51820), ("backend-v6-data", 51821)] {
            let d: serde_json::Value = serde_json::from_str(
                a[format!("flannel.alpha.coreos.com/{key}")]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(d["PublicKey"], public.as_str(), "{name} {key}: {d}");
            assert_eq!(d["Port"], port, "{name} {key}: {d}");
        }
    }
}

/// The issue's probe: valid handshake initiations (mac1 from the public key node1 publishes
/// in its lease, as anyone who reads the datastore can make them) flooded at node1 from an
/// address on the underlay while a pod pings a pod on node1 every 10 ms: under 1 % of the
/// pings are lost, and the flood is counted (cookies, per-source limit, full queue).
#[test]
fn a_handshake_flood_does_not_starve_the_pods() {
    if common::skip_without_root() {
        return;
    }
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};
    let lab = lab(IpFamily::V4);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let talking = eventually(Duration::from_secs(10), || {
        ping(&a.pods[0].netns, &b.pods[0].ip, None)
    });
    assert!(talking.is_some(), "the pods talk before the flood");
    let lease = node_lease(&lab.state, b);
    let key = flannel_backend::wg::config::decode_key(
        lease["BackendData"]["PublicKey"]
            .as_str()
            .expect("a public key"),
    )
    .unwrap();
    // 2000 distinct initiations, made before the flood so that it goes at full speed.
    let mut attacker = Tunn::new(
        StaticSecret::from([0x42u8; 32]),
        PublicKey::from(key),
        None,
        None,
        1,
        None,
    );
    let mut buf = [0u8; 256];
    let inits: Vec<Vec<u8>> = (0..2000)
        .filter_map(
            |_| match attacker.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(m) => Some(m.to_vec()),
                _ => None,
            },
        )
        .collect();
    let attacker_ns = lab.on_switch("hsf", "10.0.0.99/24");
    let target: std::net::SocketAddr = format!("{}:51820", b.ip).parse().unwrap();
    let flood = flannel_testkit::netns::spawn_in_ns(&attacker_ns.0, move || {
        // Several source ports: every worker of node1 gets its share.
        let socks: Vec<std::net::UdpSocket> = (0..8)
            .map(|_| std::net::UdpSocket::bind("10.0.0.99:0").unwrap())
            .collect();
        let t0 = std::time::Instant::now();
        let mut sent = 0u64;
        while t0.elapsed() < Duration::from_secs(7) {
            for (i, m) in inits.iter().enumerate() {
                let _ = socks[i % socks.len()].send_to(m, target);
                sent += 1;
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a.pods[0].netns,
            "ping",
            "-q",
            "-c",
            "500",
            "-i",
            "0.01",
            "-W",
            "1",
        ])
        .arg(&b.pods[0].ip)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let sent = flood.join().unwrap();
    let received: u32 = out
        .split(" received")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let loss = 100.0 * f64::from(500 - received) / 500.0;
    println!(
        "measured: {sent} initiations in 7 s ({:.0}/s); ping: {out}",
        sent as f64 / 7.0
    );
    assert!(
        loss < 1.0,
        "{loss:.1} % of the pings lost under the flood ({sent} initiations):\n{out}"
    );
    let metrics = common::ctl::ctl(b, &["metrics"]).1;
    let dropped = |reason: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "flannel_wireguard_drops_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let refused = dropped("under_load_cookie")
        + dropped("handshake_rate_limited")
        + dropped("handshake_queue_full");
    assert!(
        refused > 0.5 * sent as f64 - 1000.0,
        "{refused} of {sent} refused:\n{metrics}"
    );
}
