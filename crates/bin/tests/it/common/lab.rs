//! A lab (flannel-lab's whole cluster in namespaces) that is torn down when the test ends, pass
//! or fail; one that tests which only read share; and a namespace plugged into its switch.

use super::{bin_dir, eventually, ip, require_root, unique, Netns, Proc, TempDir};
use flannel_lab::cluster::{start_flanneld, stop_flanneld};
use flannel_lab::state::NodeState;
use flannel_lab::{down, up, LabSpec, LabState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

pub struct Lab {
    pub state: LabState,
    pub name: String,
    pub root: TempDir,
}

impl Lab {
    pub fn up(nodes: usize, pods: usize, flanneld_args: &[&str]) -> Lab {
        Self::up_with(LabSpec {
            nodes,
            pods_per_node: pods,
            flanneld_args: flanneld_args.iter().map(|s| s.to_string()).collect(),
            ..LabSpec::default()
        })
    }

    pub fn up_with(spec: LabSpec) -> Lab {
        require_root();
        let root = TempDir::new("lab");
        let name = unique("t");
        let spec = LabSpec {
            lab: name.clone(),
            state_root: root.path().to_path_buf(),
            bin_dir: bin_dir(),
            ..spec
        };
        match up(&spec) {
            Ok(state) => Lab { state, name, root },
            Err(e) => {
                let _ = down(&name, root.path());
                panic!("lab up failed: {e:#}");
            }
        }
    }

    /// `flannel-lab --name <this lab> --state-dir <its root> ARGS`, as a user runs it:
    /// whether it succeeded, its stdout, its stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let o = std::process::Command::new(bin_dir().join("flannel-lab"))
            .args(["--name", &self.name, "--state-dir"])
            .arg(self.root.path())
            .args(args)
            .output()
            .expect("run flannel-lab");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// The third octet `o` of a 10.244.o.0/24 at or after `from` that no lab node holds, nor
    /// fd00:10:244:o::/64 (in hex): a test's made-up peer must not claim a subnet flanneld
    /// happened to lease (allocation is random).
    pub fn spare_octet(&self, from: u8) -> u8 {
        (from..=255)
            .find(|o| {
                let (v4, v6) = (
                    format!("10.244.{o}.0/24"),
                    format!("fd00:10:244:{o:x}::/64"),
                );
                !self
                    .state
                    .nodes
                    .iter()
                    .any(|n| n.subnet == v4 || n.subnet6 == v6)
            })
            .expect("a free /24 in 10.244.0.0/16")
    }

    /// A namespace of the test's own, plugged into the lab's switch with `eth0` at `addr`
    /// (a /24 of the underlay).
    pub fn on_switch(&self, tag: &str, addr: &str) -> Netns {
        let ns = Netns::new(tag);
        let sw = format!("{}-sw", self.name);
        let port = format!("p{}", &ns.0[ns.0.len().saturating_sub(8)..]);
        ip(&[
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
        ]);
        ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
        ip(&["-n", &ns.0, "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
        ns
    }
}

/// Labs shared by the tests that only read them, by spec: brought up by the first test that
/// asks, kept for the rest of the test process, torn down when it exits.
type Shared = Mutex<HashMap<String, Arc<OnceLock<&'static Lab>>>>;

fn shared_labs() -> &'static Shared {
    static LABS: OnceLock<Shared> = OnceLock::new();
    LABS.get_or_init(Shared::default)
}

/// At the test process's exit, pass or fail (libtest returns from main or calls exit): every
/// shared lab goes down, as an unshared one does when its test ends.
extern "C" fn down_shared_labs() {
    let labs = shared_labs().lock().unwrap_or_else(|p| p.into_inner());
    for lab in labs.values().filter_map(|cell| cell.get()) {
        if let Err(e) = down(&lab.name, lab.root.path()) {
            eprintln!("lab down: {e:#}");
        }
        let _ = std::fs::remove_dir_all(lab.root.path());
    }
}

impl Lab {
    /// The lab for `spec` that tests which only read share (doctor's checks of a healthy
    /// node, trace's walks, pings): one set-up instead of one per test. A test that changes
    /// anything in the lab (stops a daemon, deletes a route, writes a lease) takes one of its
    /// own with [`Lab::up_with`]. Tests asking for the same spec at once wait for one set-up.
    pub fn shared(spec: LabSpec) -> &'static Lab {
        static AT_EXIT: Once = Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain function without arguments, run once at exit.
            unsafe { libc::atexit(down_shared_labs) };
        });
        let cell = shared_labs()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(format!("{spec:?}"))
            .or_default()
            .clone();
        let lab = cell.get_or_init(|| {
            let lab = Lab::up_with(spec);
            eprintln!("shared lab up: {} {}", lab.name, lab.root.path().display());
            Box::leak(Box::new(lab))
        });
        // For the test that a failing user still leaves nothing behind.
        if std::env::var_os("FLANNEL_TEST_FAIL_IN_SHARED_LAB").is_some() {
            panic!("failing on purpose (FLANNEL_TEST_FAIL_IN_SHARED_LAB)");
        }
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = down(&self.name, self.root.path()) {
            eprintln!("lab down: {e:#}");
        }
    }
}

/// How many times `n`'s flanneld has said "flannel is ready" in its log.
pub fn ready_count(n: &NodeState) -> usize {
    std::fs::read_to_string(&n.log)
        .unwrap_or_default()
        .matches("flannel is ready")
        .count()
}

/// Starts `n`'s flanneld as the lab did and waits (10 s at most) until it says it is ready
/// once more than `before` times.
pub fn start_until_ready(n: &NodeState, before: usize) -> Proc {
    let p = Proc(start_flanneld(n).unwrap());
    let ready = eventually(Duration::from_secs(10), || ready_count(n) > before);
    assert!(ready.is_some(), "{} did not come back", n.name);
    p
}

/// Stops `n`'s flanneld and starts it again, back once it is ready.
pub fn restart_flanneld(n: &NodeState) -> Proc {
    let before = ready_count(n);
    stop_flanneld(n).unwrap();
    start_until_ready(n, before)
}
