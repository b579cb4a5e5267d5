//! `flannel-lab up`, step by step: the underlay (a switch namespace, a namespace and veth per
//! node), the datastore (etcd with the network config, or the API fake with what a cluster
//! holds), flanneld on every node (in kube mode through the DaemonSet's pod), the pods through
//! the CNI plugin, and the wait until every node routes to every other.

use super::*;

/// Makes the lab of a checked `spec` in state directory `dir`.
pub(super) fn build(spec: &LabSpec, dir: &Path) -> anyhow::Result<LabState> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Kube mode makes and uses mount points on the machine until its pods are added.
    let _mounts = match spec.datastore {
        Datastore::Kube => Some(nodefs::lock()?),
        Datastore::Etcd => None,
    };
    let sw = underlay(spec)?;
    let mut nodes = (0..spec.nodes)
        .map(|i| make_node(spec, dir, &sw, i))
        .collect::<anyhow::Result<Vec<NodeState>>>()?;
    let mut state = LabState {
        lab: spec.lab.clone(),
        state_dir: dir.to_path_buf(),
        backend: spec.backend.clone(),
        datastore: spec.datastore.name().into(),
        api_args: Vec::new(),
        api_log: dir.join("kube-api.log"),
        etcd_log: dir.join("etcd.log"),
        etcd_args: Vec::new(),
        nodes: Vec::new(),
        bin_dir: spec.bin_dir.clone(),
    };
    match spec.datastore {
        Datastore::Etcd => etcd_datastore(spec, dir, &mut state, &mut nodes)?,
        Datastore::Kube => {
            let setup = kube_datastore(spec, dir, &mut state, &nodes)?;
            state.nodes = nodes.clone();
            start_api(&state)?;
            kube_node_pods(spec, dir, &setup, &mut nodes)?;
        }
    }
    start_daemons(&mut nodes)?;
    add_pods(spec, dir, &mut nodes)?;
    state.nodes = nodes;
    state.save()?;
    for n in &state.nodes {
        for p in &n.pods {
            crate::pods::register(&state, p, &n.name)?;
        }
    }
    wait_for_routes(spec, &state)?;
    Ok(state)
}

/// The underlay: a bridge per segment in a switch namespace (routing between segments when
/// there are two). Returns the switch namespace.
fn underlay(spec: &LabSpec) -> anyhow::Result<String> {
    let sw = switch_ns(&spec.lab);
    ip(&["netns", "add", &sw])?;
    ip(&["-n", &sw, "link", "set", "lo", "up"])?;
    for seg in 0..spec.segments {
        let br = format!("br{seg}");
        ip(&["-n", &sw, "link", "add", &br, "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", &br, "up"])?;
        if spec.segments > 1 {
            // The switch namespace routes between the segments.
            ip(&[
                "-n",
                &sw,
                "addr",
                "add",
                &format!("10.0.{seg}.1/24"),
                "dev",
                &br,
            ])?;
        }
    }
    if spec.segments > 1 {
        sh::run(&mut in_ns(
            &sw,
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        ))?;
    }

    Ok(sw)
}

/// Node `i`: its namespace, its veth on the switch, its addresses and routes, forwarding on,
/// and (etcd mode) the tutorial's CNI config.
fn make_node(spec: &LabSpec, dir: &Path, sw: &str, i: usize) -> anyhow::Result<NodeState> {
    let (lab, dual) = (spec.lab.as_str(), spec.ip_family.has_v6());
    let name = node_name(i);
    let ns = node_ns(lab, &name);
    let addr = node_ip_on(i, spec.segments);
    let seg = node_segment(i, spec.segments);
    let node_dir = dir.join(&name);
    std::fs::create_dir_all(node_dir.join("net.d"))?;
    ip(&["netns", "add", &ns])?;
    ip(&[
        "-n", sw, "link", "add", &name, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&[
        "-n",
        sw,
        "link",
        "set",
        &name,
        "master",
        &format!("br{seg}"),
        "up",
    ])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        "eth0",
    ])?;
    if dual {
        // No duplicate address detection on a lab switch: the address works at once.
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/64", node_ip6(i)),
            "dev",
            "eth0",
            "nodad",
        ])?;
    }
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    if spec.segments > 1 {
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.0.{seg}.1"),
        ])?;
    }
    sh::run(&mut in_ns(
        &ns,
        "sh",
        &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
    ))?;
    if dual {
        sh::run(&mut in_ns(
            &ns,
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"],
        ))?;
    }
    if spec.datastore == Datastore::Etcd {
        std::fs::write(
            node_dir.join("net.d/10-flannel.conflist"),
            serde_json::to_string_pretty(&cni_exec::tutorial_conflist(&node_dir))?,
        )?;
    } else if spec.segments == 1 {
        // A real node has a default route, and flanneld without --iface (as the DaemonSet
        // runs it) uses its interface. The switch answers as the gateway.
        if i == 0 {
            ip(&["-n", sw, "addr", "add", "10.0.0.1/24", "dev", "br0"])?;
            if dual {
                ip(&["-n", sw, "addr", "add", "fd00::1/64", "dev", "br0", "nodad"])?;
            }
        }
        ip(&["-n", &ns, "route", "add", "default", "via", "10.0.0.1"])?;
        if dual {
            ip(&["-n", &ns, "-6", "route", "add", "default", "via", "fd00::1"])?;
        }
    }
    Ok(NodeState {
        name: name.clone(),
        netns: ns,
        ip: addr.to_string(),
        subnet: String::new(),
        ip6: if dual { node_ip6(i) } else { String::new() },
        subnet6: String::new(),
        pods: Vec::new(),
        log: node_dir.join("flanneld.log"),
        flanneld: Vec::new(),
        // flanneld and flannelctl know they run in the lab (fixes name its commands).
        env: vec![
            (
                "FLANNEL_LAB_STATE_DIR".to_string(),
                dir.display().to_string(),
            ),
            ("FLANNEL_LAB_NAME".to_string(), spec.lab.clone()),
            ("FLANNEL_LAB_NODE".to_string(), name.clone()),
        ],
        binds: Vec::new(),
        cni_binds: Vec::new(),
        subnet_file: node_dir.join("subnet.env"),
    })
}

/// etcd on master1 with the network config; every node's flanneld with upstream-style flags.
fn etcd_datastore(
    spec: &LabSpec,
    dir: &Path,
    state: &mut LabState,
    nodes: &mut [NodeState],
) -> anyhow::Result<()> {
    let master = nodes[0].netns.clone();
    let flanneld = spec.bin_dir.join("flanneld").to_string_lossy().into_owned();
    let etcd_log = state.etcd_log.clone();
    // etcd on master1, with the tutorial's network config.
    let etcd_args: Vec<String> = [
        "--name",
        "master1",
        "--data-dir",
        &dir.join("etcd").to_string_lossy(),
        "--listen-client-urls",
        &format!("http://{}:2379,http://127.0.0.1:2379", node_ip(0)),
        "--advertise-client-urls",
        &format!("http://{}:2379", node_ip(0)),
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "master1=http://127.0.0.1:2380",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    spawn_in_ns(&master, "etcd", &etcd_args, &etcd_log)?;
    wait_until("etcd on master1", Duration::from_secs(30), || {
        Ok(etcdctl(&master, &["endpoint", "health"]).is_ok())
    })
    .with_context(|| format!("etcd log:\n{}", log_tail(&etcd_log)))?;
    etcdctl(
        &master,
        &[
            "put",
            &format!("{ETCD_PREFIX}/config"),
            &net_conf(
                &spec.backend,
                spec.direct_routing,
                spec.ip_family,
                spec.nftables,
            ),
        ],
    )?;
    // flanneld on every node, with upstream-style flags.
    for n in nodes.iter_mut() {
        let node_dir = dir.join(&n.name);
        n.flanneld = vec![
            flanneld.clone(),
            format!("--etcd-endpoints=http://{}:2379", node_ip(0)),
            "--iface=eth0".to_string(),
            "--ip-masq".to_string(),
            format!("--subnet-file={}", node_dir.join("subnet.env").display()),
            format!(
                "--state-socket={}",
                node_dir.join("flanneld.sock").display()
            ),
        ];
        n.flanneld.extend(spec.flanneld_args.iter().cloned());
        // Each node its own WireGuard key (the default path is shared by the
        // machine's processes in etcd mode).
        n.env.push((
            "WIREGUARD_KEY_FILE".into(),
            node_dir.join("wgkey").display().to_string(),
        ));
    }
    state.etcd_args = etcd_args;
    Ok(())
}

/// The API fake's arguments and seed: what a cluster holds before flannel starts (the Nodes
/// with their podCIDRs, the DaemonSet's pods, the ConfigMap).
fn kube_datastore(
    spec: &LabSpec,
    dir: &Path,
    state: &mut LabState,
    nodes: &[NodeState],
) -> anyhow::Result<KubeSetup> {
    // The API fake on master1, holding what a cluster holds before flannel starts:
    // the Nodes with their podCIDRs, the DaemonSet's pods, the ConfigMap.
    let setup = KubeSetup::new(
        Manifest::read(spec.manifest.as_deref())?,
        spec.backend_set.then_some(spec.backend.as_str()),
        spec.direct_routing,
        spec.ip_family,
    )?;
    let kube = dir.join("kube");
    std::fs::create_dir_all(&kube)?;
    let named: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.ip.clone()))
        .collect();
    std::fs::write(
        kube.join("seed.json"),
        serde_json::to_string_pretty(&setup.seed(&named)?)?,
    )?;
    state.api_args = vec![
        spec.bin_dir
            .join("flannel-kube-fake")
            .to_string_lossy()
            .into_owned(),
        "--listen".into(),
        format!("{}:{API_PORT}", node_ip(0)),
        "--dir".into(),
        kube.display().to_string(),
        "--token".into(),
        LAB_TOKEN.into(),
        "--state".into(),
        kube.join("objects.json").display().to_string(),
        "--seed".into(),
        kube.join("seed.json").display().to_string(),
    ];
    Ok(setup)
}

/// Each node runs the DaemonSet's pod: init containers, then flanneld.
fn kube_node_pods(
    spec: &LabSpec,
    dir: &Path,
    setup: &KubeSetup,
    nodes: &mut [NodeState],
) -> anyhow::Result<()> {
    let ca = dir.join("kube").join("ca.crt");
    let api_host = node_ip(0).to_string();
    let mut made = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        let node_dir = dir.join(&n.name);
        let pod = NodePod {
            setup,
            index: i,
            name: &n.name,
            netns: &n.netns,
            ip: &n.ip,
            dir: &node_dir,
            bin_dir: &spec.bin_dir,
            api_host: &api_host,
            api_port: API_PORT,
            ca: &ca,
            token: LAB_TOKEN,
        };
        let cni_binds = pod.kubelet_binds()?;
        let run =
            nodefs::make_mount_points(&cni_binds, &mut made).and_then(|()| pod.install(&mut made));
        // Recorded before anything can fail, so `down` removes them after a failed `up`.
        record_mount_points(dir, &made)?;
        let run = run?;
        n.subnet_file = nodefs::host_path(&run.binds, Path::new(&subnet_file_of(&run.argv)));
        n.flanneld = run.argv;
        // As a user turns it on: the DaemonSet's commented argument, uncommented.
        if spec.network_policy {
            n.flanneld.push("--network-policy".into());
        }
        n.flanneld.extend(spec.flanneld_args.iter().cloned());
        // The pod's environment, and that it runs in the lab.
        let lab_hint = std::mem::take(&mut n.env);
        n.env = run.env;
        n.env.extend(lab_hint);
        n.binds = run.binds;
        n.cni_binds = cni_binds;
    }
    Ok(())
}

/// flanneld on every node, each waited for until it writes subnet.env.
fn start_daemons(nodes: &mut [NodeState]) -> anyhow::Result<()> {
    let mut daemons = nodes
        .iter()
        .map(start_flanneld)
        .collect::<anyhow::Result<Vec<Child>>>()?;
    for (n, child) in nodes.iter_mut().zip(daemons.iter_mut()) {
        let env = n.subnet_file.clone();
        let log = n.log.clone();
        wait_until(
            &format!("flanneld on {} to write subnet.env", n.name),
            Duration::from_secs(30),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "flanneld on {} exited ({status}):\n{}",
                        n.netns,
                        log_tail(&log)
                    );
                }
                Ok(env.exists())
            },
        )?;
        let written = PreviousSubnets::read(&env);
        n.subnet = written.subnet.map(|s| s.to_string()).unwrap_or_default();
        n.subnet6 = written
            .ipv6_subnet
            .map(|s| s.to_string())
            .unwrap_or_default();
    }
    Ok(())
}

/// Pods, through our CNI plugin (and Debian's bridge, host-local, portmap), each serving TCP
/// and UDP on ports 80 and 81. Their Pod objects are registered once the lab is saved.
fn add_pods(spec: &LabSpec, dir: &Path, nodes: &mut [NodeState]) -> anyhow::Result<()> {
    let (v4, dual) = (spec.ip_family.has_v4(), spec.ip_family.has_v6());
    for n in nodes.iter_mut() {
        for k in 1..=spec.pods_per_node {
            let pod = pod_name(&n.name, k);
            let pns = pod_ns(&spec.lab, &pod);
            let (ip, ip6) = crate::pods::attach(n, dir, &spec.bin_dir, &pns, &pod)?;
            if v4 && ip.is_empty() {
                bail!("the CNI result for {pod} has no IPv4 address");
            }
            if dual && ip6.is_empty() {
                bail!("the CNI result for {pod} has no IPv6 address");
            }
            crate::pods::start_servers(&spec.bin_dir, dir, &pns)?;
            n.pods.push(PodState {
                labels: [("pod".to_string(), pod.clone())].into(),
                name: pod,
                netns: pns,
                ip,
                ip6,
                namespace: "default".into(),
                ports: Vec::new(),
            });
        }
    }
    Ok(())
}

/// Every node has a route to every other node's subnet before the lab is called up.
fn wait_for_routes(spec: &LabSpec, state: &LabState) -> anyhow::Result<()> {
    let (v4, dual) = (spec.ip_family.has_v4(), spec.ip_family.has_v6());
    // (the udp and
    // wireguard backends route the whole network into their device with one route).
    let want = if spec.backend == "udp" || spec.backend == "wireguard" {
        1
    } else {
        state.nodes.len() - 1
    };
    for n in &state.nodes {
        let ns = n.netns.clone();
        wait_until(
            &format!("routes to all peers on {}", n.name),
            Duration::from_secs(30),
            || {
                let r = ip(&["-n", &ns, "route", "show", "proto", "252"]).unwrap_or_default();
                let r6 = if dual {
                    ip(&["-n", &ns, "-6", "route", "show", "proto", "252"]).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok((!v4 || r.lines().count() >= want) && (!dual || r6.lines().count() >= want))
            },
        )
        .with_context(|| {
            let leases = if state.datastore == "etcd" {
                etcdctl(
                    &state.nodes[0].netns,
                    &["get", "--prefix", &format!("{ETCD_PREFIX}/subnets/")],
                )
                .unwrap_or_else(|e| e.to_string())
            } else {
                String::new()
            };
            format!(
                "routes of ours on {}:\n{}{}\nleases:\n{leases}\nflanneld log:\n{}",
                n.name,
                ip(&["-n", &ns, "route", "show", "proto", "252"]).unwrap_or_default(),
                ip(&["-n", &ns, "-6", "route", "show", "proto", "252"]).unwrap_or_default(),
                log_tail(&n.log)
            )
        })?;
    }
    Ok(())
}
