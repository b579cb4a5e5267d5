//! flanneld as a process: flags, exit codes, and the config wait with clear messages.

mod common;

use common::{bin_dir, eventually, ip, require_root, Netns, Proc, TempDir};
use std::process::{Command, Stdio};
use std::time::Duration;

fn flanneld(args: &[&str]) -> std::process::Output {
    Command::new(bin_dir().join("flanneld"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn version_prints_to_stderr_and_exits_0() {
    let o = flanneld(&["--version"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).trim().starts_with('v'));
    assert!(o.stdout.is_empty());
    assert!(
        flanneld(&["-version"]).status.success(),
        "single dash works too"
    );
}

#[test]
fn unknown_flag_exits_2_with_usage_and_bad_values_exit_1() {
    let o = flanneld(&["--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("flag provided but not defined: -no-such-flag") && err.contains("Usage:"),
        "{err}"
    );

    let o = flanneld(&["--subnet-lease-renew-margin=2000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("--subnet-lease-renew-margin=2000: must be between 1 and 1439 minutes"));

    let o = Command::new(bin_dir().join("flanneld"))
        .env_clear()
        .env("FLANNELD_IP_MASQ", "yes")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("FLANNELD_IP_MASQ"));
}

#[test]
fn waits_for_a_missing_or_invalid_config_then_starts() {
    require_root();
    let ns = Netns::new("cfg");
    ip(&[
        "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ip(&["-n", &ns.0, "addr", "add", "10.0.0.50/24", "dev", "eth0"]);
    ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
    ip(&["-n", &ns.0, "link", "set", "eth1", "up"]);
    let dir = TempDir::new("cfg");
    let etcd_log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let _etcd = Proc(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "etcd", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
            ])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .stdout(etcd_log.try_clone().unwrap())
            .stderr(etcd_log)
            .spawn()
            .unwrap(),
    );
    let log_path = dir.path().join("flanneld.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let env_file = dir.path().join("subnet.env");
    let _flanneld = Proc(
        Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(bin_dir().join("flanneld"))
            .args([
                "--etcd-endpoints=http://127.0.0.1:2379",
                "--iface=eth0",
                "--etcd-prefix=/p/",
            ])
            .arg(format!("--subnet-file={}", env_file.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let etcdctl = |args: &[&str]| {
        let ok = eventually(Duration::from_secs(10), || {
            Command::new("ip")
                .args(["netns", "exec", &ns.0, "etcdctl"])
                .args(args)
                .env("ETCDCTL_API", "3")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        assert!(ok.is_some(), "etcdctl {args:?} failed");
    };

    assert!(
        eventually(Duration::from_secs(10), || read_log()
            .contains("/p/config does not exist"))
        .is_some(),
        "{}",
        read_log()
    );
    etcdctl(&[
        "put",
        "/p/config",
        r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
    ]);
    let said = eventually(Duration::from_secs(10), || {
        read_log().contains("invalid network config at /p/config: SubnetLen must be less than /31")
    });
    assert!(said.is_some(), "{}", read_log());
    assert!(
        !env_file.exists(),
        "nothing written while the config is invalid"
    );
    etcdctl(&[
        "put",
        "/p/config",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    assert!(
        eventually(Duration::from_secs(10), || env_file.exists()).is_some(),
        "{}",
        read_log()
    );
    assert!(std::fs::read_to_string(&env_file)
        .unwrap()
        .contains("FLANNEL_MTU=1450"));
    assert!(!read_log().contains("ERROR"), "{}", read_log());
}
