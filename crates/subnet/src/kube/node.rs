//! A Node as flannel needs it, and what it means. Only the name, the podCIDRs and our own
//! annotations are read: a real Node's status (~10 KB of images and conditions) is skipped by
//! the parser and never kept. A node is a peer's lease, a node flannel does not manage, or a
//! node whose data cannot be used (with the reason, for one log line).

use super::annotations::Annotations;
use flannel_core::iface::Families;
use flannel_core::raw_json::RawJson;
use flannel_core::{Lease, LeaseAttrs};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct NodeLite {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: Spec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "creationTimestamp")]
    pub creation_timestamp: Option<String>,
}

impl Meta {
    /// When the Node was created, in seconds since the epoch (0 when not said).
    pub fn created(&self) -> i64 {
        self.creation_timestamp
            .as_deref()
            .and_then(flannel_core::time::parse_rfc3339)
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Spec {
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

impl NodeLite {
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(name))
            .map(String::as_str)
    }

    /// Keeps only our annotations (what a lease needs), dropping everything else.
    pub fn retain_ours(&mut self, a: &Annotations) {
        if let Some(m) = self.metadata.annotations.as_mut() {
            m.retain(|k, _| a.is_ours(k));
        }
    }
}

/// What a node stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeLease {
    Lease(Lease),
    /// No `kube-subnet-manager: "true"`: not a flannel node (yet).
    NotManaged,
    /// Its data cannot be used: why.
    Bad(String),
}

/// The node's pod subnets: the first IPv4 and the first IPv6 CIDR of `spec.podCIDRs`, or of
/// `spec.podCIDR` when that list is empty. More than two is an error (as upstream).
pub fn pod_subnets(spec: &Spec) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), String> {
    let list: Vec<&str> = match spec.pod_cidrs.as_deref() {
        Some(l) if !l.is_empty() => l.iter().map(String::as_str).collect(),
        _ => spec
            .pod_cidr
            .as_deref()
            .filter(|c| !c.is_empty())
            .into_iter()
            .collect(),
    };
    if list.len() > 2 {
        return Err(format!(
            "has {} podCIDRs, at most two are allowed",
            list.len()
        ));
    }
    let (mut v4, mut v6) = (None, None);
    for c in list {
        match c.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => {
                v4.get_or_insert(n.trunc());
            }
            Ok(IpNet::V6(n)) => {
                v6.get_or_insert(n.trunc());
            }
            Err(_) => return Err(format!("podCIDR {c:?} is not a CIDR")),
        }
    }
    Ok((v4, v6))
}

fn backend_data(node: &NodeLite, name: &str) -> Result<Option<RawJson>, String> {
    match node.annotation(name).map(str::trim) {
        None | Some("") | Some("null") => Ok(None),
        Some(text) => RawJson::from_text(text)
            .map(|d| Some(flannel_core::lease::bounded_backend_data(d)))
            .map_err(|e| format!("annotation {name} is not JSON ({e})")),
    }
}

/// The lease a node stands for (upstream `nodeToLease`), for the families the config enables.
pub fn node_lease(node: &NodeLite, a: &Annotations, fam: Families) -> NodeLease {
    if node.annotation(&a.subnet_kube_managed) != Some("true") {
        return NodeLease::NotManaged;
    }
    match lease_of(node, a, fam) {
        Ok(l) => NodeLease::Lease(l),
        Err(e) => NodeLease::Bad(e),
    }
}

fn lease_of(node: &NodeLite, a: &Annotations, fam: Families) -> Result<Lease, String> {
    let (v4, v6) = pod_subnets(&node.spec)?;
    // An IPv6-only network: the lease's IPv4 part is upstream's degenerate 0.0.0.0/0, which
    // no backend routes (see `Lease::subnet_of`).
    let (subnet, public_ip, data) = if fam.v4 {
        let ip_text = node.annotation(&a.backend_public_ip).unwrap_or("");
        let public_ip: Ipv4Addr = ip_text.parse().map_err(|_| {
            format!(
                "annotation {} {ip_text:?} is not an IPv4 address",
                a.backend_public_ip
            )
        })?;
        (
            v4.ok_or("has no IPv4 podCIDR")?,
            public_ip,
            backend_data(node, &a.backend_data)?,
        )
    } else {
        v6.ok_or("has no IPv6 podCIDR")?;
        (Ipv4Net::default(), Ipv4Addr::UNSPECIFIED, None)
    };
    let mut attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: node.annotation(&a.backend_type).unwrap_or("").to_string(),
        backend_data: data,
        backend_v6_data: None,
    };
    let mut ipv6_subnet = None;
    if fam.v6 {
        ipv6_subnet = v6;
        if let Some(t) = node
            .annotation(&a.backend_public_ipv6)
            .filter(|t| !t.is_empty())
        {
            let ip: Ipv6Addr = t.parse().map_err(|_| {
                format!(
                    "annotation {} {t:?} is not an IPv6 address",
                    a.backend_public_ipv6
                )
            })?;
            attrs.public_ipv6 = Some(ip);
        }
        attrs.backend_v6_data = backend_data(node, &a.backend_v6_data)?;
    }
    Ok(Lease {
        subnet,
        ipv6_subnet,
        attrs,
    })
}

/// The annotations to write for our own lease (upstream `AcquireLease`), only those whose value
/// differs from what the node has now. The overwrite annotations, when set by the user, are
/// published as our public IPs.
pub fn annotations_to_publish(
    node: &NodeLite,
    a: &Annotations,
    attrs: &LeaseAttrs,
    fam: Families,
) -> BTreeMap<String, String> {
    let mut want = BTreeMap::new();
    let ty = attrs.backend_type.as_str();
    want.insert(a.backend_type.clone(), ty.to_string());
    let data = attrs.backend_data.as_ref().map(|d| d.get().to_string());
    // Upstream: (vxlan && data) || (wireguard && data) || type != vxlan, which is this.
    if fam.v4 && (ty != "vxlan" || data.is_some()) {
        want.insert(
            a.backend_data.clone(),
            data.unwrap_or_else(|| "null".into()),
        );
        let ip = match node
            .annotation(&a.backend_public_ip_overwrite)
            .filter(|s| !s.is_empty())
        {
            Some(o) => o.to_string(),
            None => attrs.public_ip.to_string(),
        };
        want.insert(a.backend_public_ip.clone(), ip);
    }
    let v6data = attrs.backend_v6_data.as_ref().map(|d| d.get().to_string());
    let has_ip6 = attrs.public_ipv6.is_some();
    if fam.v6
        && ((ty == "vxlan" && v6data.is_some())
            || (ty == "wireguard" && v6data.is_some() && has_ip6)
            || (ty == "host-gw" && has_ip6)
            || (ty == "extension" && has_ip6))
    {
        want.insert(
            a.backend_v6_data.clone(),
            v6data.unwrap_or_else(|| "null".into()),
        );
        let ip = match node
            .annotation(&a.backend_public_ipv6_overwrite)
            .filter(|s| !s.is_empty())
        {
            Some(o) => Some(o.to_string()),
            None => attrs.public_ipv6.map(|ip| ip.to_string()),
        };
        if let Some(ip) = ip {
            want.insert(a.backend_public_ipv6.clone(), ip);
        }
    }
    want.insert(a.subnet_kube_managed.clone(), "true".into());
    want.retain(|k, v| node.annotation(k) != Some(v.as_str()));
    want
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ann() -> Annotations {
        Annotations::new("flannel.alpha.coreos.com").unwrap()
    }

    fn v4() -> Families {
        Families {
            v4: true,
            v6: false,
        }
    }

    #[test]
    fn an_ipv6_only_node_is_a_lease_with_no_ipv4_part() {
        let v6 = Families {
            v4: false,
            v6: true,
        };
        let n = parse(json!({"metadata":{"name":"n6","annotations":{
            "flannel.alpha.coreos.com/kube-subnet-manager":"true",
            "flannel.alpha.coreos.com/backend-type":"vxlan",
            "flannel.alpha.coreos.com/backend-v6-data":MAC,
            "flannel.alpha.coreos.com/public-ipv6":"fd00::51"}},
            "spec":{"podCIDRs":["fd00:10:244:1::/64"]}}));
        let NodeLease::Lease(l) = node_lease(&n, &ann(), v6) else {
            panic!("not a lease")
        };
        assert_eq!(l.subnet, Ipv4Net::default());
        assert_eq!(l.ipv6_subnet, Some("fd00:10:244:1::/64".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("fd00::51".parse().unwrap()));
        assert!(l.attrs.backend_data.is_none() && l.attrs.backend_v6_data.is_some());
        let no_v6 = parse(json!({"metadata":{"name":"n4","annotations":{
            "flannel.alpha.coreos.com/kube-subnet-manager":"true"}},
            "spec":{"podCIDRs":["10.244.1.0/24"]}}));
        assert!(
            matches!(node_lease(&no_v6, &ann(), v6), NodeLease::Bad(r) if r.contains("no IPv6 podCIDR"))
        );
    }

    fn parse(v: serde_json::Value) -> NodeLite {
        serde_json::from_value(v).unwrap()
    }

    const MAC: &str = r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:51"}"#;

    fn flannel_node(name: &str, cidr: &str, ip: &str) -> NodeLite {
        parse(json!({"metadata":{"name":name,"annotations":{
            "flannel.alpha.coreos.com/kube-subnet-manager":"true",
            "flannel.alpha.coreos.com/backend-type":"vxlan",
            "flannel.alpha.coreos.com/backend-data":MAC,
            "flannel.alpha.coreos.com/public-ip":ip,
            "kubernetes.io/other":"x"}},
            "spec":{"podCIDR":cidr,"podCIDRs":[cidr]},
            "status":{"images":[{"names":["x"],"sizeBytes":1}]}}))
    }

    #[test]
    fn a_flannel_node_is_a_lease_others_are_not() {
        let n = flannel_node("node1", "10.244.1.0/24", "10.0.0.51");
        let NodeLease::Lease(l) = node_lease(&n, &ann(), v4()) else {
            panic!()
        };
        assert_eq!(l.subnet, "10.244.1.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(l.attrs.public_ip, Ipv4Addr::new(10, 0, 0, 51));
        assert_eq!(l.attrs.backend_type, "vxlan");
        assert_eq!(l.attrs.backend_data.unwrap().get(), MAC);
        let plain = parse(json!({"metadata":{"name":"n"},"spec":{"podCIDR":"10.244.2.0/24"}}));
        assert_eq!(node_lease(&plain, &ann(), v4()), NodeLease::NotManaged);
        let mut bad = flannel_node("b", "10.244.3.0/24", "not-an-ip");
        assert!(
            matches!(node_lease(&bad, &ann(), v4()), NodeLease::Bad(r) if r.contains("public-ip"))
        );
        bad = flannel_node("b", "10.244.3.0/24", "10.0.0.53");
        bad.metadata.annotations.as_mut().unwrap().insert(
            "flannel.alpha.coreos.com/backend-data".into(),
            "{oops".into(),
        );
        assert!(
            matches!(node_lease(&bad, &ann(), v4()), NodeLease::Bad(r) if r.contains("not JSON"))
        );
        let nocidr = parse(
            json!({"metadata":{"name":"c","annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"10.0.0.9"}}}),
        );
        assert!(
            matches!(node_lease(&nocidr, &ann(), v4()), NodeLease::Bad(r) if r.contains("no IPv4 podCIDR"))
        );
    }

    #[test]
    fn pod_subnets_v4_v6_dual_and_too_many() {
        let s = |v: serde_json::Value| serde_json::from_value::<Spec>(v).unwrap();
        let (a, b) = pod_subnets(&s(json!({"podCIDR":"10.244.1.0/24"}))).unwrap();
        assert_eq!((a.unwrap().to_string(), b), ("10.244.1.0/24".into(), None));
        let (a, b) = pod_subnets(&s(
            json!({"podCIDRs":["fd00:10:244:1::/64","10.244.1.7/24"]}),
        ))
        .unwrap();
        assert_eq!(a.unwrap().to_string(), "10.244.1.0/24", "host bits cleared");
        assert_eq!(b.unwrap().to_string(), "fd00:10:244:1::/64");
        assert!(pod_subnets(&s(
            json!({"podCIDRs":["10.0.0.0/24","10.0.1.0/24","fd00::/64"]})
        ))
        .is_err());
        assert!(pod_subnets(&s(json!({"podCIDRs":["nope"]}))).is_err());
        assert_eq!(pod_subnets(&s(json!({}))).unwrap(), (None, None));
    }

    #[test]
    fn only_changed_annotations_are_published_and_overwrites_win() {
        let a = ann();
        let attrs = LeaseAttrs::v4(
            Ipv4Addr::new(10, 0, 0, 51),
            "vxlan",
            Some(serde_json::from_str(MAC).unwrap()),
        );
        let empty = parse(json!({"metadata":{"name":"node1"}}));
        let all = annotations_to_publish(&empty, &a, &attrs, v4());
        assert_eq!(
            all.keys().cloned().collect::<Vec<_>>(),
            [
                "flannel.alpha.coreos.com/backend-data",
                "flannel.alpha.coreos.com/backend-type",
                "flannel.alpha.coreos.com/kube-subnet-manager",
                "flannel.alpha.coreos.com/public-ip"
            ]
        );
        let same = flannel_node("node1", "10.244.1.0/24", "10.0.0.51");
        assert!(
            annotations_to_publish(&same, &a, &attrs, v4()).is_empty(),
            "nothing changed"
        );
        let mut ow = same.clone();
        ow.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(a.backend_public_ip_overwrite.clone(), "192.0.2.9".into());
        let changed = annotations_to_publish(&ow, &a, &attrs, v4());
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[&a.backend_public_ip], "192.0.2.9");
        // host-gw writes backend-data null; v6 keys only with IPv6.
        let hg = LeaseAttrs::v4(Ipv4Addr::new(10, 0, 0, 51), "host-gw", None);
        let w = annotations_to_publish(&empty, &a, &hg, Families { v4: true, v6: true });
        assert_eq!(w[&a.backend_data], "null");
        assert!(!w.contains_key(&a.backend_v6_data));
    }
}
