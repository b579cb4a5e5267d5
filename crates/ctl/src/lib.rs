//! flannelctl, for the operator on a node: `leases` (the datastore's view), `doctor` (what is
//! wrong here, why it breaks pods, and the fix), `trace` (a packet's path, from live kernel
//! state), `state` and `metrics` (what flanneld serves on its socket).

pub mod client;
pub mod doctor;
pub mod leases;
pub mod render;
pub mod runs_as;
pub mod trace;

use anyhow::{bail, Context};
use flannel_cli::flags::{self, Parsed};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: flannelctl [flags] <command>

commands:
  leases [-o json]              the leases in the datastore: subnet, public IP, backend, VTEP MAC or key, expiry
  doctor [-o json] [--state-file=F]
                                check this node; for each failure: what, why it breaks pods, the fix
  trace [-o json] <src IP> <dst IP>
                                the path of a packet from src to dst through this node's kernel
  state                         flanneld's state snapshot (JSON), as served on its socket
  metrics                       flanneld's Prometheus metrics, as served on its socket

flags: flanneld's own (and its FLANNELD_* variables): --state-socket (default
/run/flannel/flanneld.sock) for doctor, trace, state and metrics; the datastore flags
(--etcd-endpoints, --etcd-prefix, --etcd-*file, --kube-subnet-mgr, --kubeconfig-file, ...)
for leases. Run it on the node, in its network namespace.
";

/// Our own options, taken out of the arguments before flanneld's parser reads the rest.
#[derive(Debug, Default, PartialEq)]
struct Own {
    json: bool,
    state_file: Option<PathBuf>,
}

fn take_own(args: Vec<String>) -> anyhow::Result<(Own, Vec<String>)> {
    let mut own = Own::default();
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let output = match a.as_str() {
            "-o" | "--output" => Some(it.next().context("-o needs a format: json or table")?),
            _ => a
                .strip_prefix("-o=")
                .or_else(|| a.strip_prefix("--output="))
                .map(String::from),
        };
        if let Some(o) = output {
            own.json = match o.as_str() {
                "json" => true,
                "table" | "text" => false,
                other => bail!("-o {other}: unknown format (json or table)"),
            };
        } else if let Some(f) = a.strip_prefix("--state-file=") {
            own.state_file = Some(PathBuf::from(f));
        } else {
            rest.push(a);
        }
    }
    Ok((own, rest))
}

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "help")
        || args.is_empty()
    {
        eprint!("{USAGE}");
        return ExitCode::from(if args.is_empty() { 2 } else { 0 });
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
        .init();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flannelctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The arguments with every flag (and the value it takes) before the words, so that flags
/// may stand before or after the command, as with kubectl: flanneld's parser, like Go's,
/// stops at the first word. `--` ends the flags.
fn flags_first(args: Vec<String>) -> Vec<String> {
    let mut flags = Vec::new();
    let mut words = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--" {
            words.extend(it.by_ref());
            break;
        }
        if a.len() < 2 || !a.starts_with('-') {
            words.push(a);
            continue;
        }
        let name = a.trim_start_matches('-');
        let takes_value = !name.contains('=')
            && flags::FLAGS
                .iter()
                .any(|f| f.name == name && f.kind != flags::Kind::Bool);
        flags.push(a);
        if takes_value {
            if let Some(v) = it.next() {
                flags.push(v);
            }
        }
    }
    flags.extend(words);
    flags
}

fn run(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let (own, rest) = take_own(args)?;
    let rest = flags_first(rest);
    let env = |k: &str| {
        std::env::var(k).ok().or_else(|| {
            // kube mode needs a node name; any will do for reading the leases.
            (k == "NODE_NAME").then(|| "flannelctl".to_string())
        })
    };
    let values = match flags::parse(&rest, &env) {
        Ok(Parsed::Values(v)) => v,
        Ok(Parsed::Help) => {
            eprint!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => bail!("{e}"),
    };
    let socket = PathBuf::from(values.str("state-socket"));
    let words: Vec<&str> = values.rest.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match words.as_slice() {
        ["state"] => {
            let (code, body) =
                client::get(&socket, "/state").map_err(|e| not_answering(&socket, e, &env))?;
            println!("{}", body.trim_end());
            Ok(if code == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ["metrics"] => {
            let (code, body) =
                client::get(&socket, "/metrics").map_err(|e| not_answering(&socket, e, &env))?;
            print!("{body}");
            Ok(if code == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ["leases"] => {
            let o = leases_options(&values, &env, &socket)?;
            let l = rt.block_on(leases::list(&o))?;
            if own.json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                print!("{}", leases::table(&l, now));
            }
            Ok(ExitCode::SUCCESS)
        }
        ["doctor"] => {
            let subnet_file = PathBuf::from(values.str("subnet-file"));
            let src = doctor::gather::Source {
                socket: &socket,
                state_file: own.state_file.as_deref(),
                subnet_file: &subnet_file,
                env: &env,
            };
            let facts = rt.block_on(doctor::gather::gather(&src))?;
            let v = doctor::checks::all(&facts);
            if own.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", doctor::render(&v));
            }
            Ok(if v.iter().all(|c| c.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ["trace", args @ ..] => {
            let (src, dst) = trace_args(args)?;
            let state = match &own.state_file {
                Some(f) => client::state_from_file(f)?,
                None => client::state(&socket).map_err(|e| not_answering(&socket, e, &env))?,
            };
            let steps = rt.block_on(trace_live(&state, src, dst))?;
            if own.json {
                println!("{}", serde_json::to_string_pretty(&steps)?);
            } else {
                print!("{}", trace::render(src, dst, &steps));
            }
            Ok(if steps.iter().all(|s| s.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        [] => bail!("no command given\n{USAGE}"),
        other => bail!("unknown command {:?}\n{USAGE}", other.join(" ")),
    }
}

/// flanneld does not answer on its socket: said in words, with how to start it again here
/// (a busy flanneld is said as such).
fn not_answering(
    socket: &std::path::Path,
    e: anyhow::Error,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Error {
    if e.downcast_ref::<client::Busy>().is_some() {
        return e;
    }
    let fix = runs_as::Hints::detect(env, None).restart();
    anyhow::anyhow!(
        "flanneld is not answering on {} ({e:#}); is it running? {fix} (a socket elsewhere: --state-socket=PATH; with flanneld down, `flannelctl doctor` still checks the node)",
        socket.display()
    )
}

/// The flags that say which datastore to read and how (a password alone does not: it goes
/// with whatever the datastore is).
const DATASTORE_FLAGS: [&str; 10] = [
    "etcd-endpoints",
    "etcd-prefix",
    "etcd-keyfile",
    "etcd-certfile",
    "etcd-cafile",
    "etcd-username",
    "kube-subnet-mgr",
    "kube-api-url",
    "kubeconfig-file",
    "kube-annotation-prefix",
];

fn env_var(flag: &str) -> String {
    format!("FLANNELD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// How `leases` reaches the datastore: the flags and `FLANNELD_*` variables given, else what
/// the running flanneld says it uses (over its state socket; never a password), else an error
/// saying both what was tried and what to give.
fn leases_options(
    values: &flags::Values,
    env: &dyn Fn(&str) -> Option<String>,
    socket: &std::path::Path,
) -> anyhow::Result<flannel_cli::Options> {
    let given = DATASTORE_FLAGS
        .iter()
        .any(|f| values.from_cli.contains(f) || env(&env_var(f)).is_some_and(|v| !v.is_empty()));
    if given {
        return Ok(flannel_cli::Options::from_values(values, env)?);
    }
    let state = client::state(socket).map_err(|e| {
        anyhow::anyhow!(
            "no datastore flags were given, and flanneld does not answer on {} to say which datastore it uses ({e:#}); give them: --etcd-endpoints=URL[,URL] (with --etcd-prefix, --etcd-cafile, --etcd-certfile, --etcd-keyfile, --etcd-username as flanneld has them), or --kube-subnet-mgr with --kubeconfig-file=FILE (or run it in the kube-flannel pod)",
            socket.display()
        )
    })?;
    let Some(access) = state.node.access else {
        bail!(
            "flanneld on {} does not say how it reaches its datastore (an older version?): give the datastore flags (--etcd-endpoints, or --kube-subnet-mgr with --kubeconfig-file)",
            socket.display()
        );
    };
    let mut args: Vec<String> = match access {
        flannel_core::state::DatastoreAccess::Etcd {
            endpoints,
            prefix,
            keyfile,
            certfile,
            cafile,
            username,
        } => vec![
            format!("--etcd-endpoints={}", endpoints.join(",")),
            format!("--etcd-prefix={prefix}"),
            format!("--etcd-keyfile={keyfile}"),
            format!("--etcd-certfile={certfile}"),
            format!("--etcd-cafile={cafile}"),
            format!("--etcd-username={username}"),
        ],
        flannel_core::state::DatastoreAccess::Kubernetes {
            kubeconfig,
            api_url,
            annotation_prefix,
            ..
        } => vec![
            "--kube-subnet-mgr".into(),
            format!("--kubeconfig-file={kubeconfig}"),
            format!("--kube-api-url={api_url}"),
            format!("--kube-annotation-prefix={annotation_prefix}"),
        ],
    };
    // The password, if any, from the flag or variable as given.
    if values.from_cli.contains("etcd-password") {
        args.push(format!("--etcd-password={}", values.str("etcd-password")));
    }
    let from_flanneld = match flags::parse(&args, env).map_err(|e| anyhow::anyhow!("{e}"))? {
        flags::Parsed::Values(v) => v,
        flags::Parsed::Help => bail!("flanneld's datastore settings could not be read"),
    };
    Ok(flannel_cli::Options::from_values(&from_flanneld, env)?)
}

/// `trace`'s two addresses, each parsed, of one family.
fn trace_args(args: &[&str]) -> anyhow::Result<(IpAddr, IpAddr)> {
    const HOW: &str = "usage: flannelctl trace <src IP> <dst IP>";
    let parse = |w: &str| -> anyhow::Result<IpAddr> {
        w.parse()
            .with_context(|| format!("trace: {w:?} is not an IP address ({HOW})"))
    };
    let (src, dst) = match args {
        [src, dst] => (parse(src)?, parse(dst)?),
        [] => bail!("trace needs a source and a destination address ({HOW})"),
        [one] => bail!("trace needs a destination address too: only {one} was given ({HOW})"),
        more => bail!(
            "trace takes two addresses, {} were given: {} ({HOW})",
            more.len(),
            more.join(" ")
        ),
    };
    if src.is_ipv4() != dst.is_ipv4() {
        bail!("trace: {src} and {dst} are of different families; a packet goes from an address to one of the same family");
    }
    Ok((src, dst))
}

/// The trace from the kernel's answers now.
async fn trace_live(
    state: &flannel_core::state::StateSnapshot,
    src: IpAddr,
    dst: IpAddr,
) -> anyhow::Result<Vec<trace::Step>> {
    use flannel_net::NetOps;
    let nl = flannel_net::Netlink::new()?;
    let mut kernel = doctor::checks::Facts::default();
    doctor::gather::kernel(&nl, state, &mut kernel).await?;
    let links = nl.links().await?;
    let name = |i: u32| links.iter().find(|l| l.index == i).map(|l| l.name.clone());
    let ask = |r: flannel_net::ops::RouteGet| match r {
        Some((oif, src, gw)) => trace::RouteAnswer {
            dev: name(oif),
            gw,
            src,
        },
        None => trace::RouteAnswer::default(),
    };
    let to_dst = ask(nl.route_get_full(dst).await.unwrap_or(None));
    let public = trace::lease_of(state, dst).and_then(|l| {
        if dst.is_ipv6() {
            l.public_ipv6
        } else {
            l.public_ip
        }
    });
    let to_underlay = match public {
        Some(p) => Some(ask(nl.route_get_full(p).await.unwrap_or(None))),
        None => None,
    };
    let ext_mtu = links
        .iter()
        .find(|l| l.name == state.node.iface)
        .map_or(state.node.iface_mtu, |l| l.mtu);
    Ok(trace::walk(
        &trace::TraceFacts {
            state,
            kernel: &kernel,
            to_dst,
            to_underlay,
            ext_mtu,
        },
        src,
        dst,
    ))
}

#[cfg(test)]
mod flags_first_tests {
    use super::flags_first;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_move_before_the_command_with_their_values() {
        assert_eq!(
            flags_first(v(&["leases", "--etcd-endpoints=http://x:2379"])),
            v(&["--etcd-endpoints=http://x:2379", "leases"])
        );
        assert_eq!(
            flags_first(v(&[
                "leases",
                "--etcd-endpoints",
                "http://x:2379",
                "--kube-subnet-mgr"
            ])),
            v(&[
                "--etcd-endpoints",
                "http://x:2379",
                "--kube-subnet-mgr",
                "leases"
            ])
        );
        assert_eq!(
            flags_first(v(&["trace", "10.0.0.1", "-state-socket", "/s", "10.0.0.2"])),
            v(&["-state-socket", "/s", "trace", "10.0.0.1", "10.0.0.2"])
        );
        assert_eq!(
            flags_first(v(&["trace", "--", "-1", "x"])),
            v(&["trace", "-1", "x"])
        );
    }
}

#[cfg(test)]
mod trace_args_tests {
    use super::trace_args;

    #[test]
    fn a_missing_address_and_mixed_families_are_named() {
        let e = |a: &[&str]| format!("{:#}", trace_args(a).unwrap_err());
        assert!(e(&["10.244.0.2"])
            .starts_with("trace needs a destination address too: only 10.244.0.2 was given"));
        assert!(e(&[]).starts_with("trace needs a source and a destination address"));
        assert!(e(&["::1", "10.244.0.2"]).contains("::1 and 10.244.0.2 are of different families"));
        assert!(e(&["10.244.0.2", "x"]).contains("\"x\" is not an IP address"));
        assert!(e(&["1.1.1.1", "2.2.2.2", "3.3.3.3"]).contains("3 were given"));
        assert!(trace_args(&["fd00::1", "fd00::2"]).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_state_file_are_ours_the_rest_is_flanneld_s() {
        let (own, rest) = take_own(
            [
                "doctor",
                "-o",
                "json",
                "--state-file=/tmp/s.json",
                "--etcd-endpoints=http://x:2379",
            ]
            .map(String::from)
            .to_vec(),
        )
        .unwrap();
        assert!(own.json);
        assert_eq!(own.state_file, Some(PathBuf::from("/tmp/s.json")));
        assert_eq!(rest, ["doctor", "--etcd-endpoints=http://x:2379"]);
        assert!(take_own(vec!["-o".into(), "yaml".into()]).is_err());
    }
}
