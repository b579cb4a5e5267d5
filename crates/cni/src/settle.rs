//! IPv6 from the first packet. The bridge plugin creates the bridge (`cni0`) and puts the pods'
//! IPv6 gateway on it when the node's first pod is added; the kernel then runs duplicate
//! address detection for a second or two on that address and on the bridge's link-local one,
//! which it makes when the bridge comes up. Until both are through:
//! - a tentative gateway does not answer the pod's neighbour solicitation, so the pod's first
//!   packets wait for its next solicitation, a second later;
//! - with a tentative link-local address the node sends no solicitation at all for a packet it
//!   forwards to the pod (the kernel has no source address for it and drops the attempt
//!   silently), so the first packet from a pod on another node waits a second too.
//!
//! A first ping with a 1 s timeout is lost either way. (The container side has no such gap:
//! the bridge plugin waits for the pod's own addresses.) So ADD returns only once the bridge's
//! IPv6 addresses are usable, as a pod expects of an interface it was just given. IPv4 has no
//! detection: no wait; a node without IPv6, or a pod without an IPv6 gateway: no wait.

use crate::error::{code, CniError};
use serde_json::Value;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

/// `IFA_F_DADFAILED` and `IFA_F_TENTATIVE` (linux/if_addr.h), as /proc/net/if_inet6 shows them.
const DAD_FAILED: u32 = 0x08;
const TENTATIVE: u32 = 0x40;

/// How long ADD waits for detection: one probe a second by default, after a random delay of
/// up to a second. Past this the pod is returned anyway (it only loses its first packets).
const LIMIT: Duration = Duration::from_secs(5);

/// The IPv6 gateways a delegate's ADD result hands the pod (CNI results 0.3.0 and later:
/// `ips[].gateway`; 0.2.0: `ip6.gateway`).
pub fn ipv6_gateways(result: &Value) -> Vec<Ipv6Addr> {
    let mut gws: Vec<Ipv6Addr> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["gateway"].as_str()?.parse().ok())
        .collect();
    if let Some(gw) = result["ip6"]["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
    {
        gws.push(gw);
    }
    gws.sort_unstable();
    gws.dedup();
    gws
}

/// The IPv6 addresses of interface `dev` with their flags, from the text of /proc/net/if_inet6
/// (one address per line: 32 hex digits, ifindex, prefix length, scope, flags, name).
pub fn addresses(if_inet6: &str, dev: &str) -> Vec<(Ipv6Addr, u32)> {
    if_inet6
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [hex, _, _, _, flags, name] = f.as_slice() else {
                return None;
            };
            if *name != dev || hex.len() != 32 {
                return None;
            }
            let addr = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
            Some((addr, u32::from_str_radix(flags, 16).ok()?))
        })
        .collect()
}

/// Where the bridge stands for the pods' IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bridge {
    Ready,
    /// Still waiting, for this reason.
    Waiting(String),
    /// A gateway failed duplicate address detection: another host on the bridge has it.
    DadFailed(Ipv6Addr),
}

/// Judges the bridge `dev`: every gateway of `gws` that is on it and its link-local address
/// (when the kernel makes one: `need_link_local`) must be through detection.
pub fn judge(if_inet6: &str, dev: &str, gws: &[Ipv6Addr], need_link_local: bool) -> Bridge {
    let addrs = addresses(if_inet6, dev);
    if let Some((a, _)) = addrs
        .iter()
        .find(|(a, f)| f & DAD_FAILED != 0 && gws.contains(a))
    {
        return Bridge::DadFailed(*a);
    }
    if let Some((a, _)) = addrs.iter().find(|(_, f)| f & TENTATIVE != 0) {
        return Bridge::Waiting(format!("{a} is tentative"));
    }
    let link_local = |a: &Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
    if need_link_local && !addrs.iter().any(|(a, _)| link_local(a)) {
        return Bridge::Waiting("it has no link-local address yet".into());
    }
    Bridge::Ready
}

/// Waits until the bridge `bridge` in this (the node's) namespace can carry the pod's IPv6,
/// when `result` gives the pod an IPv6 gateway. A gateway that failed detection is an error:
/// no pod of this node would reach IPv6.
pub fn wait_for_gateways(bridge: &str, result: &Value) -> Result<(), CniError> {
    let gws = ipv6_gateways(result);
    if gws.is_empty() {
        return Ok(());
    }
    let conf = |key: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{bridge}/{key}"))
            .map(|v| v.trim().to_string())
            .ok()
    };
    // IPv6 off on the bridge: nothing to wait for. addr_gen_mode 1: no link-local is made.
    if conf("disable_ipv6").as_deref() != Some("0") {
        return Ok(());
    }
    let need_link_local = conf("addr_gen_mode").as_deref() != Some("1");
    let deadline = Instant::now() + LIMIT;
    loop {
        let Ok(text) = std::fs::read_to_string("/proc/self/net/if_inet6") else {
            return Ok(());
        };
        match judge(&text, bridge, &gws, need_link_local) {
            Bridge::Ready => return Ok(()),
            Bridge::DadFailed(gw) => {
                return Err(CniError::new(
                    code::IO_FAILURE,
                    format!(
                        "the pods' IPv6 gateway {gw} on {bridge} failed duplicate address \
                         detection: another host on {bridge} uses that address"
                    ),
                ))
            }
            Bridge::Waiting(why) if Instant::now() >= deadline => {
                eprintln!(
                    "flannel: {bridge} is not ready for IPv6 after {} s ({why}); returning the \
                     pod anyway (its first IPv6 packets may wait)",
                    LIMIT.as_secs()
                );
                return Ok(());
            }
            Bridge::Waiting(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IF_INET6: &str = "\
fd000010024400310000000000000001 05 40 00 40     cni0
fd000010024400310000000000000009 05 40 00 08     cni0
fe80000000000000a80ec9fffe492c3b 05 40 20 80     cni0
fd000010024400310000000000000001 06 40 00 80 other0
00000000000000000000000000000001 01 80 10 80       lo
garbage line
";

    #[test]
    fn the_bridge_is_ready_when_its_gateway_and_link_local_are_through_detection() {
        let gw: Ipv6Addr = "fd00:10:244:31::1".parse().unwrap();
        // The gateway tentative (and on another interface, usable: not ours).
        assert_eq!(
            judge(IF_INET6, "cni0", &[gw], true),
            Bridge::Waiting("fd00:10:244:31::1 is tentative".into())
        );
        let settled = IF_INET6.replace("0001 05 40 00 40", "0001 05 40 00 80");
        // A failed gateway is named; a failed address that is not a gateway is not ours to judge.
        assert_eq!(
            judge(
                &settled,
                "cni0",
                &["fd00:10:244:31::9".parse().unwrap()],
                true
            ),
            Bridge::DadFailed("fd00:10:244:31::9".parse().unwrap())
        );
        assert_eq!(judge(&settled, "cni0", &[gw], true), Bridge::Ready);
        // The link-local made when the bridge came up, still tentative: the node could not
        // solicit a pod for a forwarded packet.
        let ll_tentative = settled.replace("2c3b 05 40 20 80", "2c3b 05 40 20 40");
        assert_eq!(
            judge(&ll_tentative, "cni0", &[gw], true),
            Bridge::Waiting("fe80::a80e:c9ff:fe49:2c3b is tentative".into())
        );
        // Not made yet, unless the kernel makes none (addr_gen_mode 1).
        let no_ll: String = settled
            .lines()
            .filter(|l| !l.starts_with("fe80"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            judge(&no_ll, "cni0", &[gw], true),
            Bridge::Waiting("it has no link-local address yet".into())
        );
        assert_eq!(judge(&no_ll, "cni0", &[gw], false), Bridge::Ready);
        assert_eq!(addresses("", "cni0"), []);
        assert_eq!(addresses(IF_INET6, "cni1"), []);
    }

    #[test]
    fn gateways_of_either_result_version_ipv6_only() {
        let r = json!({"cniVersion": "1.0.0", "ips": [
            {"address": "10.244.1.2/24", "gateway": "10.244.1.1"},
            {"address": "fd00:10:244:1::2/64", "gateway": "fd00:10:244:1::1"},
            {"address": "fd00:10:244:1::3/64"}]});
        assert_eq!(
            ipv6_gateways(&r),
            ["fd00:10:244:1::1".parse::<Ipv6Addr>().unwrap()]
        );
        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.244.1.2/24", "gateway": "10.244.1.1"},
                         "ip6": {"ip": "fd00::2/64", "gateway": "fd00::1"}});
        assert_eq!(
            ipv6_gateways(&old),
            ["fd00::1".parse::<Ipv6Addr>().unwrap()]
        );
        assert!(ipv6_gateways(
            &json!({"ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"}]})
        )
        .is_empty());
        assert!(ipv6_gateways(&json!("not a result")).is_empty());
    }

    #[test]
    fn no_ipv6_gateway_means_no_wait() {
        let t = Instant::now();
        wait_for_gateways("cni0", &json!({"ips": []})).unwrap();
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
