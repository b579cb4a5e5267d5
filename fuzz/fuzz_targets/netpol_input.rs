//! What flanneld reads for network policy from the Kubernetes API (anyone who can write a
//! NetworkPolicy, a Pod or a Namespace writes this input), and the kernel's table listing it
//! reads back: never a panic, and the nftables script compiled from it holds only commands we
//! write (no name, label or port can inject a command), and a ruleset diffs to nothing against
//! itself.
//!
//! The first byte picks the input: 0 a NetworkPolicy, 1 a Pod, 2 a Namespace, 3 an
//! `nft -j list table` output; the rest is the JSON.
#![no_main]
use flannel_policy::compile::{compile, problems, Cluster};
use flannel_policy::decode;
use flannel_policy::ruleset::Observed;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fn base() -> Cluster {
    let mut c = Cluster::default();
    for (ns, name, node, ip, port) in [("x", "a", "n1", "10.244.1.2", "http"), ("y", "b", "n2", "10.244.2.2", "dns"), ("x", "c", "n1", "fd00::5", "http")] {
        let p = decode::pod(&json!({"metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
            "spec": {"nodeName": node, "containers": [{"ports": [{"name": port, "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": ip}}))
        .expect("a valid pod");
        c.pods.insert(p.key(), p);
    }
    c
}

fn check(c: &Cluster) {
    let _ = problems(c);
    for node in ["n1", "n2"] {
        let r = compile(c, node);
        let script = r.script();
        for line in script.lines() {
            assert!(line.starts_with("add "), "a line we did not write: {line:?}");
            assert_eq!(line.matches('"').count() % 2, 0, "{line:?}");
        }
        for name in r.chains.keys().chain(r.sets.keys()) {
            assert!(name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-._".contains(ch)), "{name:?}");
            assert!(name.len() <= 210, "{name:?}");
        }
        assert_eq!(r.diff(Some(&r.observed())), None);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 4 == 3 {
        if let Ok(text) = std::str::from_utf8(rest) {
            let _ = Observed::from_json(text);
        }
        return;
    }
    let Ok(v) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let mut c = base();
    match which % 4 {
        0 => {
            if let Ok(p) = decode::policy(&v) {
                c.policies.insert(p.key(), p);
            }
        }
        1 => {
            if let Ok(p) = decode::pod(&v) {
                c.pods.insert(p.key(), p);
            }
            let deny = decode::policy(&json!({"metadata": {"name": "deny", "namespace": "x"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "http"}]}]}}))
            .expect("a valid policy");
            c.policies.insert(deny.key(), deny);
        }
        _ => {
            if let Ok(n) = decode::namespace(&v) {
                c.namespaces.insert(n.name.clone(), n);
            }
        }
    }
    check(&c);
});
