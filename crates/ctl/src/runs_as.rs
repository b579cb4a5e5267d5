//! How flanneld is run on this node, and so which commands fix it: the DaemonSet's pod
//! (`kubectl -n kube-flannel ...`), a systemd unit (`systemctl ...`), the lab (`flannel-lab
//! ...`), or something else. flanneld says so in its state; with flanneld down, the node
//! tells: flannelctl in the kube-flannel pod (`kubectl exec`) has its environment, the lab
//! says so in ours, systemd has a unit file.

use flannel_core::state::RunsAs;
use std::path::Path;

/// What the environment of flannelctl says (`kubectl exec` gives the pod's).
pub struct Hints {
    pub runs_as: RunsAs,
    /// The kube-flannel pod we run in (`POD_NAME`).
    pub pod: Option<String>,
    /// The lab's node and name.
    pub lab_node: Option<String>,
    pub lab_name: Option<String>,
    pub lab_state: Option<String>,
}

impl Hints {
    /// From flannelctl's environment and the node's files; `reported` is what a running
    /// flanneld said of itself, which wins.
    pub fn detect(env: &dyn Fn(&str) -> Option<String>, reported: Option<RunsAs>) -> Self {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        let runs_as = reported.unwrap_or_else(|| {
            if get("FLANNEL_LAB_STATE_DIR").is_some() {
                RunsAs::Lab
            } else if get("KUBERNETES_SERVICE_HOST").is_some()
                || Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
            {
                RunsAs::DaemonSet
            } else if Path::new("/run/systemd/system").exists()
                && [
                    "/etc/systemd/system/flanneld.service",
                    "/lib/systemd/system/flanneld.service",
                    "/usr/lib/systemd/system/flanneld.service",
                ]
                .iter()
                .any(|p| Path::new(p).exists())
            {
                RunsAs::Systemd
            } else {
                RunsAs::Process
            }
        });
        Self {
            runs_as,
            pod: get("POD_NAME"),
            lab_node: get("FLANNEL_LAB_NODE"),
            lab_name: get("FLANNEL_LAB_NAME"),
            lab_state: get("FLANNEL_LAB_STATE_DIR"),
        }
    }

    /// How to start flanneld again and see why it stopped, for this case only.
    pub fn restart(&self) -> String {
        match self.runs_as {
            RunsAs::DaemonSet => match &self.pod {
                Some(p) => format!(
                    "kubectl -n kube-flannel delete pod {p}   # the DaemonSet starts a new one; why this one stopped: kubectl -n kube-flannel logs {p}"
                ),
                None => "kubectl -n kube-flannel delete pod <the kube-flannel-ds pod on this node>   # the DaemonSet starts a new one; why it stopped: kubectl -n kube-flannel logs <that pod>".into(),
            },
            RunsAs::Systemd => {
                "systemctl restart flanneld   # why it stopped: journalctl -u flanneld -n 50".into()
            }
            RunsAs::Lab => {
                let node = self.lab_node.as_deref().unwrap_or("<node>");
                let name = self
                    .lab_name
                    .as_deref()
                    .filter(|n| *n != "flab")
                    .map(|n| format!(" --name {n}"))
                    .unwrap_or_default();
                let log = match &self.lab_state {
                    Some(d) => format!("{d}/{node}/flanneld.log"),
                    None => "the node's flanneld.log in the lab's state directory".into(),
                };
                format!("flannel-lab restart {node}{name}   # why it stopped: {log}")
            }
            RunsAs::Process => {
                "start flanneld again the way it was started (its log says why it stopped)".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn each_way_of_running_gets_its_own_fix_only() {
        let pod = Hints::detect(
            &env(&[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("POD_NAME", "kube-flannel-ds-x"),
            ]),
            None,
        );
        assert_eq!(pod.runs_as, RunsAs::DaemonSet);
        assert!(pod
            .restart()
            .starts_with("kubectl -n kube-flannel delete pod kube-flannel-ds-x"));
        assert!(!pod.restart().contains("systemctl"));
        let lab = Hints::detect(
            &env(&[
                ("FLANNEL_LAB_STATE_DIR", "/run/flannel-lab/t1"),
                ("FLANNEL_LAB_NODE", "node1"),
                ("FLANNEL_LAB_NAME", "t1"),
                ("KUBERNETES_SERVICE_HOST", "10.0.0.50"),
            ]),
            None,
        );
        assert_eq!(lab.runs_as, RunsAs::Lab);
        assert_eq!(
            lab.restart(),
            "flannel-lab restart node1 --name t1   # why it stopped: /run/flannel-lab/t1/node1/flanneld.log"
        );
        let reported = Hints::detect(&env(&[]), Some(RunsAs::Systemd));
        assert!(reported.restart().starts_with("systemctl restart flanneld"));
    }
}
