//! `flannel-kube-fake`: the fake as a process, for the lab. Objects survive a restart through
//! `--state` (saved on SIGTERM/SIGINT, loaded at start), the history does not, as an API
//! server's watch cache does not; SIGUSR1 compacts the history. `--seed` creates objects at
//! start from a JSON array of `{"kind": "Node"|"Pod"|"ConfigMap", "namespace": .., "object": ..}`.

use crate::{FakeApi, Kind, Options};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: flannel-kube-fake --listen IP:PORT --dir DIR [--netns FILE] [--token T] [--state FILE] [--seed FILE] [--bookmark-seconds N] [--heartbeats PER_SECOND]";

/// kubelet's status heartbeats: `per_second` status patches spread over the Nodes in turn (a
/// new `lastHeartbeatTime` on the Ready condition: a MODIFIED event with the whole object).
fn heartbeats(api: std::sync::Arc<FakeApi>, per_second: u64) {
    std::thread::spawn(move || {
        let every = Duration::from_micros(1_000_000 / per_second.max(1));
        let mut names: Vec<String> = Vec::new();
        let mut i = 0usize;
        loop {
            if i.is_multiple_of(1000) || names.is_empty() {
                names = api.names(Kind::Node);
            }
            if let Some(n) = names.get(i % names.len().max(1)) {
                let now = flannel_core::time::now_rfc3339();
                let _ = api.patch(
                    Kind::Node,
                    "",
                    n,
                    crate::PatchType::Strategic,
                    &serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now}]}}),
                    true,
                );
            }
            i += 1;
            std::thread::sleep(every);
        }
    });
}

fn seed(api: &FakeApi, path: &PathBuf) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let items: Vec<Value> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for it in &items {
        let kind = match it["kind"].as_str() {
            Some("Node") => Kind::Node,
            Some("Pod") => Kind::Pod,
            Some("ConfigMap") => Kind::ConfigMap,
            other => return Err(format!("{}: unknown kind {other:?}", path.display())),
        };
        let ns = it["namespace"].as_str().unwrap_or("default");
        api.create(kind, ns, it["object"].clone())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(items.len())
}

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| -> Option<String> {
        let pos = args.iter().position(|a| a == name)?;
        args.get(pos + 1).cloned()
    };
    let (Some(listen), Some(dir)) = (get("--listen"), get("--dir")) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let Ok(listen) = listen.parse() else {
        eprintln!("--listen {listen:?} is not IP:PORT\n{USAGE}");
        return ExitCode::from(2);
    };
    let mut o = Options::new(listen, dir);
    o.netns = get("--netns").map(PathBuf::from);
    if let Some(t) = get("--token") {
        o.token = t;
    }
    if let Some(s) = get("--bookmark-seconds").and_then(|s| s.parse().ok()) {
        o.bookmark_every = Duration::from_secs(s);
    }
    let state = get("--state").map(PathBuf::from);
    let beats = get("--heartbeats")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let seed_file = get("--seed").map(PathBuf::from);
    let api = match FakeApi::start(o) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flannel-kube-fake: {e}");
            return ExitCode::from(1);
        }
    };
    match &state {
        Some(s) if s.exists() => match api.load(s) {
            Ok(n) => eprintln!("flannel-kube-fake: loaded {n} objects from {}", s.display()),
            Err(e) => {
                eprintln!("flannel-kube-fake: {e}");
                return ExitCode::from(1);
            }
        },
        _ => {
            if let Some(f) = &seed_file {
                match seed(&api, f) {
                    Ok(n) => eprintln!(
                        "flannel-kube-fake: created {n} objects from {}",
                        f.display()
                    ),
                    Err(e) => {
                        eprintln!("flannel-kube-fake: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
        }
    }
    let api = std::sync::Arc::new(api);
    if beats > 0 {
        heartbeats(api.clone(), beats);
    }
    eprintln!(
        "flannel-kube-fake: serving {} (kubeconfig {})",
        api.url(),
        api.kubeconfig().display()
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flannel-kube-fake: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut usr1)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined1()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    api.compact();
                    eprintln!("flannel-kube-fake: history compacted at {}", api.resource_version());
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
    });
    if let Some(s) = &state {
        if let Err(e) = api.save(s) {
            eprintln!("flannel-kube-fake: {e}");
            return ExitCode::from(1);
        }
    }
    eprintln!("flannel-kube-fake: stopped");
    ExitCode::SUCCESS
}
