use super::*;
use serde_json::json;

#[test]
fn a_pod_keeps_what_policies_need() {
    let p = pod(&json!({
        "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}, "resourceVersion": "7"},
        "spec": {"nodeName": "n1", "containers": [
            {"name": "c", "ports": [{"name": "serve-80-tcp", "containerPort": 80},
                                    {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
                                    {"containerPort": 82}]}]},
        "status": {"phase": "Running", "podIP": "10.244.1.2",
                   "podIPs": [{"ip": "10.244.1.2"}, {"ip": "fd00:0:0:1::2"}]}
    }))
    .unwrap();
    assert_eq!(p.key(), "x/a");
    assert_eq!(p.node, "n1");
    assert_eq!(p.ips.len(), 2, "both families, once each");
    assert_eq!(p.named_port("serve-81-udp", Proto::Udp), Some(81));
    assert_eq!(
        p.named_port("serve-81-udp", Proto::Tcp),
        None,
        "a name is per protocol"
    );
    assert_eq!(p.ports.len(), 2, "unnamed ports are not kept");
    assert!(p.counts());
    let host = pod(&json!({"metadata": {"name": "h", "namespace": "x"},
        "spec": {"hostNetwork": true}, "status": {"podIP": "192.168.0.1", "phase": "Running"}}))
    .unwrap();
    assert!(!host.counts(), "hostNetwork pods are never selected");
    let done = pod(&json!({"metadata": {"name": "d", "namespace": "x"},
        "status": {"podIP": "10.244.1.9", "phase": "Succeeded"}}))
    .unwrap();
    assert!(!done.counts());
    let pending =
        pod(&json!({"metadata": {"name": "p", "namespace": "x"}, "status": {"phase": "Pending"}}))
            .unwrap();
    assert!(!pending.counts(), "no address yet");
}

#[test]
fn a_namespace_always_has_its_name_label() {
    let n = namespace(&json!({"metadata": {"name": "y", "labels": {"team": "b"}}})).unwrap();
    assert_eq!(n.labels[NAME_LABEL], "y");
    assert_eq!(n.labels["team"], "b");
    assert!(namespace(&json!({"metadata": {}})).is_err());
}

#[test]
fn policy_types_default_as_the_api_defines_them() {
    let p =
        policy(&json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}}))
            .unwrap();
    assert_eq!(
        p.ingress,
        Some(vec![]),
        "no types, no rules: ingress only, denying"
    );
    assert_eq!(p.egress, None);
    let p = policy(&json!({"metadata": {"name": "p", "namespace": "x"},
        "spec": {"podSelector": {}, "egress": [{}]}}))
    .unwrap();
    assert!(p.ingress.is_some() && p.egress.as_ref().is_some_and(|e| e.len() == 1));
    let p = policy(&json!({"metadata": {"name": "p", "namespace": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}}))
    .unwrap();
    assert_eq!(p.ingress, None, "given types are exactly the directions");
    assert_eq!(p.egress, Some(vec![]));
}

#[test]
fn peers_and_ports_are_read_in_full() {
    let p = policy(&json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
        "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"pod": "b"}}, "namespaceSelector": {}},
                     {"ipBlock": {"cidr": "10.244.1.7/16", "except": ["10.244.3.0/24"]}}],
            "ports": [{"port": 80}, {"protocol": "UDP", "port": 81, "endPort": 90},
                      {"protocol": "SCTP"}, {"port": "serve-80-tcp"}]
        }]}}))
    .unwrap();
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let r = &p.ingress.as_ref().unwrap()[0];
    assert_eq!(
        r.peers[0],
        Peer::Pods {
            pods: Some(Selector {
                labels: [("pod".to_string(), "b".to_string())].into(),
                ..Default::default()
            }),
            namespaces: Some(Selector::default()),
        }
    );
    assert_eq!(
        r.peers[1],
        Peer::Block {
            cidr: "10.244.0.0/16".parse().unwrap(),
            except: vec!["10.244.3.0/24".parse().unwrap()]
        }
    );
    assert_eq!(
        r.ports,
        vec![
            PortSpec::Range {
                proto: Proto::Tcp,
                from: 80,
                to: 80
            },
            PortSpec::Range {
                proto: Proto::Udp,
                from: 81,
                to: 90
            },
            PortSpec::All(Proto::Sctp),
            PortSpec::Named {
                proto: Proto::Tcp,
                name: "serve-80-tcp".into()
            },
        ]
    );
}

#[test]
fn what_cannot_be_read_allows_nothing_and_is_named() {
    let p = policy(&json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Near", "values": ["a"]}]},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.300.0.0/16"}}, {}],
                     "ports": [{"protocol": "ICMP"}, {"port": 0}, {"port": 90, "endPort": 80}, {"port": "x", "endPort": 9}]}],
        "policyTypes": ["Ingress", "Sideways"]}}))
    .unwrap();
    assert!(
        p.pod_selector.invalid && p.pod_selector.selects(&Labels::new()),
        "an unreadable selector isolates the namespace"
    );
    let r = &p.ingress.as_ref().unwrap()[0];
    assert_eq!(r.peers, vec![Peer::Nothing, Peer::Nothing]);
    assert!(r.ports.iter().all(|x| *x == PortSpec::Nothing));
    assert!(p.egress.is_some(), "an unknown type isolates both ways");
    let all = p.problems.join("\n");
    for what in [
        "operator \"Near\"",
        "ingress[0].from[0].ipBlock.cidr",
        "ingress[0].from[1]",
        "ICMP",
        "ports[2]",
        "endPort with a named port",
        "Sideways",
    ] {
        assert!(all.contains(what), "{what} not in {all}");
    }
    assert!(policy(&json!({"spec": {}})).is_err());
}
