//! The commands: ADD, DEL, CHECK, VERSION; without `CNI_COMMAND`, the version banner or an
//! install subcommand (see `install`).

use crate::attachment;
use crate::delegate;
use crate::env::CniEnv;
use crate::error::{code, CniError};
use crate::invoke;
use crate::netconf::NetConf;
use crate::netns;
use crate::settle;
use crate::subnet_env;
use crate::SUPPORTED_VERSIONS;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn main() -> ExitCode {
    let get = |k: &str| std::env::var(k).ok();
    if get("CNI_COMMAND").unwrap_or_default().is_empty() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if let Some((sub, rest)) = args.split_first() {
            if sub.starts_with("install-") {
                return match crate::install::run(sub, rest) {
                    Ok(done) => {
                        eprintln!("{done}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("flannel {sub}: {e}");
                        ExitCode::from(1)
                    }
                };
            }
        }
        eprintln!(
            "CNI Plugin flannel version {} (linux/{}) (flannel-rs)",
            flannel_core::VERSION,
            std::env::consts::ARCH
        );
        eprintln!(
            "CNI protocol versions supported: {}",
            SUPPORTED_VERSIONS.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|x| x.as_str())
                .map(String::from)
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "1.1.0".into());
    match run(&get, &stdin) {
        Ok(out) => {
            let _ = std::io::stdout().write_all(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.to_json(&version));
            ExitCode::from(1)
        }
    }
}

/// Runs one command and returns what goes to stdout.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let env = CniEnv::from_env(get)?;
    if env.command == "VERSION" {
        let v = NetConf::parse(stdin)
            .map(|c| c.cni_version)
            .unwrap_or_default();
        let v = if v.is_empty() { "1.1.0".to_string() } else { v };
        return Ok(
            json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS})
                .to_string()
                .into_bytes(),
        );
    }
    let conf = NetConf::parse(stdin)?;
    conf.check_version()?;
    match env.command.as_str() {
        "ADD" => cmd_add(&env, &conf),
        "DEL" => cmd_del(&env, &conf),
        "CHECK" => cmd_check(&env, &conf),
        "STATUS" => cmd_status(&conf),
        "GC" => crate::gc::cmd_gc(&env, &conf, stdin),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND: {other}"),
        )),
    }
}

fn stored_path(conf: &NetConf, env: &CniEnv) -> PathBuf {
    Path::new(&conf.data_dir).join(&env.container_id)
}

fn cmd_add(env: &CniEnv, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let senv = load_env_waiting(conf)?;
    let d = delegate::build(conf, &senv).map_err(|m| CniError::new(code::INVALID_CONFIG, m))?;
    let plugin = d
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string();
    // The bridge's IPv6 addresses usable before the pod is handed over (settle.rs).
    let bridge = (plugin == "bridge").then(|| {
        d.get("bridge")
            .and_then(Value::as_str)
            .unwrap_or("cni0")
            .to_string()
    });
    let bytes = Value::Object(d).to_string().into_bytes();
    eprintln!(
        "delegateAdd: netconf sent to delegate plugin:\n{}",
        String::from_utf8_lossy(&bytes)
    );
    // Everything that would make the delegate fail for certain is checked before anything is
    // stored or run, so that a failed ADD never has to undo (and never harms) an attachment
    // it did not make.
    invoke::find_plugin(&env.path, &plugin)?;
    let path = stored_path(conf, env);
    if path.exists() {
        return Err(attachment::already_attached(&path));
    }
    if netns::has_link(&env.netns, &env.ifname)? {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_IFNAME {} already exists in {}: another attachment uses it",
                env.ifname, env.netns
            ),
        ));
    }
    attachment::save_new(&path, &bytes)?;
    let added = invoke::run(&env.path, &plugin, "ADD", &bytes).and_then(|out| {
        if let (Some(bridge), Ok(result)) = (&bridge, serde_json::from_slice::<Value>(&out)) {
            settle::wait_for_gateways(bridge, &result)?;
        }
        Ok(out)
    });
    match added {
        Ok(out) => Ok(out),
        Err(e) => {
            // Undo what the delegate may have done, then forget the config: nothing is left
            // behind. If the undo fails too and the pod has no interface of ours, the delegate
            // made nothing there (a config it cannot even read, say): nothing to keep either.
            if let Err(undo) = attachment::undo(&path, &env.path, &[]) {
                if netns::has_link(&env.netns, &env.ifname).unwrap_or(true) {
                    eprintln!(
                        "flannel: undoing the failed ADD failed too ({}); {} is kept for DEL",
                        undo.msg,
                        path.display()
                    );
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
            Err(e)
        }
    }
}

/// DEL replays the stored config. A `CNI_NETNS` that is not a network namespace any more (the
/// pod is gone, the path reused) is left out, so the delegate still frees the address.
fn cmd_del(env: &CniEnv, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let mut vars = Vec::new();
    if !env.netns.is_empty() {
        if let Err(e) = netns::check(&env.netns) {
            eprintln!("flannel: {}; running the delegate's DEL without it", e.msg);
            vars.push(("CNI_NETNS", ""));
        }
    }
    attachment::undo(&stored_path(conf, env), &env.path, &vars)?;
    Ok(Vec::new())
}

fn load_env(conf: &NetConf) -> Result<flannel_core::subnet_env::SubnetFile, CniError> {
    if std::path::Path::new(&conf.subnet_file).is_dir() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "subnetFile {} is a directory, not flanneld's subnet.env file: check subnetFile in the CNI config",
                conf.subnet_file
            ),
        ));
    }
    let text = std::fs::read_to_string(&conf.subnet_file).map_err(|e| {
        // Only a missing file means "flanneld has not written it yet": try again later.
        // Anything else (a directory, no permission) will not fix itself.
        let c = match e.kind() {
            std::io::ErrorKind::NotFound => code::TRY_AGAIN_LATER,
            _ => code::INVALID_CONFIG,
        };
        CniError::new(
            c,
            format!("failed to load flannel 'subnet.env' file: open {}: {e}. Check the flannel pod log for this node.", conf.subnet_file),
        )
    })?;
    subnet_env::parse(&conf.subnet_file, &text).map_err(|m| CniError::new(code::INVALID_CONFIG, m))
}

/// Right after a node boots the runtime may call ADD before flanneld has written subnet.env
/// (`/run` is a tmpfs): wait for it, up to `subnetFileWait` seconds, before failing.
fn load_env_waiting(conf: &NetConf) -> Result<flannel_core::subnet_env::SubnetFile, CniError> {
    let deadline = std::time::Instant::now() + conf.subnet_file_wait;
    while !std::path::Path::new(&conf.subnet_file).exists() && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    load_env(conf).map_err(|mut e| {
        if e.code == code::TRY_AGAIN_LATER && !conf.subnet_file_wait.is_zero() {
            e.msg = format!("{} (waited {} s)", e.msg, conf.subnet_file_wait.as_secs());
        }
        e
    })
}

/// STATUS (CNI 1.1.0): ready only when flanneld has written a valid subnet.env.
fn cmd_status(conf: &NetConf) -> Result<Vec<u8>, CniError> {
    load_env(conf)
        .map_err(|e| CniError::new(50, format!("flannel is not ready on this node: {}", e.msg)))?;
    Ok(Vec::new())
}

/// CHECK: the container was added by us, the node's subnet is still the one its address came
/// from, and inside the pod the interface has the addresses and routes of the previous result.
/// The delegate's CHECK is not called: Debian's bridge 1.1.1 rejects the gateway routes
/// host-local installs ("Expected Route ... not found"), so it fails healthy pods.
fn cmd_check(env: &CniEnv, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    if ["0.1.0", "0.2.0", "0.3.0", "0.3.1"].contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "config version does not allow CHECK",
        ));
    }
    let path = stored_path(conf, env);
    let bytes = std::fs::read(&path).map_err(|e| {
        CniError::new(
            3,
            format!(
                "container {} was not added by flannel: {}: {e}",
                env.container_id,
                path.display()
            ),
        )
    })?;
    let stored: Value = serde_json::from_slice(&bytes).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!(
                "stored delegate config {} is unreadable: {e}",
                path.display()
            ),
        )
    })?;
    let senv = load_env(conf)?;
    let was = stored["ipam"]["ranges"][0][0]["subnet"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let now = senv.subnet.map(|s| s.to_string()).unwrap_or_default();
    if was != now {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("the node's flannel subnet changed from {was} to {now} since container {} was added", env.container_id),
        ));
    }
    match &conf.prev_result {
        Some(prev) => crate::check::verify_pod(env, prev, &senv)?,
        None => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "CHECK needs prevResult",
            ))
        }
    }
    Ok(Vec::new())
}
