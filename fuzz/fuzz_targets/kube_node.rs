//! A Node object from the Kubernetes API (anyone who can write Nodes writes this input) to what
//! it means for flannel: never a panic; a lease's subnet is one of the node's podCIDRs and its
//! public IP is the annotation's. Also the annotation prefix rules, the annotations we would
//! publish for that node, and its creation time.
#![no_main]
use flannel_core::iface::Families;
use flannel_core::LeaseAttrs;
use flannel_subnet::kube::annotations::Annotations;
use flannel_subnet::kube::node::{annotations_to_publish, node_lease, pod_subnets, NodeLease, NodeLite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A first line, when it is short, is an annotation prefix to try.
    let (prefix, doc) = match data.iter().position(|b| *b == b'\n') {
        Some(i) if i < 64 => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        _ => ("flannel.alpha.coreos.com".to_string(), data),
    };
    let Ok(a) = Annotations::new(&prefix).or_else(|_| Annotations::new("flannel.alpha.coreos.com")) else {
        return;
    };
    let Ok(node) = serde_json::from_slice::<NodeLite>(doc) else {
        return;
    };
    // creationTimestamp: what parses is a real instant, written back the same way.
    let created = node.metadata.created();
    if let Some(ts) = node.metadata.creation_timestamp.as_deref() {
        if let Some(t) = flannel_core::time::parse_rfc3339(ts) {
            assert_eq!(t, created);
            if (0..253_402_300_800).contains(&t) {
                let again = flannel_core::time::rfc3339(t as u64);
                assert_eq!(flannel_core::time::parse_rfc3339(&again), Some(t), "{ts} -> {again}");
            }
        }
    }
    for fam in [Families { v4: true, v6: false }, Families { v4: true, v6: true }, Families { v4: false, v6: true }] {
        if let NodeLease::Lease(l) = node_lease(&node, &a, fam) {
            let (v4, v6) = pod_subnets(&node.spec).expect("a lease has parsable podCIDRs");
            if fam.v6 {
                assert_eq!(l.ipv6_subnet, v6);
            }
            if fam.v4 {
                assert_eq!(Some(l.subnet), v4);
                let ip = node.annotation(&a.backend_public_ip).expect("a lease has a public IP");
                assert_eq!(ip.parse::<std::net::Ipv4Addr>().ok(), Some(l.attrs.public_ip));
            } else {
                // IPv6 only: no IPv4 part (upstream's 0.0.0.0/0), an IPv6 subnet.
                assert_eq!(l.subnet, ipnet::Ipv4Net::default());
                assert!(l.ipv6_subnet.is_some() && l.attrs.public_ip.is_unspecified());
            }
            let _ = l.attrs.to_json();
            let _ = annotations_to_publish(&node, &a, &l.attrs, fam);
        }
        let attrs = LeaseAttrs::v4(std::net::Ipv4Addr::new(10, 0, 0, 1), "vxlan", None);
        let _ = annotations_to_publish(&node, &a, &attrs, fam);
    }
});
