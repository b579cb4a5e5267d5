//! flannelctl run on a lab node as an operator runs it there: in the node's network namespace,
//! against its flanneld's state socket; and flanneld paused so that drift stays for a check
//! to find (it would heal it within a second).

use flannel_lab::state::NodeState;
use serde_json::Value;
use std::process::Command;

/// `flannelctl ARGS` in the node's namespace (in kube mode also in its pod's view of the
/// files, as `kubectl exec` into the flannel pod gives): exit code and output.
pub fn ctl(n: &NodeState, args: &[&str]) -> (i32, String) {
    let o = flannel_lab::cluster::flannelctl(n, args).expect("flannelctl runs");
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (o.status.code().unwrap_or(-1), format!("{out}{err}"))
}

/// `flannelctl doctor -o json` (plus `extra`): its exit code and every check's verdict.
pub fn doctor(n: &NodeState, extra: &[&str]) -> (i32, Vec<Value>) {
    let mut args = vec!["doctor", "-o", "json"];
    args.extend_from_slice(extra);
    let (code, out) = ctl(n, &args);
    let json = out.split_once('\n').map_or(out.as_str(), |_| out.as_str());
    let start = json.find('[').unwrap_or(0);
    let end = json.rfind(']').map_or(json.len(), |e| e + 1);
    let v: Vec<Value> = serde_json::from_str(&json[start..end])
        .unwrap_or_else(|e| panic!("doctor -o json: {e}\n{out}"));
    (code, v)
}

/// The verdict of one check.
pub fn verdict<'a>(all: &'a [Value], check: &str) -> &'a Value {
    all.iter()
        .find(|v| v["check"] == check)
        .unwrap_or_else(|| panic!("no check {check} in {all:#?}"))
}

/// The checks that failed, by name.
pub fn failed(all: &[Value]) -> Vec<String> {
    all.iter()
        .filter(|v| v["ok"] == false)
        .map(|v| v["check"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Runs `cmd` with `sh -c` in the node's namespace (with `env`), as the operator pastes a fix.
pub fn sh_in(n: &NodeState, cmd: &str, env: &[(&str, &str)]) {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &n.netns, "sh", "-c", cmd])
        .envs(env.iter().copied());
    flannel_lab::nodefs::apply(&mut c, &n.binds).expect("the pod's mounts");
    let o = c.output().expect("sh runs");
    assert!(
        o.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Asserts that `check` fails with a problem containing `says`, runs the fix it prints, and
/// returns that fix.
pub fn fails_then_fix(n: &NodeState, all: &[Value], check: &str, says: &str) -> String {
    let v = verdict(all, check);
    assert_eq!(v["ok"], false, "{check} should fail: {v:#}");
    let problems = v["problems"].to_string();
    assert!(
        problems.contains(says),
        "{check}: {problems} lacks {says:?}"
    );
    assert!(
        !v["why"].as_str().unwrap_or("").is_empty(),
        "{check} says why"
    );
    let fix = v["fix"]
        .as_str()
        .unwrap_or_else(|| panic!("{check} has a fix: {v:#}"));
    sh_in(n, fix, &[]);
    fix.to_string()
}

/// flanneld of a node stopped (SIGSTOP) until dropped: drift it would heal stays.
pub struct Paused(Vec<i32>);

impl Paused {
    pub fn flanneld(n: &NodeState) -> Self {
        let pids = flannel_lab::cluster::flanneld_pids(n);
        assert!(!pids.is_empty(), "flanneld runs on {}", n.name);
        for p in &pids {
            // SAFETY: kill(2) on flanneld PIDs of the test's own lab.
            unsafe { libc::kill(*p, libc::SIGSTOP) };
        }
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for p in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(*p, libc::SIGCONT) };
        }
    }
}
