//! flannelctl, for the operator on a node: `leases` (the datastore's view), `doctor` (what is
//! wrong here, why it breaks pods, and the fix), `trace` (a packet's path, from live kernel
//! state), `state` and `metrics` (what flanneld serves on its socket).

pub mod client;
pub mod doctor;
pub mod leases;
pub mod render;
pub mod trace;

use anyhow::{bail, Context};
use flanneld::flags::{self, Parsed};
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

fn run(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let (own, rest) = take_own(args)?;
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
            let (code, body) = client::get(&socket, "/state")?;
            println!("{}", body.trim_end());
            Ok(if code == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ["metrics"] => {
            let (code, body) = client::get(&socket, "/metrics")?;
            print!("{body}");
            Ok(if code == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ["leases"] => {
            let o = flanneld::options::Options::from_values(&values, &env)?;
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
            let src = doctor::gather::Source {
                socket: &socket,
                state_file: own.state_file.as_deref(),
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
                None => client::state(&socket)?,
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
