//! `ping-all`: every pod pings every other pod.

use crate::sh::in_ns;
use crate::state::LabState;
use std::process::Stdio;

/// `answered[i][j]`: whether pod i reached pod j (the diagonal is always true).
pub struct Matrix {
    pub pods: Vec<String>,
    pub answered: Vec<Vec<bool>>,
}

impl Matrix {
    pub fn pairs(&self) -> usize {
        self.pods.len() * self.pods.len().saturating_sub(1)
    }

    pub fn answering(&self) -> usize {
        let n = self.pods.len();
        (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|(i, j)| i != j && self.answered[*i][*j])
            .count()
    }

    pub fn all_ok(&self) -> bool {
        self.answering() == self.pairs()
    }

    pub fn render(&self) -> String {
        let names: Vec<&str> = self
            .pods
            .iter()
            .map(|p| p.split(' ').next().unwrap_or(p))
            .collect();
        let w = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
        let rw = self.pods.iter().map(String::len).max().unwrap_or(4).max(9);
        let mut s = format!("{:rw$}", "from \\ to");
        for n in &names {
            s += &format!(" {n:>w$}");
        }
        s.push('\n');
        for (i, p) in self.pods.iter().enumerate() {
            s += &format!("{p:rw$}");
            for j in 0..self.pods.len() {
                let cell = if i == j {
                    "-"
                } else if self.answered[i][j] {
                    "ok"
                } else {
                    "FAIL"
                };
                s += &format!(" {cell:>w$}");
            }
            s.push('\n');
        }
        s += &format!("{} of {} pairs answered\n", self.answering(), self.pairs());
        s
    }
}

/// One ping from `src_ns` to `dst`: three answers within 3 s, in a second window if the first
/// falls short. A fresh IPv6 lab on a loaded machine (CI runs labs in parallel) has been seen
/// to miss one 3 s window once, while neighbour discovery settled; a broken path fails both.
pub fn ping(src_ns: &str, dst: &str) -> bool {
    let once = || {
        in_ns(
            src_ns,
            "ping",
            &["-c", "3", "-i", "0.2", "-w", "3", "-q", dst],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    };
    once() || once()
}

/// A pod as people name it: its name in `default`, else `namespace/name`.
pub fn display(p: &crate::state::PodState) -> String {
    if p.namespace == "default" {
        p.name.clone()
    } else {
        p.key()
    }
}

/// Every pair over IPv4.
pub fn ping_all(state: &LabState) -> Matrix {
    ping_all_in(state, false)
}

/// Whether the lab's pods have IPv6 addresses (a dual-stack lab).
pub fn has_ipv6(state: &LabState) -> bool {
    state.pods().any(|p| !p.ip6.is_empty())
}

/// Runs every pair in parallel, one thread per source pod, over IPv6 when `v6`.
pub fn ping_all_in(state: &LabState, v6: bool) -> Matrix {
    let addr = |p: &crate::state::PodState| if v6 { p.ip6.clone() } else { p.ip.clone() };
    let pods: Vec<_> = state.pods().cloned().collect();
    let answered = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, src)| {
                let pods = &pods;
                s.spawn(move || {
                    pods.iter()
                        .enumerate()
                        .map(|(j, dst)| i == j || ping(&src.netns, &addr(dst)))
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect::<Vec<_>>()
    });
    Matrix {
        pods: pods
            .iter()
            .map(|p| format!("{} ({})", display(p), addr(p)))
            .collect(),
        answered,
    }
}
