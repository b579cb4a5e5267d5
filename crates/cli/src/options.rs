//! Typed, validated flanneld options built from the parsed flags.

use crate::flags::Values;
use regex::Regex;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A flag or variable whose value cannot be used: the message names it and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

macro_rules! bail {
    ($($t:tt)*) => { return Err(OptionError(format!($($t)*))) };
}

/// `what`, then why the parser refused it.
fn refused(what: String, why: impl Display) -> OptionError {
    OptionError(format!("{what}: {why}"))
}

#[derive(Debug, Clone)]
pub struct Options {
    pub etcd: flannel_subnet::etcd::EtcdOptions,
    /// `--kube-subnet-mgr`: the Kubernetes subnet manager and its settings.
    pub kube: Option<flannel_subnet::kube::KubeOptions>,
    pub ifaces: Vec<String>,
    pub iface_regex: Vec<Regex>,
    pub iface_can_reach: Option<IpAddr>,
    pub subnet_file: PathBuf,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    /// `--healthz-ip:--healthz-port`, `None` when the port is 0.
    pub healthz: Option<SocketAddr>,
    pub blackhole_route: bool,
    pub renew_margin: Duration,
    pub ip_masq: bool,
    pub ip_masq_fully_random_disable: bool,
    pub resync: Duration,
    /// `--kernel-resync`: the safety net's full pass over kernel state (the incremental path
    /// and netlink notifications do the rest).
    pub kernel_resync: Duration,
    pub forward_rules: bool,
    pub verbosity: i64,
    /// `--state-socket`: where flannelctl reads our state; `None` when empty.
    pub state_socket: Option<PathBuf>,
    /// `--network-policy`: compile NetworkPolicies into nftables (kube mode only).
    pub network_policy: bool,
}

impl Options {
    /// The options from parsed flags and the process environment (`env`: `NODE_NAME`,
    /// `POD_NAME`, `POD_NAMESPACE`, `EVENT_QUEUE_DEPTH`, `CONT_WHEN_CACHE_NOT_READY`).
    pub fn from_values(
        v: &Values,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, OptionError> {
        let kube = if v.bool("kube-subnet-mgr") {
            Some(kube_options(v, env)?)
        } else {
            None
        };
        let network_policy = v.bool("network-policy");
        if network_policy && kube.is_none() {
            bail!("--network-policy needs --kube-subnet-mgr: NetworkPolicies, Pods and Namespaces come from the Kubernetes API, which flanneld does not read with etcd as its datastore");
        }
        let margin = v.int("subnet-lease-renew-margin");
        if !(1..=1439).contains(&margin) {
            bail!("--subnet-lease-renew-margin={margin}: must be between 1 and 1439 minutes");
        }
        let resync = v.int("iptables-resync");
        if resync < 1 {
            bail!("--iptables-resync={resync}: must be at least 1 second");
        }
        let kernel_resync = v.int("kernel-resync");
        if kernel_resync < 1 {
            bail!("--kernel-resync={kernel_resync}: must be at least 1 second");
        }
        let public_ip = match v.str("public-ip") {
            s if s.is_empty() => None,
            s => Some(
                s.parse::<Ipv4Addr>()
                    .map_err(|e| refused(format!("--public-ip={s:?} is not an IPv4 address"), e))?,
            ),
        };
        let public_ipv6 =
            match v.str("public-ipv6") {
                s if s.is_empty() => None,
                s => Some(s.parse::<Ipv6Addr>().map_err(|e| {
                    refused(format!("--public-ipv6={s:?} is not an IPv6 address"), e)
                })?),
            };
        let iface_regex = v
            .list("iface-regex")
            .iter()
            .map(|r| {
                Regex::new(r).map_err(|e| {
                    refused(
                        format!("--iface-regex={r:?} is not a valid regular expression"),
                        e,
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let iface_can_reach = match v.str("iface-can-reach") {
            s if s.is_empty() => None,
            s => Some(s.parse::<IpAddr>().map_err(|e| {
                refused(format!("--iface-can-reach={s:?} is not an IP address"), e)
            })?),
        };
        let port = v.int("healthz-port");
        let healthz = match port {
            0 => None,
            1..=65535 => {
                let ip: IpAddr = v.str("healthz-ip").parse().map_err(|e| {
                    refused(
                        format!(
                            "--healthz-ip={:?} is not an IP address",
                            v.str("healthz-ip")
                        ),
                        e,
                    )
                })?;
                Some(SocketAddr::new(ip, port as u16))
            }
            _ => bail!("--healthz-port={port}: must be between 0 and 65535"),
        };
        let endpoints: Vec<String> = v
            .str("etcd-endpoints")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if endpoints.is_empty() {
            bail!("--etcd-endpoints is empty");
        }
        Ok(Self {
            etcd: flannel_subnet::etcd::EtcdOptions {
                endpoints,
                prefix: v.str("etcd-prefix"),
                keyfile: v.str("etcd-keyfile"),
                certfile: v.str("etcd-certfile"),
                cafile: v.str("etcd-cafile"),
                username: v.str("etcd-username"),
                password: v.str("etcd-password"),
            },
            kube,
            ifaces: v.list("iface"),
            iface_regex,
            iface_can_reach,
            subnet_file: PathBuf::from(v.str("subnet-file")),
            network_policy,
            state_socket: Some(v.str("state-socket"))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            public_ip,
            public_ipv6,
            healthz,
            blackhole_route: v.bool("ip-blackhole-route"),
            renew_margin: Duration::from_secs(margin as u64 * 60),
            ip_masq: v.bool("ip-masq"),
            ip_masq_fully_random_disable: v.bool("ip-masq-fully-random-disable"),
            resync: Duration::from_secs(resync as u64),
            kernel_resync: Duration::from_secs(kernel_resync as u64),
            forward_rules: v.bool("iptables-forward-rules"),
            verbosity: v.int("v"),
        })
    }
}

/// Kubernetes mode's settings. `EVENT_QUEUE_DEPTH` and `CONT_WHEN_CACHE_NOT_READY` are accepted
/// as upstream reads them (a non-number depth is an error) but change nothing: flannel-rs's node
/// queue is keyed by node and never full, and it waits for the API instead of giving up.
fn kube_options(
    v: &Values,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<flannel_subnet::kube::KubeOptions, OptionError> {
    let get = |k: &str| env(k).unwrap_or_default();
    let depth = get("EVENT_QUEUE_DEPTH");
    if !depth.is_empty() && depth.trim().parse::<i64>().is_err() {
        bail!("EVENT_QUEUE_DEPTH={depth:?} is not a number");
    }
    Ok(flannel_subnet::kube::KubeOptions {
        source: flannel_subnet::kube::ApiSource {
            kubeconfig: v.str("kubeconfig-file"),
            api_url: v.str("kube-api-url"),
        },
        annotation_prefix: v.str("kube-annotation-prefix"),
        net_config_path: PathBuf::from(v.str("net-config-path")),
        set_node_network_unavailable: v.bool("set-node-network-unavailable"),
        node_name: get("NODE_NAME"),
        pod_name: get("POD_NAME"),
        pod_namespace: get("POD_NAMESPACE"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{parse, Parsed};

    fn opts(args: &[&str]) -> Result<Options, OptionError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args, &|_| None).map_err(|e| OptionError(e.to_string()))? {
            Parsed::Values(v) => Options::from_values(&v, &|_| None),
            Parsed::Help => unreachable!(),
        }
    }

    #[test]
    fn kube_mode_reads_its_environment_and_checks_event_queue_depth() {
        let args: Vec<String> = [
            "--kube-subnet-mgr",
            "--kube-annotation-prefix=example.com/x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let Parsed::Values(v) = parse(&args, &|_| None).unwrap() else {
            unreachable!()
        };
        let env = |k: &str| match k {
            "NODE_NAME" => Some("node7".to_string()),
            "EVENT_QUEUE_DEPTH" => Some("5000".to_string()),
            _ => None,
        };
        let k = Options::from_values(&v, &env).unwrap().kube.unwrap();
        assert_eq!(k.node_name, "node7");
        assert_eq!(k.annotation_prefix, "example.com/x");
        assert_eq!(
            k.net_config_path.to_str(),
            Some("/etc/kube-flannel/net-conf.json")
        );
        assert!(k.set_node_network_unavailable);
        let bad = |k: &str| (k == "EVENT_QUEUE_DEPTH").then(|| "lots".to_string());
        let e = Options::from_values(&v, &bad).unwrap_err().to_string();
        assert!(
            e.contains("EVENT_QUEUE_DEPTH=\"lots\" is not a number"),
            "{e}"
        );
    }

    #[test]
    fn network_policy_is_kube_mode_only_and_off_by_default() {
        assert!(!opts(&[]).unwrap().network_policy);
        let e = opts(&["--network-policy"]).unwrap_err().to_string();
        assert!(
            e.contains("--network-policy needs --kube-subnet-mgr"),
            "{e}"
        );
        let args: Vec<String> = ["--network-policy", "--kube-subnet-mgr"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let env = |k: &str| (k == "FLANNELD_NETWORK_POLICY").then(|| "true".to_string());
        for (args, env) in [
            (
                args.clone(),
                &(|_: &str| None) as &dyn Fn(&str) -> Option<String>,
            ),
            (args[1..].to_vec(), &env),
        ] {
            let Parsed::Values(v) = parse(&args, env).unwrap() else {
                unreachable!()
            };
            let node = |k: &str| (k == "NODE_NAME").then(|| "n1".to_string());
            assert!(Options::from_values(&v, &node).unwrap().network_policy);
        }
    }

    #[test]
    fn builds_typed_options() {
        let o = opts(&[
            "--etcd-endpoints=http://a:2379, http://b:2379",
            "--public-ip=10.0.0.5",
            "--ip-masq",
        ])
        .unwrap();
        assert_eq!(o.etcd.endpoints, vec!["http://a:2379", "http://b:2379"]);
        assert_eq!(o.public_ip, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(o.renew_margin, Duration::from_secs(3600));
        assert!(o.ip_masq && o.forward_rules);
    }

    #[test]
    fn invalid_options_are_refused_with_the_flag_named() {
        for (args, needle) in [
            (
                &["--subnet-lease-renew-margin=0"][..],
                "--subnet-lease-renew-margin=0",
            ),
            (
                &["--subnet-lease-renew-margin=1440"][..],
                "between 1 and 1439",
            ),
            (&["--public-ip=nope"][..], "--public-ip=\"nope\""),
            (&["--etcd-endpoints=,"][..], "--etcd-endpoints"),
            (
                &["--public-ipv6=10.0.0.1"][..],
                "--public-ipv6=\"10.0.0.1\" is not an IPv6 address",
            ),
            (
                &["--iface-regex=eth["][..],
                "--iface-regex=\"eth[\" is not a valid regular expression",
            ),
            (
                &["--iface-can-reach=host"][..],
                "--iface-can-reach=\"host\" is not an IP address",
            ),
            (
                &["--healthz-port=70000"][..],
                "--healthz-port=70000: must be between 0 and 65535",
            ),
            (
                &["--healthz-port=8081", "--healthz-ip=any"][..],
                "--healthz-ip=\"any\" is not an IP address",
            ),
        ] {
            let e = format!("{:#}", opts(args).unwrap_err());
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
