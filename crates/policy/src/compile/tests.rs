use super::*;

fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        node: node.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: vec![ip.parse().unwrap()],
        host_network: false,
        phase: "Running".into(),
        ports: Vec::new(),
    }
}

fn cluster_with(pods: usize, policies: usize) -> Cluster {
    let mut c = Cluster::default();
    for i in 0..pods {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        let p = pod(
            "x",
            &format!("p{i}"),
            node,
            &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            &[("app", "web")],
        );
        c.pods.insert(p.key(), p);
    }
    for i in 0..policies {
        let p = Policy {
            namespace: "x".into(),
            name: format!("np{i}"),
            pod_selector: Selector::default(),
            ingress: Some(vec![Rule {
                peers: vec![Peer::Pods {
                    pods: Some(Selector::default()),
                    namespaces: None,
                }],
                ports: vec![PortSpec::Range {
                    proto: Proto::Tcp,
                    from: 80,
                    to: 80,
                }],
            }]),
            egress: None,
            problems: Vec::new(),
        };
        c.policies.insert(p.key(), p);
    }
    c
}

#[test]
fn established_first_in_both_base_chains() {
    let r = compile(&cluster_with(2, 1), "n1");
    for base in ["ingress", "egress"] {
        assert_eq!(
            r.chains[base].rules[0],
            "ct state established,related accept"
        );
        assert!(r.chains[base].base.is_some());
    }
}

#[test]
fn what_a_packet_walks_does_not_grow_with_the_cluster() {
    // The rules of the chains one packet can visit: the base chain, one pod chain, the
    // policy chains it jumps to.
    let walk = |c: &Cluster| {
        let r = compile(c, "n1");
        let pod_chain = r
            .chains
            .iter()
            .find(|(n, _)| n.starts_with("pod-in."))
            .expect("a pod chain")
            .1;
        let jumped: usize = pod_chain
            .rules
            .iter()
            .filter_map(|x| x.strip_prefix("jump "))
            .map(|c| r.chains[c].rules.len())
            .sum();
        r.chains["ingress"].rules.len() + pod_chain.rules.len() + jumped
    };
    let small = walk(&cluster_with(4, 1));
    assert_eq!(small, walk(&cluster_with(2000, 1)), "more pods: same walk");
    let r = compile(&cluster_with(2000, 1), "n1");
    assert_eq!(
        r.sets["pods-in4"].elems.len(),
        1000,
        "each local pod is one map element"
    );
    assert_eq!(
        r.sets["in.x.np0.0.4"].elems.len(),
        2000,
        "every peer pod is one set element"
    );
}

#[test]
fn other_nodes_pods_get_no_chain_here() {
    let r = compile(&cluster_with(4, 1), "n1");
    let pods: Vec<&String> = r.chains.keys().filter(|n| n.starts_with("pod-")).collect();
    assert_eq!(pods, ["pod-in.x.p0", "pod-in.x.p2"]);
    let none = compile(&cluster_with(4, 1), "n9");
    assert!(
        none.chains.keys().all(|n| !n.starts_with("in.")),
        "no local pod selected: no policy chain"
    );
}

#[test]
fn long_names_become_digests_nftables_takes() {
    let long = "n".repeat(250);
    let id = ident("in", "x", &long);
    assert!(id.len() < 64 && id.starts_with("in.h"), "{id}");
    assert_eq!(ident("in", "x", "allow-80"), "in.x.allow-80");
}
