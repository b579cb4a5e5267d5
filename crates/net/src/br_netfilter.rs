//! Whether bridged traffic reaches the IP hooks (br_netfilter): pods of one node talk over
//! the `cni0` bridge, and only with `bridge-nf-call-iptables` / `-ip6tables` set does their
//! traffic pass nftables' inet forward hook, where network policy is enforced. These
//! kernels have no conntrack in the bridge family, so the inet hook is the only place.

use std::path::Path;

/// What is wrong, each with the command that fixes it; empty when bridged traffic of both
/// families is filtered. `proc_sys` is `/proc/sys` (a directory of files in tests).
pub fn problems(proc_sys: &Path) -> Vec<String> {
    let dir = proc_sys.join("net/bridge");
    if !dir.join("bridge-nf-call-iptables").exists() {
        return vec![
            "br_netfilter is not loaded: traffic between pods of this node is bridged past nftables and no network policy applies to it (fix: modprobe br_netfilter)"
                .into(),
        ];
    }
    ["iptables", "ip6tables"]
        .iter()
        .filter_map(|t| {
            let f = dir.join(format!("bridge-nf-call-{t}"));
            let v = std::fs::read_to_string(&f).unwrap_or_default();
            (v.trim() != "1").then(|| {
                format!(
                    "net.bridge.bridge-nf-call-{t} is {:?}, not 1: bridged {} traffic between pods of this node skips network policy (fix: sysctl -w net.bridge.bridge-nf-call-{t}=1)",
                    v.trim(),
                    if *t == "iptables" { "IPv4" } else { "IPv6" }
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_off_and_how_to_fix_it() {
        let d = std::env::temp_dir().join(format!("brnf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        assert!(problems(&d)[0].contains("modprobe br_netfilter"));
        std::fs::create_dir_all(d.join("net/bridge")).unwrap();
        std::fs::write(d.join("net/bridge/bridge-nf-call-iptables"), "1\n").unwrap();
        std::fs::write(d.join("net/bridge/bridge-nf-call-ip6tables"), "0\n").unwrap();
        let p = problems(&d);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("bridge-nf-call-ip6tables=1"), "{p:?}");
        std::fs::write(d.join("net/bridge/bridge-nf-call-ip6tables"), "1\n").unwrap();
        assert!(problems(&d).is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }
}
