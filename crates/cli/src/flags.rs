//! flanneld's command line, parsed the way Go's `flag` package parses upstream's: `-flag` and
//! `--flag` alike, `--flag=value` or `--flag value`, booleans only as `--flag` or `--flag=false`;
//! then every flag not given on the command line is read from `FLANNELD_<NAME>`.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Str,
    Int,
    /// Repeatable; each occurrence adds one element (the env var adds exactly one).
    List,
}

pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub help: &'static str,
}

const fn f(name: &'static str, kind: Kind, default: &'static str, help: &'static str) -> Spec {
    Spec {
        name,
        kind,
        default,
        help,
    }
}

/// Every upstream flag, with upstream's defaults.
pub const FLAGS: &[Spec] = &[
    f(
        "etcd-endpoints",
        Kind::Str,
        "http://127.0.0.1:4001,http://127.0.0.1:2379",
        "a comma-delimited list of etcd endpoints",
    ),
    f(
        "etcd-prefix",
        Kind::Str,
        "/coreos.com/network",
        "etcd prefix",
    ),
    f(
        "etcd-keyfile",
        Kind::Str,
        "",
        "SSL key file used to secure etcd communication",
    ),
    f(
        "etcd-certfile",
        Kind::Str,
        "",
        "SSL certification file used to secure etcd communication",
    ),
    f(
        "etcd-cafile",
        Kind::Str,
        "",
        "SSL Certificate Authority file used to secure etcd communication",
    ),
    f(
        "etcd-username",
        Kind::Str,
        "",
        "username for BasicAuth to etcd",
    ),
    f(
        "etcd-password",
        Kind::Str,
        "",
        "password for BasicAuth to etcd",
    ),
    f(
        "iface",
        Kind::List,
        "",
        "interface to use (IP or name) for inter-host communication; may be repeated",
    ),
    f(
        "iface-regex",
        Kind::List,
        "",
        "regex expression to match the first interface to use (IP or name); may be repeated",
    ),
    f(
        "iface-can-reach",
        Kind::Str,
        "",
        "detect the interface to use by the route to this IP",
    ),
    f(
        "subnet-file",
        Kind::Str,
        "/run/flannel/subnet.env",
        "filename where env variables (subnet, MTU, ... ) will be written to",
    ),
    f(
        "public-ip",
        Kind::Str,
        "",
        "IP accessible by other nodes for inter-host communication",
    ),
    f(
        "public-ipv6",
        Kind::Str,
        "",
        "IPv6 accessible by other nodes for inter-host communication",
    ),
    f(
        "subnet-lease-renew-margin",
        Kind::Int,
        "60",
        "subnet lease renewal margin, in minutes, ranging from 1 to 1439",
    ),
    f(
        "ip-masq",
        Kind::Bool,
        "false",
        "setup IP masquerade rule for traffic destined outside of overlay network",
    ),
    f(
        "ip-masq-fully-random-disable",
        Kind::Bool,
        "false",
        "disable --random-fully in masquerade rules",
    ),
    f(
        "kube-subnet-mgr",
        Kind::Bool,
        "false",
        "contact the Kubernetes API for subnet assignment instead of etcd",
    ),
    f(
        "kube-api-url",
        Kind::Str,
        "",
        "Kubernetes API server URL; empty for in-cluster config",
    ),
    f(
        "kube-annotation-prefix",
        Kind::Str,
        "flannel.alpha.coreos.com",
        "Kubernetes annotation prefix",
    ),
    f(
        "kubeconfig-file",
        Kind::Str,
        "",
        "kubeconfig file location; empty for in-cluster config",
    ),
    f("version", Kind::Bool, "false", "print version and exit"),
    f(
        "healthz-ip",
        Kind::Str,
        "0.0.0.0",
        "the IP address for the healthz server to listen on",
    ),
    f(
        "healthz-port",
        Kind::Int,
        "0",
        "the port for the healthz server to listen on (0 to disable)",
    ),
    f(
        "iptables-resync",
        Kind::Int,
        "5",
        "resync period for iptables rules, in seconds",
    ),
    f(
        "kernel-resync",
        Kind::Int,
        "30",
        "flannel-rs: period of the full check of routes, neighbours and FDB entries, in seconds (deletions are repaired at once)",
    ),
    f(
        "state-socket",
        Kind::Str,
        "/run/flannel/flanneld.sock",
        "flannel-rs: Unix socket serving this node's state and metrics to flannelctl (empty to disable)",
    ),
    f(
        "network-policy",
        Kind::Bool,
        "false",
        "flannel-rs: enforce Kubernetes NetworkPolicies on this node's pods in nftables (kube mode only)",
    ),
    f(
        "iptables-forward-rules",
        Kind::Bool,
        "true",
        "add default accept rules to the FORWARD chain",
    ),
    f(
        "ip-blackhole-route",
        Kind::Bool,
        "false",
        "add a blackhole route for the node's own subnet",
    ),
    f(
        "net-config-path",
        Kind::Str,
        "/etc/kube-flannel/net-conf.json",
        "path to the network configuration file (kube mode)",
    ),
    f(
        "set-node-network-unavailable",
        Kind::Bool,
        "true",
        "kube mode: set NetworkUnavailable=False on the node",
    ),
    f("v", Kind::Int, "0", "log level for V logs"),
    f(
        "vmodule",
        Kind::Str,
        "",
        "comma-separated list of pattern=N settings for file-filtered logging",
    ),
    f(
        "log_backtrace_at",
        Kind::Str,
        "",
        "when logging hits line file:N, emit a stack trace",
    ),
];

/// Flags whose values never appear in logs.
pub const SECRET_FLAGS: &[&str] = &["etcd-password"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Str(String),
    Int(i64),
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid value {value:?} for flag -{flag}: {why}")]
    BadValue {
        flag: String,
        value: String,
        why: &'static str,
    },
    #[error("invalid value {value:?} in environment variable {var} (flag -{flag}): {why}")]
    BadEnv {
        var: String,
        flag: String,
        value: String,
        why: &'static str,
    },
}

/// The outcome of parsing: help wanted, or the values of every flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Help,
    Values(Values),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Values {
    values: BTreeMap<&'static str, Value>,
    /// Flags given on the command line (they win over the environment).
    pub from_cli: BTreeSet<&'static str>,
    /// Positional arguments after the flags (upstream ignores them; we warn).
    pub rest: Vec<String>,
}

fn spec(name: &str) -> Option<&'static Spec> {
    FLAGS.iter().find(|s| s.name == name)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_value(kind: Kind, raw: &str) -> Result<Value, &'static str> {
    match kind {
        Kind::Bool => parse_bool(raw)
            .map(Value::Bool)
            .ok_or("not a boolean (true or false)"),
        Kind::Int => raw
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| "not an integer"),
        Kind::Str => Ok(Value::Str(raw.to_string())),
        Kind::List => Ok(Value::List(vec![raw.to_string()])),
    }
}

impl Values {
    fn set(&mut self, s: &'static Spec, v: Value) {
        match (self.values.get_mut(s.name), v) {
            (Some(Value::List(have)), Value::List(more)) if self.from_cli.contains(s.name) => {
                have.extend(more)
            }
            (_, v) => {
                self.values.insert(s.name, v);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    pub fn str(&self, name: &str) -> String {
        match self.values.get(name) {
            Some(Value::Str(s)) => s.clone(),
            _ => String::new(),
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(Value::Bool(true)))
    }

    pub fn int(&self, name: &str) -> i64 {
        match self.values.get(name) {
            Some(Value::Int(i)) => *i,
            _ => 0,
        }
    }

    pub fn list(&self, name: &str) -> Vec<String> {
        match self.values.get(name) {
            Some(Value::List(l)) => l.clone(),
            _ => Vec::new(),
        }
    }

    /// `{name: value, ...}` for the startup log, secrets masked.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = FLAGS
            .iter()
            .map(|s| {
                let v = match self.values.get(s.name) {
                    Some(_) if SECRET_FLAGS.contains(&s.name) && !self.str(s.name).is_empty() => {
                        "\"****\"".to_string()
                    }
                    Some(Value::Bool(b)) => b.to_string(),
                    Some(Value::Int(i)) => i.to_string(),
                    Some(Value::Str(x)) => format!("{x:?}"),
                    Some(Value::List(l)) => format!("{l:?}"),
                    None => "null".into(),
                };
                format!("{}: {v}", s.name)
            })
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// Parses `args` (without the program name), then fills unset flags from `env`.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, FlagError> {
    let mut v = Values::default();
    for s in FLAGS {
        let d = match s.kind {
            Kind::List => Value::List(Vec::new()),
            k => parse_value(k, s.default).unwrap_or(Value::Str(s.default.to_string())),
        };
        v.values.insert(s.name, d);
    }
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            v.rest.extend(args[i..].iter().cloned());
            break;
        }
        let Some(body) = a
            .strip_prefix("--")
            .or_else(|| a.strip_prefix('-'))
            .filter(|b| !b.is_empty() && !a.starts_with("---"))
        else {
            v.rest.extend(args[i - 1..].iter().cloned());
            break;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, val)) => (n, Some(val.to_string())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            return Ok(Parsed::Help);
        }
        let s = spec(name).ok_or_else(|| FlagError::Unknown(name.to_string()))?;
        let raw = match (s.kind, inline) {
            (_, Some(val)) => val,
            (Kind::Bool, None) => "true".to_string(),
            (_, None) => {
                let next = args
                    .get(i)
                    .ok_or_else(|| FlagError::MissingValue(name.to_string()))?;
                i += 1;
                next.clone()
            }
        };
        let val = parse_value(s.kind, &raw).map_err(|why| FlagError::BadValue {
            flag: name.to_string(),
            value: raw.clone(),
            why,
        })?;
        if s.kind == Kind::List && !v.from_cli.contains(s.name) {
            v.values.insert(s.name, Value::List(Vec::new()));
        }
        v.from_cli.insert(s.name);
        v.set(s, val);
    }
    // --version is looked at before the environment, so FLANNELD_VERSION does nothing (upstream).
    if v.bool("version") {
        return Ok(Parsed::Values(v));
    }
    for s in FLAGS {
        if v.from_cli.contains(s.name) || s.name == "version" {
            continue;
        }
        let var = format!("FLANNELD_{}", s.name.to_ascii_uppercase().replace('-', "_"));
        let Some(raw) = env(&var).filter(|x| !x.is_empty()) else {
            continue;
        };
        let val = parse_value(s.kind, &raw).map_err(|why| FlagError::BadEnv {
            var: var.clone(),
            flag: s.name.to_string(),
            value: raw.clone(),
            why,
        })?;
        v.set(s, val);
    }
    Ok(Parsed::Values(v))
}

/// The usage text printed for `-h` and after a flag error.
pub fn usage() -> String {
    let mut s = String::from("Usage: flanneld [OPTION]...\n");
    for f in FLAGS {
        let ty = match f.kind {
            Kind::Bool => "",
            Kind::Int => " int",
            Kind::Str | Kind::List => " string",
        };
        s += &format!("  -{}{ty}\n    \t{}", f.name, f.help);
        if !f.default.is_empty() && f.default != "false" && f.default != "0" {
            s += &format!(" (default {:?})", f.default);
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str], env: &[(&str, &str)]) -> Result<Values, FlagError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(&args, &|k| env.get(k).cloned())? {
            Parsed::Values(v) => Ok(v),
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn defaults_are_upstreams() {
        let v = p(&[], &[]).unwrap();
        assert_eq!(
            v.str("etcd-endpoints"),
            "http://127.0.0.1:4001,http://127.0.0.1:2379"
        );
        assert_eq!(v.str("etcd-prefix"), "/coreos.com/network");
        assert_eq!(v.str("subnet-file"), "/run/flannel/subnet.env");
        assert_eq!(v.int("subnet-lease-renew-margin"), 60);
        assert_eq!(v.int("iptables-resync"), 5);
        assert!(v.bool("iptables-forward-rules"));
        assert!(!v.bool("ip-masq"));
        assert!(v.list("iface").is_empty());
    }

    #[test]
    fn go_style_forms() {
        let v = p(
            &[
                "-ip-masq",
                "--etcd-prefix=/x",
                "-iface",
                "eth0",
                "--iface=10.0.0.5",
                "--iptables-forward-rules=false",
                "-subnet-lease-renew-margin",
                "30",
            ],
            &[],
        )
        .unwrap();
        assert!(v.bool("ip-masq"));
        assert_eq!(v.str("etcd-prefix"), "/x");
        assert_eq!(v.list("iface"), vec!["eth0", "10.0.0.5"]);
        assert!(!v.bool("iptables-forward-rules"));
        assert_eq!(v.int("subnet-lease-renew-margin"), 30);
    }

    #[test]
    fn boolean_does_not_take_next_arg() {
        let v = p(&["--ip-masq", "false"], &[]).unwrap();
        assert!(v.bool("ip-masq"));
        assert_eq!(v.rest, vec!["false"]);
    }

    #[test]
    fn env_fills_unset_flags_and_cli_wins() {
        let v = p(
            &["--etcd-prefix=/cli"],
            &[
                ("FLANNELD_ETCD_PREFIX", "/env"),
                ("FLANNELD_IP_MASQ", "true"),
                ("FLANNELD_IFACE", "eth0,eth1"),
                ("FLANNELD_PUBLIC_IP", ""),
            ],
        )
        .unwrap();
        assert_eq!(v.str("etcd-prefix"), "/cli");
        assert!(v.bool("ip-masq"));
        assert_eq!(
            v.list("iface"),
            vec!["eth0,eth1"],
            "one element, no comma splitting"
        );
        assert_eq!(v.str("public-ip"), "");
        let v = p(&["--iface=a"], &[("FLANNELD_IFACE", "b")]).unwrap();
        assert_eq!(v.list("iface"), vec!["a"]);
    }

    #[test]
    fn version_ignores_env() {
        assert!(!p(&[], &[("FLANNELD_VERSION", "true")])
            .unwrap()
            .bool("version"));
        assert!(p(&["-version"], &[]).unwrap().bool("version"));
    }

    #[test]
    fn errors_name_the_flag_or_variable() {
        assert_eq!(
            p(&["--nope"], &[]).unwrap_err().to_string(),
            "flag provided but not defined: -nope"
        );
        assert_eq!(
            p(&["--etcd-prefix"], &[]).unwrap_err().to_string(),
            "flag needs an argument: -etcd-prefix"
        );
        assert_eq!(
            p(&["--ip-masq=maybe"], &[]).unwrap_err().to_string(),
            "invalid value \"maybe\" for flag -ip-masq: not a boolean (true or false)"
        );
        assert_eq!(
            p(&[], &[("FLANNELD_IPTABLES_RESYNC", "soon")]).unwrap_err().to_string(),
            "invalid value \"soon\" in environment variable FLANNELD_IPTABLES_RESYNC (flag -iptables-resync): not an integer"
        );
        assert!(matches!(
            parse(&["-h".to_string()], &|_| None),
            Ok(Parsed::Help)
        ));
    }

    /// One row per flag: a CLI value and an env value are both read, the CLI wins, and a bad
    /// value is refused with the flag (or variable) named.
    #[test]
    fn every_flag_reads_cli_and_env_with_upstream_names() {
        // Upstream's 31, and our --kernel-resync, --state-socket and --network-policy.
        assert_eq!(FLAGS.len(), 34, "the upstream flag table");
        assert!(FLAGS.iter().any(|f| f.name == "network-policy"));
        assert!(FLAGS.iter().any(|f| f.name == "kernel-resync"));
        assert!(FLAGS.iter().any(|f| f.name == "state-socket"));
        for s in FLAGS {
            let var = format!("FLANNELD_{}", s.name.to_ascii_uppercase().replace('-', "_"));
            let (cli_val, env_val, want_cli, want_env) = match s.kind {
                Kind::Bool => {
                    let flip = s.default != "true";
                    (
                        format!("--{}={flip}", s.name),
                        (!flip).to_string(),
                        Value::Bool(flip),
                        Value::Bool(!flip),
                    )
                }
                Kind::Int => (
                    format!("--{}=7", s.name),
                    "9".to_string(),
                    Value::Int(7),
                    Value::Int(9),
                ),
                Kind::Str => (
                    format!("--{}=cli", s.name),
                    "env".to_string(),
                    Value::Str("cli".into()),
                    Value::Str("env".into()),
                ),
                Kind::List => (
                    format!("--{}=cli", s.name),
                    "env".to_string(),
                    Value::List(vec!["cli".into()]),
                    Value::List(vec!["env".into()]),
                ),
            };
            let env = [(var.as_str(), env_val.as_str())];
            let v = p(&[cli_val.as_str()], &env).unwrap();
            assert_eq!(
                v.get(s.name),
                Some(&want_cli),
                "{}: CLI wins over {var}",
                s.name
            );
            if s.name == "version" {
                continue; // FLANNELD_VERSION has no effect upstream
            }
            let v = p(&[], &env).unwrap();
            assert_eq!(
                v.get(s.name),
                Some(&want_env),
                "{}: read from {var}",
                s.name
            );
            let bad = match s.kind {
                Kind::Bool => Some("maybe"),
                Kind::Int => Some("x"),
                _ => None,
            };
            if let Some(b) = bad {
                let e = p(&[&format!("-{}={b}", s.name)], &[])
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.starts_with(&format!("invalid value \"{b}\" for flag -{}: ", s.name)),
                    "{e}"
                );
                let e = p(&[], &[(var.as_str(), b)]).unwrap_err().to_string();
                assert!(e.contains(&var), "{e}");
            }
        }
    }

    #[test]
    fn password_is_masked_in_description() {
        let v = p(&["--etcd-password=s3cret", "--etcd-username=u"], &[]).unwrap();
        let d = v.describe();
        assert!(!d.contains("s3cret"));
        assert!(d.contains("etcd-password: \"****\""));
        assert!(d.contains("etcd-username: \"u\""));
    }
}
