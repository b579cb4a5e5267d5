//! The `flannel` CNI plugin with Debian's real `bridge`, `host-local` and `portmap` plugins, in
//! namespaces the test makes: ADD, CHECK, DEL, double DEL, failures that leave nothing behind.

use crate::common;

use common::{bin_dir, ip, require_root, Netns, TempDir};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

struct Setup {
    node: Netns,
    pod: Netns,
    dir: TempDir,
}

impl Setup {
    fn new(env: Option<&str>) -> Self {
        require_root();
        let s = Setup {
            node: Netns::new("n"),
            pod: Netns::new("p"),
            dir: TempDir::new("cni"),
        };
        if let Some(e) = env {
            std::fs::write(s.dir.path().join("subnet.env"), e).unwrap();
        }
        s
    }

    fn conf(&self) -> Value {
        self.conf_v("1.0.0")
    }

    fn conf_v(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "cni-flannel",
            "type": "flannel",
            "subnetFile": self.dir.path().join("subnet.env"),
            "dataDir": self.dir.path().join("data"),
            "ipam": {"dataDir": self.dir.path().join("ipam")}
        })
    }

    fn stored(&self) -> std::path::PathBuf {
        self.dir.path().join("data").join(&self.pod.0)
    }

    /// Runs the plugin in the node namespace for the test's pod; returns (exit ok, stdout JSON or Null).
    fn run(&self, command: &str, conf: &Value, netns: &str) -> (bool, Value) {
        self.run_as(&self.pod.0, command, conf, netns)
    }

    fn run_as(&self, container: &str, command: &str, conf: &Value, netns: &str) -> (bool, Value) {
        let cni_path = format!("{}:/usr/lib/cni", bin_dir().display());
        let (ok, v, _) = self.invoke(container, command, conf, netns, &cni_path);
        (ok, v)
    }

    /// The plugin with every CNI variable given; returns (exit ok, stdout JSON or Null, stderr).
    fn invoke(
        &self,
        container: &str,
        command: &str,
        conf: &Value,
        netns: &str,
        cni_path: &str,
    ) -> (bool, Value, String) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node.0])
            .arg(bin_dir().join("flannel"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout not JSON ({e}): {text}"))
        };
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), v, stderr)
    }
}

#[test]
fn add_check_del_and_double_del_with_real_bridge_and_host_local() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let (ok, result) = s.run("ADD", &s.conf(), &s.pod.path());
    assert!(ok, "ADD failed: {result}");
    assert_eq!(result["ips"][0]["address"], "10.1.17.2/24");
    assert_eq!(result["ips"][0]["gateway"], "10.1.17.1");

    // The stored delegate config is exactly what upstream stores (plus our ipam dataDir).
    let stored: Value = serde_json::from_slice(&std::fs::read(s.stored()).unwrap()).unwrap();
    let want = json!({
        "cniVersion": "1.0.0",
        "ipMasq": false,
        "ipam": {"dataDir": s.dir.path().join("ipam"), "ranges": [[{"subnet": "10.1.17.0/24"}]], "routes": [{"dst": "10.1.0.0/16"}], "type": "host-local"},
        "isGateway": true,
        "mtu": 1472,
        "name": "cni-flannel",
        "type": "bridge"
    });
    assert_eq!(stored, want);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(s.stored()).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // What a user checks: the pod has its address and MTU, the node has cni0 as gateway.
    let pod_addr = ip(&["-n", &s.pod.0, "addr", "show", "eth0"]);
    assert!(
        pod_addr.contains("inet 10.1.17.2/24") && pod_addr.contains("mtu 1472"),
        "{pod_addr}"
    );
    assert!(ip(&["-n", &s.pod.0, "route"]).contains("10.1.0.0/16 via 10.1.17.1 dev eth0"));
    assert!(ip(&["-n", &s.node.0, "addr", "show", "cni0"]).contains("inet 10.1.17.1/24"));

    let mut check = s.conf();
    check["prevResult"] = result.clone();
    let (ok, out) = s.run("CHECK", &check, &s.pod.path());
    assert!(ok, "CHECK failed: {out}");
    let mut old = s.conf_v("0.3.1");
    old["prevResult"] = result.clone();
    let (ok, out) = s.run("CHECK", &old, &s.pod.path());
    assert!(
        !ok && out["code"] == 1,
        "CHECK needs spec 0.4.0 or later: {out}"
    );
    // The node got another subnet since the pod was added: CHECK says so.
    std::fs::write(
        s.dir.path().join("subnet.env"),
        SUBNET_ENV.replace("10.1.17.1", "10.1.18.1"),
    )
    .unwrap();
    let (ok, out) = s.run("CHECK", &check, &s.pod.path());
    assert!(
        !ok && out["msg"]
            .as_str()
            .unwrap()
            .contains("changed from 10.1.17.0/24 to 10.1.18.0/24"),
        "{out}"
    );

    // CHECK looks inside the pod: a missing address is reported.
    std::fs::write(s.dir.path().join("subnet.env"), SUBNET_ENV).unwrap();
    ip(&["-n", &s.pod.0, "addr", "del", "10.1.17.2/24", "dev", "eth0"]);
    let (ok, out) = s.run("CHECK", &check, &s.pod.path());
    assert!(
        !ok && out["msg"]
            .as_str()
            .unwrap()
            .contains("lacks address 10.1.17.2/24"),
        "{out}"
    );

    let (ok, out) = s.run("DEL", &s.conf(), &s.pod.path());
    assert!(ok, "DEL failed: {out}");
    assert!(!s.stored().exists(), "DEL removes the stored config");
    assert!(
        !ip(&["-n", &s.pod.0, "link"]).contains("eth0"),
        "pod interface gone"
    );
    let (ok, out) = s.run("DEL", &s.conf(), &s.pod.path());
    assert!(ok, "second DEL must succeed: {out}");
}

#[test]
fn missing_subnet_env_is_a_cni_error_and_stores_nothing() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(None);
    let mut conf = s.conf();
    conf["subnetFileWait"] = json!(1);
    let started = std::time::Instant::now();
    let (ok, err) = s.run("ADD", &conf, &s.pod.path());
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "waited for subnet.env first"
    );
    assert!(
        err["msg"].as_str().unwrap().ends_with("(waited 1 s)"),
        "{err}"
    );
    assert!(!ok);
    assert_eq!(err["code"], 11);
    assert_eq!(err["cniVersion"], "1.0.0");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("failed to load flannel 'subnet.env' file: open ")
            && msg.contains("Check the flannel pod log"),
        "{msg}"
    );
    assert!(!s.stored().exists());
}

#[test]
fn a_missing_pod_namespace_stores_nothing_and_is_named_in_the_error() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let (ok, err) = s.run("ADD", &s.conf(), "/run/netns/no-such-namespace");
    assert!(!ok);
    assert!(
        err["msg"].as_str().unwrap().contains("no-such-namespace"),
        "{err}"
    );
    assert!(
        !s.stored().exists(),
        "no config left behind after a failed ADD"
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some("FLANNEL_MTU=1450\n"));
    let (ok, err) = s.run("ADD", &s.conf(), &s.pod.path());
    assert!(!ok);
    assert!(err["msg"].as_str().unwrap().ends_with("is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ"), "{err}");
    let mut conf = s.conf();
    conf["delegate"] = json!({"name": "mine"});
    std::fs::write(s.dir.path().join("subnet.env"), SUBNET_ENV).unwrap();
    let (ok, err) = s.run("ADD", &conf, &s.pod.path());
    assert!(!ok);
    assert_eq!(
        err["msg"],
        "'delegate' dictionary must not have 'name' field, it'll be set by flannel"
    );
    assert!(!s.stored().exists());
}

#[test]
fn version_lists_every_spec_version() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(None);
    let (ok, v) = s.run("VERSION", &json!({"cniVersion": "1.0.0"}), "");
    assert!(ok);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn first_in_a_conflist_followed_by_portmap() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let list = flannel_lab::cni_exec::tutorial_conflist(s.dir.path());
    let cni_path = format!("{}:/usr/lib/cni", bin_dir().display());
    let netns = s.pod.path();
    let inv = flannel_lab::cni_exec::Invocation {
        binds: &[],
        node_ns: &s.node.0,
        container_id: &s.pod.0,
        netns_path: &netns,
        ifname: "eth0",
        cni_path: &cni_path,
    };
    let result = flannel_lab::cni_exec::add(&list, &inv).unwrap();
    assert_eq!(
        flannel_lab::cni_exec::result_ipv4(&result).as_deref(),
        Some("10.1.17.2")
    );
    let stored: Value = serde_json::from_slice(
        &std::fs::read(s.dir.path().join("cni/flannel").join(&s.pod.0)).unwrap(),
    )
    .unwrap();
    assert_eq!(stored["name"], "cbr0");
    assert_eq!(stored["hairpinMode"], true);
    assert_eq!(stored["isDefaultGateway"], true);
    flannel_lab::cni_exec::del(&list, &inv, Some(&result)).unwrap();
    assert!(!s.dir.path().join("cni/flannel").join(&s.pod.0).exists());
}

fn ranges(stored: &Value) -> Value {
    stored["ipam"]["ranges"].clone()
}

#[test]
fn ipv6_only_dual_stack_and_two_networks_with_real_delegates() {
    if common::skip_without_root() {
        return;
    }
    let cases: [(&str, Value, Value, &[&str]); 3] = [
        (
            "FLANNEL_IPV6_NETWORK=fd00:1::/48\nFLANNEL_IPV6_SUBNET=fd00:1:0:17::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
            json!([[{"subnet": "fd00:1:0:17::/64"}]]),
            json!([{"dst": "fd00:1::/48"}]),
            &["fd00:1:0:17::2/64"],
        ),
        (
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fd00:1::/48\nFLANNEL_IPV6_SUBNET=fd00:1:0:17::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
            json!([[{"subnet": "10.1.17.0/24"}], [{"subnet": "fd00:1:0:17::/64"}]]),
            json!([{"dst": "10.1.0.0/16"}, {"dst": "fd00:1::/48"}]),
            &["10.1.17.2/24", "fd00:1:0:17::2/64"],
        ),
        (
            "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
            json!([[{"subnet": "10.1.17.0/24"}]]),
            json!([{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}]),
            &["10.1.17.2/24"],
        ),
    ];
    for (env, want_ranges, want_routes, want_addrs) in cases {
        let s = Setup::new(Some(env));
        let (ok, result) = s.run("ADD", &s.conf(), &s.pod.path());
        assert!(ok, "ADD failed for {env:?}: {result}");
        let stored: Value = serde_json::from_slice(&std::fs::read(s.stored()).unwrap()).unwrap();
        assert_eq!(ranges(&stored), want_ranges, "{env:?}");
        assert_eq!(stored["ipam"]["routes"], want_routes, "{env:?}");
        assert_eq!(stored["ipMasq"], json!(!env.contains("IPMASQ=true")));
        let got: Vec<String> = result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, want_addrs, "{env:?}");
        let pod = ip(&["-n", &s.pod.0, "addr", "show", "eth0"]);
        for a in want_addrs {
            assert!(pod.contains(a), "{a} not on the pod's eth0: {pod}");
        }
        if env.contains("192.168.0.0/16") {
            assert!(
                ip(&["-n", &s.pod.0, "route"]).contains("192.168.0.0/16 via 10.1.17.1 dev eth0")
            );
        }
        let (ok, out) = s.run("DEL", &s.conf(), &s.pod.path());
        assert!(ok, "DEL failed: {out}");
        assert!(!s.stored().exists());
    }
}

#[test]
fn user_ipam_routes_and_runtime_config_reach_the_delegate() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let mut conf = s.conf();
    conf["ipam"]["routes"] = json!([{"dst": "172.30.0.0/16"}]);
    conf["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let (ok, result) = s.run("ADD", &conf, &s.pod.path());
    assert!(ok, "{result}");
    let stored: Value = serde_json::from_slice(&std::fs::read(s.stored()).unwrap()).unwrap();
    assert_eq!(
        stored["ipam"]["routes"],
        json!([{"dst": "172.30.0.0/16"}, {"dst": "10.1.0.0/16"}])
    );
    assert_eq!(stored["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert!(ip(&["-n", &s.pod.0, "route"]).contains("172.30.0.0/16 via 10.1.17.1 dev eth0"));
    assert!(s.run("DEL", &conf, &s.pod.path()).0);
}

#[test]
fn status_is_ready_only_with_a_valid_subnet_env() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(None);
    let conf = s.conf_v("1.1.0");
    let (ok, err) = s.run("STATUS", &conf, "");
    assert!(!ok);
    assert_eq!(err["code"], 50);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .starts_with("flannel is not ready on this node"),
        "{err}"
    );
    std::fs::write(s.dir.path().join("subnet.env"), "FLANNEL_MTU=x\n").unwrap();
    assert!(
        !s.run("STATUS", &conf, "").0,
        "a corrupt subnet.env is not ready"
    );
    std::fs::write(s.dir.path().join("subnet.env"), SUBNET_ENV).unwrap();
    let (ok, out) = s.run("STATUS", &conf, "");
    assert!(ok && out.is_null(), "{out}");
}

#[test]
fn gc_removes_stale_attachments_and_frees_their_addresses() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let other = common::Netns::new("p");
    assert!(s.run("ADD", &s.conf(), &s.pod.path()).0);
    let (ok, r) = s.run_as(&other.0, "ADD", &s.conf(), &other.path());
    assert!(ok, "{r}");
    let other_ip = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let ipam_file = s
        .dir
        .path()
        .join("ipam")
        .join("cni-flannel")
        .join(&other_ip);
    assert!(ipam_file.exists(), "host-local recorded {other_ip}");

    let mut gc = s.conf_v("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": s.pod.0, "ifname": "eth0"}]);
    let (ok, out) = s.run("GC", &gc, "");
    assert!(ok, "GC failed: {out}");
    assert!(s.stored().exists(), "the valid attachment is kept");
    assert!(
        !s.dir.path().join("data").join(&other.0).exists(),
        "the stale attachment's config is gone"
    );
    assert!(!ipam_file.exists(), "its address is free again");
    assert!(s.run("DEL", &s.conf(), &s.pod.path()).0);
}

#[test]
fn without_a_command_the_plugin_prints_its_version_banner() {
    let o = Command::new(bin_dir().join("flannel"))
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("CNI Plugin flannel version v"), "{err}");
    assert!(
        err.contains(
            "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
        ),
        "{err}"
    );
}

#[test]
fn add_waits_for_a_subnet_env_that_flanneld_writes_a_moment_later() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(None);
    let env = s.dir.path().join("subnet.env");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        std::fs::write(env, SUBNET_ENV).unwrap();
    });
    let (ok, result) = s.run("ADD", &s.conf(), &s.pod.path());
    writer.join().unwrap();
    assert!(ok, "ADD should have waited for subnet.env: {result}");
    assert_eq!(result["ips"][0]["address"], "10.1.17.2/24");
    assert!(s.run("DEL", &s.conf(), &s.pod.path()).0);
}

#[test]
fn malformed_stdin_and_environment_are_cni_errors() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let plugin = bin_dir().join("flannel");
    let run = |env: &[(&str, &str)], stdin: &[u8]| {
        let mut c = Command::new(&plugin);
        c.env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), v)
    };
    let netns = s.pod.path();
    let full = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", s.pod.0.as_str()),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let (code, err) = run(&full, b"{not json");
    assert_eq!((code, err["code"].as_u64()), (Some(1), Some(6)), "{err}");
    let (code, err) = run(&full[..2], s.conf().to_string().as_bytes());
    assert_eq!(code, Some(1));
    assert_eq!(
        err["msg"],
        "required env variables [CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
    );
    let mut bad_id = full;
    bad_id[1] = ("CNI_CONTAINERID", "../../etc/passwd");
    let (_, err) = run(&bad_id, s.conf().to_string().as_bytes());
    assert_eq!(err["msg"], "invalid characters in containerID");
    let (_, err) = run(&[("CNI_COMMAND", "FROB")], s.conf().to_string().as_bytes());
    assert_eq!(err["msg"], "unknown CNI_COMMAND: FROB");
    assert!(!s.stored().exists(), "nothing stored by any of these");
}

impl Setup {
    /// The container ID host-local recorded for `ip`, if the address is allocated.
    fn ipam_owner(&self, ip: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("ipam").join("cni-flannel").join(ip))
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
    }

    fn stored_for(&self, container: &str) -> std::path::PathBuf {
        self.dir.path().join("data").join(container)
    }

    /// ADD of the test's pod; returns its address (without prefix).
    fn add_pod(&self) -> String {
        let (ok, r) = self.run("ADD", &self.conf(), &self.pod.path());
        assert!(ok, "ADD failed: {r}");
        let a = r["ips"][0]["address"].as_str().unwrap();
        a.split('/').next().unwrap().to_string()
    }
}

fn pod_addr(ns: &str) -> String {
    let o = Command::new("ip")
        .args(["-n", ns, "-o", "-4", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_second_add_of_the_same_container_fails_without_harming_it() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let addr = s.add_pod();
    let stored = std::fs::read(s.stored()).unwrap();
    let (ok, err) = s.run("ADD", &s.conf(), &s.pod.path());
    assert!(!ok, "a second ADD cannot succeed: {err}");
    assert!(
        pod_addr(&s.pod.0).contains(&format!("inet {addr}/24")),
        "eth0 kept"
    );
    assert_eq!(
        s.ipam_owner(&addr).as_deref(),
        Some(s.pod.0.as_str()),
        "address kept"
    );
    assert_eq!(
        std::fs::read(s.stored()).unwrap(),
        stored,
        "stored config kept"
    );
    assert!(err["msg"].as_str().unwrap().contains(&s.pod.0), "{err}");
    // A second ADD with a broken config does not overwrite it either.
    let mut broken = s.conf();
    broken["delegate"] = json!({"type": "nosuchplugin"});
    assert!(!s.run("ADD", &broken, &s.pod.path()).0);
    assert_eq!(
        std::fs::read(s.stored()).unwrap(),
        stored,
        "stored config kept"
    );
    // ... so DEL still undoes the real attachment.
    let (ok, out) = s.run("DEL", &s.conf(), &s.pod.path());
    assert!(ok, "{out}");
    assert!(pod_addr(&s.pod.0).is_empty());
    assert_eq!(s.ipam_owner(&addr), None, "address freed");
    assert!(!s.stored().exists());
}

#[test]
fn another_container_into_the_same_netns_and_ifname_fails_without_harm() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let addr = s.add_pod();
    let stored = std::fs::read(s.stored()).unwrap();
    let (ok, err) = s.run_as("intruder1", "ADD", &s.conf(), &s.pod.path());
    assert!(!ok, "{err}");
    assert!(
        pod_addr(&s.pod.0).contains(&format!("inet {addr}/24")),
        "eth0 kept"
    );
    assert!(err["msg"].as_str().unwrap().contains("eth0"), "{err}");
    assert_eq!(s.ipam_owner(&addr).as_deref(), Some(s.pod.0.as_str()));
    assert_eq!(std::fs::read(s.stored()).unwrap(), stored);
    assert!(
        !s.stored_for("intruder1").exists(),
        "nothing stored for the failed ADD"
    );
    // Its DEL (the runtime cleans up after a failed ADD) touches nothing of the pod either.
    let (ok, out) = s.run_as("intruder1", "DEL", &s.conf(), &s.pod.path());
    assert!(ok, "{out}");
    assert!(pod_addr(&s.pod.0).contains(&format!("inet {addr}/24")));
    assert!(s.run("DEL", &s.conf(), &s.pod.path()).0);
}

#[test]
fn a_missing_delegate_plugin_stores_nothing_and_del_always_finishes() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let mut conf = s.conf();
    conf["delegate"] = json!({"type": "nosuchplugin"});
    let (ok, err) = s.run("ADD", &conf, &s.pod.path());
    assert!(!ok);
    assert!(
        err["msg"].as_str().unwrap().contains("nosuchplugin"),
        "{err}"
    );
    assert!(!s.stored().exists(), "nothing stored");
    let (ok, out) = s.run("DEL", &conf, &s.pod.path());
    assert!(ok, "{out}");

    // A plugin that vanished after a successful ADD: DEL finishes and says what was left.
    let plugins = TempDir::new("plugins");
    for p in ["bridge", "host-local"] {
        common::copy_executable(
            &std::path::Path::new("/usr/lib/cni").join(p),
            &plugins.path().join(p),
        );
    }
    let cni_path = plugins.path().display().to_string();
    let with_path =
        |command: &str| s.invoke(&s.pod.0, command, &s.conf(), &s.pod.path(), &cni_path);
    assert!(with_path("ADD").0);
    std::fs::remove_file(plugins.path().join("bridge")).unwrap();
    let (ok, out, stderr) = with_path("DEL");
    assert!(ok, "{out}");
    assert!(stderr.contains("bridge"), "said on stderr: {stderr}");
    assert!(!s.stored().exists());
}

#[test]
fn a_delegate_config_the_bridge_rejects_leaves_nothing_behind() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let mut conf = s.conf();
    conf["delegate"] = json!({"hairpinMode": "yes"});
    let (ok, err) = s.run("ADD", &conf, &s.pod.path());
    assert!(!ok);
    assert!(
        err["msg"].as_str().unwrap().contains("hairpinMode"),
        "the bridge's own error: {err}"
    );
    assert!(!s.stored().exists(), "nothing to undo, nothing kept");
    let (ok, out) = s.run("DEL", &conf, &s.pod.path());
    assert!(ok, "{out}");
}

#[test]
fn a_cni_netns_that_is_not_a_network_namespace() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let not_ns = s.dir.path().join("not-a-netns");
    std::fs::write(&not_ns, "").unwrap();
    let not_ns = not_ns.display().to_string();
    let (ok, err) = s.run("ADD", &s.conf(), &not_ns);
    assert!(!ok);
    assert_eq!(err["code"], 4, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("not a network namespace"),
        "{err}"
    );
    assert!(!s.stored().exists());
    // A pod added for real, its namespace gone and the path reused: DEL still finishes and
    // frees the address.
    let addr = s.add_pod();
    let (ok, out) = s.run("DEL", &s.conf(), &not_ns);
    assert!(ok, "{out}");
    assert!(!s.stored().exists());
    assert_eq!(s.ipam_owner(&addr), None, "address freed");
}

#[test]
fn gc_without_valid_attachments_removes_nothing() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(Some(SUBNET_ENV));
    let addr = s.add_pod();
    for gc in [s.conf_v("1.1.0"), {
        let mut c = s.conf_v("1.1.0");
        c["cni.dev/valid-attachments"] = json!({"containerID": "x"});
        c
    }] {
        let (ok, out) = s.run("GC", &gc, "");
        assert!(ok, "{out}");
        assert!(s.stored().exists(), "kept: {gc}");
        assert_eq!(s.ipam_owner(&addr).as_deref(), Some(s.pod.0.as_str()));
    }
    // An empty list: everything is stale.
    let mut gc = s.conf_v("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let (ok, out) = s.run("GC", &gc, "");
    assert!(ok, "{out}");
    assert!(!s.stored().exists());
    assert_eq!(s.ipam_owner(&addr), None);
}

#[test]
fn a_subnet_file_that_is_a_directory_is_a_config_error_not_try_again() {
    if common::skip_without_root() {
        return;
    }
    let s = Setup::new(None);
    std::fs::create_dir(s.dir.path().join("subnet.env")).unwrap();
    let mut conf = s.conf();
    conf["subnetFileWait"] = json!(0);
    let (ok, err) = s.run("ADD", &conf, &s.pod.path());
    assert!(!ok);
    assert_eq!(err["code"], 7, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("is a directory"),
        "{err}"
    );
    assert!(!s.stored().exists());
}

#[test]
fn the_init_container_subcommands_install_the_plugin_and_the_conflist() {
    // What the DaemonSet's init containers run (the image has no cp): the plugin copies itself,
    // then the ConfigMap's conflist is installed. Both replace what is there whole.
    let dir = TempDir::new("install");
    let bin = dir.path().join("opt-cni-bin");
    let netd = dir.path().join("net.d");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&netd).unwrap();
    let dst = bin.join("flannel");
    std::fs::write(&dst, "an older plugin").unwrap();
    let o = Command::new(bin_dir().join("flannel"))
        .env_clear()
        .args(["install-plugin", &dst.display().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(&dst).unwrap(),
        std::fs::read(bin_dir().join("flannel")).unwrap()
    );
    let banner = Command::new(&dst).env_clear().output().unwrap();
    assert!(String::from_utf8_lossy(&banner.stderr).starts_with("CNI Plugin flannel version"));

    let src = dir.path().join("cni-conf.json");
    let conf = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    std::fs::write(&src, conf).unwrap();
    let dst = netd.join("10-flannel.conflist");
    let run = |src: &std::path::Path| {
        Command::new(bin_dir().join("flannel"))
            .env_clear()
            .args([
                "install-conf",
                &src.display().to_string(),
                &dst.display().to_string(),
            ])
            .output()
            .unwrap()
    };
    assert!(run(&src).status.success());
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), conf);
    // A broken ConfigMap does not replace a working conflist: exit 1, the file named.
    let bad = dir.path().join("broken.json");
    std::fs::write(&bad, "{\"name\": \"cbr0\",").unwrap();
    let o = run(&bad);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("broken.json is not a valid CNI config"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), conf);
    assert_eq!(
        std::fs::read_dir(&netd).unwrap().count(),
        1,
        "no temporary file left"
    );
}
