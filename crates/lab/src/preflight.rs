//! Checks before `up`: root, and every program the lab runs, with the package that provides it.

use crate::cluster::Datastore;
use anyhow::bail;
use std::path::{Path, PathBuf};

pub const CNI_DIR: &str = "/usr/lib/cni";

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Fails with one message naming everything that is missing for a lab on `datastore`, and the
/// `extra` programs (name, Debian package) a command needs beside.
pub fn check(bin_dir: &Path, datastore: Datastore, extra: &[(&str, &str)]) -> anyhow::Result<()> {
    // SAFETY-free check of root: /proc/self/status Uid line.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(String::from)
        });
    if uid.as_deref() != Some("0") {
        bail!("flannel-lab must run as root: it creates network namespaces");
    }
    let mut missing = Vec::new();
    let mut programs = vec![
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("iptables", "iptables"),
    ];
    let mut ours = vec!["flanneld", "flannel"];
    match datastore {
        Datastore::Etcd => programs.extend([("etcd", "etcd-server"), ("etcdctl", "etcd-client")]),
        Datastore::Kube => ours.push("flannel-kube-fake"),
    }
    programs.extend_from_slice(extra);
    for (prog, pkg) in programs {
        if !on_path(prog) {
            missing.push(format!("{prog} (apt-get install {pkg})"));
        }
    }
    for p in ["bridge", "host-local", "portmap"] {
        if !Path::new(CNI_DIR).join(p).is_file() {
            missing.push(format!(
                "{CNI_DIR}/{p} (apt-get install containernetworking-plugins)"
            ));
        }
    }
    for p in ours {
        if !bin_dir.join(p).is_file() {
            missing.push(format!(
                "{} (cargo build --release)",
                bin_dir.join(p).display()
            ));
        }
    }
    if !missing.is_empty() {
        bail!("missing: {}", missing.join(", "));
    }
    Ok(())
}

/// Where `flanneld` and `flannel` live: `$FLANNEL_LAB_BIN_DIR`, else next to this executable.
pub fn default_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FLANNEL_LAB_BIN_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}
