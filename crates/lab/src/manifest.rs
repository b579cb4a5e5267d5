//! `deploy/kube-flannel.yml` read as the kubelet would run it on one node: the ConfigMap's files,
//! the DaemonSet's init containers and its flannel container (command, args, env, mounts) and
//! the volumes behind the mounts. The lab runs exactly this, so the manifest is what is tested.

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The repository's manifest, built in: `flannel-lab up --datastore kube` runs it unless
/// `--manifest FILE` names another.
pub const DEFAULT: &str = include_str!("../../../deploy/kube-flannel.yml");

/// Where a volume's files come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Volume {
    /// A path on the node; `file` when its type says it is a file (`FileOrCreate`, `File`).
    HostPath { path: String, file: bool },
    /// The files of a ConfigMap of the manifest, one per key.
    ConfigMap { name: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum EnvValue {
    Value(String),
    /// `valueFrom.fieldRef.fieldPath`, e.g. `metadata.name`.
    Field(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub name: String,
    /// `command` then `args`: the image's program and its arguments.
    pub argv: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    /// (volume name, mount path)
    pub mounts: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub namespace: String,
    pub daemonset: String,
    pub service_account: String,
    pub init: Vec<Container>,
    pub flannel: Container,
    pub volumes: BTreeMap<String, Volume>,
    /// ConfigMap name → its data (file name → contents).
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

/// Every object of a multi-document YAML file.
pub fn objects(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| anyhow!("not valid YAML: {e}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn str_at<'a>(v: &'a Value, path: &str, what: &str) -> anyhow::Result<&'a str> {
    v.pointer(path)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{what}: no {path}"))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn container(c: &Value) -> anyhow::Result<Container> {
    let name = str_at(c, "/name", "a container")?.to_string();
    let what = format!("container {name}");
    let mut argv = strings(c.get("command"));
    if argv.is_empty() {
        bail!("{what}: no command (the image has no entrypoint to fall back on)");
    }
    argv.extend(strings(c.get("args")));
    let mut env = Vec::new();
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let k = str_at(e, "/name", &what)?.to_string();
        let v = if let Some(f) = e.pointer("/valueFrom/fieldRef/fieldPath") {
            EnvValue::Field(f.as_str().unwrap_or_default().to_string())
        } else {
            EnvValue::Value(
                e.get("value")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        env.push((k, v));
    }
    let mut mounts = Vec::new();
    for m in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        mounts.push((
            str_at(m, "/name", &what)?.to_string(),
            str_at(m, "/mountPath", &what)?.to_string(),
        ));
    }
    Ok(Container {
        name,
        argv,
        env,
        mounts,
    })
}

fn volume(v: &Value) -> anyhow::Result<(String, Volume)> {
    let name = str_at(v, "/name", "a volume")?.to_string();
    let vol = if let Some(h) = v.get("hostPath") {
        let path = str_at(h, "/path", &format!("volume {name}"))?.to_string();
        let ty = h.get("type").and_then(Value::as_str).unwrap_or_default();
        Volume::HostPath {
            path,
            file: matches!(ty, "FileOrCreate" | "File"),
        }
    } else if let Some(c) = v.get("configMap") {
        Volume::ConfigMap {
            name: str_at(c, "/name", &format!("volume {name}"))?.to_string(),
        }
    } else {
        bail!("volume {name}: only hostPath and configMap volumes are supported by the lab");
    };
    Ok((name, vol))
}

impl Manifest {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let objs = objects(text)?;
        let ds = objs
            .iter()
            .find(|o| o["kind"] == "DaemonSet")
            .ok_or_else(|| anyhow!("no DaemonSet"))?;
        let ds_name = str_at(ds, "/metadata/name", "the DaemonSet")?.to_string();
        let what = format!("DaemonSet {ds_name}");
        let pod = ds
            .pointer("/spec/template/spec")
            .ok_or_else(|| anyhow!("{what}: no spec.template.spec"))?;
        let init = pod
            .get("initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(container)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| what.clone())?;
        let containers = pod
            .get("containers")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("{what}: no containers"))?;
        let flannel = containers
            .iter()
            .map(container)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| what.clone())?
            .into_iter()
            .find(|c| c.argv[0].ends_with("/flanneld"))
            .ok_or_else(|| anyhow!("{what}: no container runs flanneld"))?;
        let volumes = pod
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(volume)
            .collect::<anyhow::Result<BTreeMap<_, _>>>()
            .with_context(|| what.clone())?;
        for c in init.iter().chain([&flannel]) {
            for (v, _) in &c.mounts {
                if !volumes.contains_key(v) {
                    bail!(
                        "{what}: container {} mounts volume {v}, which is not defined",
                        c.name
                    );
                }
            }
        }
        let mut config_maps = BTreeMap::new();
        for cm in objs.iter().filter(|o| o["kind"] == "ConfigMap") {
            let name = str_at(cm, "/metadata/name", "a ConfigMap")?.to_string();
            let data = cm
                .get("data")
                .and_then(Value::as_object)
                .map(|d| {
                    d.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            config_maps.insert(name, data);
        }
        for v in volumes.values() {
            if let Volume::ConfigMap { name } = v {
                if !config_maps.contains_key(name) {
                    bail!("{what}: ConfigMap {name} is mounted but not in the manifest");
                }
            }
        }
        Ok(Manifest {
            namespace: ds
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
            daemonset: ds_name,
            service_account: pod
                .get("serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
            init,
            flannel,
            volumes,
            config_maps,
        })
    }

    pub fn read(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            None => Self::parse(DEFAULT).context("the built-in deploy/kube-flannel.yml"),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Self::parse(&text).with_context(|| format!("{}", p.display()))
            }
        }
    }

    /// The network config flanneld will read: the file of a mounted ConfigMap that the
    /// container's `--net-config-path` (default `/etc/kube-flannel/net-conf.json`) points at.
    pub fn net_conf(&self) -> anyhow::Result<String> {
        let path = self
            .flannel
            .argv
            .iter()
            .find_map(|a| a.strip_prefix("--net-config-path="))
            .unwrap_or("/etc/kube-flannel/net-conf.json");
        let p = Path::new(path);
        let (dir, file) = (
            p.parent().unwrap_or(Path::new("/")),
            p.file_name().and_then(|f| f.to_str()).unwrap_or_default(),
        );
        for (vol, at) in &self.flannel.mounts {
            if Path::new(at) == dir {
                if let Some(Volume::ConfigMap { name }) = self.volumes.get(vol) {
                    if let Some(text) = self.config_maps.get(name).and_then(|d| d.get(file)) {
                        return Ok(text.clone());
                    }
                }
            }
        }
        bail!("the flannel container reads its network config from {path}, which no mounted ConfigMap provides")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_manifest_is_what_the_lab_runs() {
        let m = Manifest::read(None).unwrap();
        assert_eq!(m.namespace, "kube-flannel");
        assert_eq!(m.daemonset, "kube-flannel-ds");
        assert_eq!(m.service_account, "flannel");
        assert_eq!(
            m.flannel.argv,
            [
                "/opt/bin/flanneld",
                "--ip-masq",
                "--kube-subnet-mgr",
                "--healthz-port=8081"
            ]
        );
        assert_eq!(m.init.len(), 2);
        assert_eq!(
            m.init[0].argv,
            ["/flannel", "install-plugin", "/opt/cni/bin/flannel"]
        );
        assert!(m.net_conf().unwrap().contains("10.244.0.0/16"));
        assert_eq!(
            m.volumes["xtables-lock"],
            Volume::HostPath {
                path: "/run/xtables.lock".into(),
                file: true
            }
        );
        assert!(m
            .flannel
            .env
            .contains(&("POD_NAME".into(), EnvValue::Field("metadata.name".into()))));
    }

    #[test]
    fn broken_manifests_are_named_errors() {
        let base = DEFAULT;
        for (edit, want) in [
            (
                base.replace("kind: DaemonSet", "kind: Deployment"),
                "no DaemonSet",
            ),
            (
                base.replace(
                    "name: cni-plugin\n        hostPath",
                    "name: cni-plugins\n        hostPath",
                ),
                "mounts volume cni-plugin, which is not defined",
            ),
            (
                base.replace(
                    "name: kube-flannel-cfg\n  namespace",
                    "name: other\n  namespace",
                ),
                "ConfigMap kube-flannel-cfg is mounted but not in the manifest",
            ),
            ("a: [".to_string(), "not valid YAML"),
        ] {
            let e = format!("{:#}", Manifest::parse(&edit).unwrap_err());
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
