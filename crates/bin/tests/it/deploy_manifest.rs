//! `deploy/kube-flannel.yml` against upstream's v0.28.9 manifest, object by object, as
//! `../shared/spec/upstream-flannel.md` §3.4 lists it: a cluster must be able to switch by
//! applying ours in place of upstream's. The only intended differences: our image, and the init
//! containers run our plugin's install subcommands (the image has no shell and no cp).

use flannel_lab::manifest::objects;
use serde_json::{json, Value};

fn manifest() -> Vec<Value> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kube-flannel.yml");
    objects(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_same_objects_as_upstream() {
    let objs = manifest();
    let mut got: Vec<(String, String, String)> = objs
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_string(),
                o["metadata"]["name"].as_str().unwrap().to_string(),
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    got.sort();
    let want = [
        ("ClusterRole", "flannel", ""),
        ("ClusterRoleBinding", "flannel", ""),
        ("ConfigMap", "kube-flannel-cfg", "kube-flannel"),
        ("DaemonSet", "kube-flannel-ds", "kube-flannel"),
        ("Namespace", "kube-flannel", ""),
        ("ServiceAccount", "flannel", "kube-flannel"),
    ]
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(got, want);
    let ns = find(&objs, "Namespace", "kube-flannel");
    assert_eq!(ns["metadata"]["labels"]["k8s-app"], "flannel");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

#[test]
fn rbac_grants_what_flanneld_uses_and_no_more() {
    let objs = manifest();
    let role = find(&objs, "ClusterRole", "flannel");
    let mut rules: Vec<(String, Vec<String>)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let group = r["apiGroups"][0].as_str().unwrap().to_string();
            assert_eq!(r["apiGroups"].as_array().unwrap().len(), 1);
            let verbs: Vec<String> = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            r["resources"].as_array().unwrap().iter().map(move |res| {
                let res = res.as_str().unwrap();
                let at = if group.is_empty() {
                    res.to_string()
                } else {
                    format!("{group}/{res}")
                };
                (at, verbs.clone())
            })
        })
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        vec![
            (
                "namespaces".to_string(),
                vec!["get".into(), "list".into(), "watch".into()]
            ),
            (
                "networking.k8s.io/networkpolicies".to_string(),
                vec!["list".into(), "watch".into()]
            ),
            (
                "nodes".to_string(),
                vec!["get".into(), "list".into(), "watch".into()]
            ),
            ("nodes/status".to_string(), vec!["patch".to_string()]),
            (
                "pods".to_string(),
                vec!["get".into(), "list".into(), "watch".into()]
            ),
        ]
    );
    let b = find(&objs, "ClusterRoleBinding", "flannel");
    assert_eq!(
        b["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"})
    );
    assert_eq!(
        b["subjects"],
        json!([{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}])
    );
}

#[test]
fn the_config_map_holds_upstreams_cni_and_network_config() {
    let objs = manifest();
    let cm = find(&objs, "ConfigMap", "kube-flannel-cfg");
    let cni: Value = serde_json::from_str(cm["data"]["cni-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        cni,
        json!({"name":"cbr0","cniVersion":"0.3.1","plugins":[
            {"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},
            {"type":"portmap","capabilities":{"portMappings":true}}]})
    );
    let net: Value = serde_json::from_str(cm["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        net,
        json!({"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}})
    );
}

#[test]
fn the_daemonset_runs_flanneld_as_upstream_does() {
    let objs = manifest();
    let ds = find(&objs, "DaemonSet", "kube-flannel-ds");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"],
        json!([{"matchExpressions":[{"key":"kubernetes.io/os","operator":"In","values":["linux"]}]}])
    );
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        json!([{"operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(pod["serviceAccountName"], "flannel");

    // Init containers: same names, same volumes, our install subcommands for cp/install-conf.
    let init = pod["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 2);
    assert_eq!(init[0]["name"], "install-cni-plugin");
    assert_eq!(init[0]["command"], json!(["/flannel"]));
    assert_eq!(
        init[0]["args"],
        json!(["install-plugin", "/opt/cni/bin/flannel"])
    );
    assert_eq!(
        init[0]["volumeMounts"],
        json!([{"name": "cni-plugin", "mountPath": "/opt/cni/bin"}])
    );
    assert_eq!(init[1]["name"], "install-cni");
    assert_eq!(
        init[1]["args"],
        json!([
            "install-conf",
            "/etc/kube-flannel/cni-conf.json",
            "/etc/cni/net.d/10-flannel.conflist"
        ])
    );
    assert_eq!(
        init[1]["volumeMounts"],
        json!([{"name": "cni", "mountPath": "/etc/cni/net.d"},
               {"name": "flannel-cfg", "mountPath": "/etc/kube-flannel/"}])
    );

    let c = &pod["containers"][0];
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
    assert_eq!(c["name"], "kube-flannel");
    assert_eq!(c["command"], json!(["/opt/bin/flanneld"]));
    assert_eq!(
        c["args"],
        json!(["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"])
    );
    // Network policy is one uncommented line away.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/kube-flannel.yml"
    ))
    .unwrap();
    assert!(
        text.contains("        - --healthz-port=8081\n        # flannel-rs: enforce Kubernetes NetworkPolicies on each node (docs/network-policy.md).\n        # - --network-policy\n"),
        "the commented --network-policy argument"
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": 8081})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": 8081})
    );
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "100m", "memory": "50Mi"})
    );
    assert_eq!(
        c["securityContext"],
        json!({"privileged": false, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}})
    );
    assert_eq!(
        c["env"],
        json!([
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "EVENT_QUEUE_DEPTH", "value": "5000"},
            {"name": "CONT_WHEN_CACHE_NOT_READY", "value": "false"}
        ])
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "run", "mountPath": "/run/flannel"},
               {"name": "flannel-cfg", "mountPath": "/etc/kube-flannel/"},
               {"name": "xtables-lock", "mountPath": "/run/xtables.lock"}])
    );
    let mut vols: Vec<Value> = pod["volumes"].as_array().unwrap().clone();
    vols.sort_by_key(|v| v["name"].as_str().unwrap().to_string());
    assert_eq!(
        Value::Array(vols),
        json!([
            {"name": "cni", "hostPath": {"path": "/etc/cni/net.d"}},
            {"name": "cni-plugin", "hostPath": {"path": "/opt/cni/bin"}},
            {"name": "flannel-cfg", "configMap": {"name": "kube-flannel-cfg"}},
            {"name": "run", "hostPath": {"path": "/run/flannel"}},
            {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}}
        ])
    );
    // One image for every container of the pod.
    let images: Vec<&Value> = init.iter().chain([c]).map(|c| &c["image"]).collect();
    assert!(images.iter().all(|i| *i == images[0]), "{images:?}");
}

/// The package lists of `scripts/install-deps.sh`, judged as on a machine that has nothing
/// (an empty dpkg status, so the answer is the same where everything is installed already):
/// without recommended packages no kernel image (wireguard-tools recommends a module
/// package) and no Prometheus node exporter are pulled in, and the demo's list is part of the
/// tests'.
#[test]
fn the_install_lists_pull_in_no_kernel_and_no_exporter_and_the_demos_is_part_of_the_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let list = |extra: &[&str]| -> Vec<String> {
        let o = std::process::Command::new("bash")
            .arg(root.join("scripts/install-deps.sh"))
            .arg("--print")
            .args(extra)
            .output()
            .expect("bash");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let (demo, tests) = (list(&[]), list(&["--tests"]));
    for p in &demo {
        assert!(
            tests.contains(p),
            "{p} is in the demo's list, not the tests'"
        );
    }
    let script = std::fs::read_to_string(root.join("scripts/install-deps.sh")).unwrap();
    for text in [
        script.clone(),
        std::fs::read_to_string(root.join(".ci/run")).unwrap(),
        std::fs::read_to_string(root.join("scripts/demo.sh")).unwrap(),
        std::fs::read_to_string(root.join("scripts/test.sh")).unwrap(),
    ] {
        for line in text.lines().filter(|l| l.contains("apt-get install")) {
            assert!(line.contains("--no-install-recommends"), "{line}");
        }
    }
    if std::process::Command::new("apt-get")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped the apt simulation: no apt-get here");
        return;
    }
    let empty = std::env::temp_dir().join(format!("flannel-empty-status-{}", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    for (name, pkgs) in [("demo", &demo), ("tests", &tests)] {
        let o = std::process::Command::new("apt-get")
            .args(["-s", "-o"])
            .arg(format!("Dir::State::status={}", empty.display()))
            .args(["install", "--no-install-recommends"])
            .args(pkgs)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{name}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let inst: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("Inst "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(
            inst.len() > pkgs.len() / 2,
            "{name}: nothing simulated?\n{out}"
        );
        let bad: Vec<&&str> = inst
            .iter()
            .filter(|p| p.starts_with("linux-image") || p.contains("node-exporter"))
            .collect();
        assert!(bad.is_empty(), "the {name} list pulls in {bad:?}");
    }
    let _ = std::fs::remove_file(&empty);
}
