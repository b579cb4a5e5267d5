//! Node annotation names under `--kube-annotation-prefix` (upstream `annotations.go`): at most one
//! `/`; none → one is appended; a prefix that does not end in `/` or `-` gets a `-`; the result
//! must match `(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$` (as Go's `MatchString`: not
//! anchored at the start).

use regex::Regex;
use std::sync::OnceLock;

/// The full names of every annotation flannel reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    pub subnet_kube_managed: String,
    pub backend_type: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub backend_public_ip: String,
    pub backend_public_ipv6: String,
    pub backend_public_ip_overwrite: String,
    pub backend_public_ipv6_overwrite: String,
    pub node_public_ip: String,
    pub node_public_ipv6: String,
}

fn pattern() -> &'static Regex {
    static P: OnceLock<Regex> = OnceLock::new();
    P.get_or_init(|| {
        Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
            .unwrap_or_else(|_| unreachable!())
    })
}

impl Annotations {
    pub fn new(prefix: &str) -> Result<Self, String> {
        let slashes = prefix.matches('/').count();
        if slashes > 1 {
            return Err(format!(
                "--kube-annotation-prefix {prefix:?}: a prefix can contain at most one slash"
            ));
        }
        let mut p = prefix.to_string();
        if slashes == 0 {
            p.push('/');
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        if !pattern().is_match(&p) {
            return Err(format!(
                "--kube-annotation-prefix {prefix:?}: a prefix must be in a format: fqdn/[0-9a-z-_]*"
            ));
        }
        let n = |s: &str| format!("{p}{s}");
        Ok(Self {
            subnet_kube_managed: n("kube-subnet-manager"),
            backend_type: n("backend-type"),
            backend_data: n("backend-data"),
            backend_v6_data: n("backend-v6-data"),
            backend_public_ip: n("public-ip"),
            backend_public_ipv6: n("public-ipv6"),
            backend_public_ip_overwrite: n("public-ip-overwrite"),
            backend_public_ipv6_overwrite: n("public-ipv6-overwrite"),
            node_public_ip: n("node-public-ip"),
            node_public_ipv6: n("node-public-ipv6"),
        })
    }

    /// Whether `name` is one of ours (the watch keeps only these).
    pub fn is_ours(&self, name: &str) -> bool {
        [
            &self.subnet_kube_managed,
            &self.backend_type,
            &self.backend_data,
            &self.backend_v6_data,
            &self.backend_public_ip,
            &self.backend_public_ipv6,
            &self.backend_public_ip_overwrite,
            &self.backend_public_ipv6_overwrite,
            &self.node_public_ip,
            &self.node_public_ipv6,
        ]
        .iter()
        .any(|n| *n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of upstream's `annotations_test.go`, as prefix → the `kube-subnet-manager`
    /// annotation (or an error).
    #[test]
    fn prefix_rules_like_upstream() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "flannel.alpha.coreos.com",
                Some("flannel.alpha.coreos.com/kube-subnet-manager"),
            ),
            (
                "flannel.alpha.coreos.com/",
                Some("flannel.alpha.coreos.com/kube-subnet-manager"),
            ),
            (
                "flannel.alpha.coreos.com/prefix",
                Some("flannel.alpha.coreos.com/prefix-kube-subnet-manager"),
            ),
            (
                "flannel.alpha.coreos.com/prefix-",
                Some("flannel.alpha.coreos.com/prefix-kube-subnet-manager"),
            ),
            ("org.com/x", Some("org.com/x-kube-subnet-manager")),
            ("org.com", Some("org.com/kube-subnet-manager")),
            (
                "a.b.c_d-e.com/p_q-",
                Some("a.b.c_d-e.com/p_q-kube-subnet-manager"),
            ),
            ("flannel.alpha.coreos.com/prefix/", None),
            ("flannel.alpha.coreos.com/pre/fix", None),
            ("flannel", None),
            ("", None),
            ("flannel.alpha.coreos.com/pre.fix", None),
        ];
        for (prefix, want) in cases {
            let got = Annotations::new(prefix).map(|a| a.subnet_kube_managed);
            match want {
                Some(w) => assert_eq!(got.as_deref(), Ok(*w), "{prefix:?}"),
                None => assert!(got.is_err(), "{prefix:?} should be refused, got {got:?}"),
            }
        }
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        assert_eq!(a.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(a.node_public_ip, "flannel.alpha.coreos.com/node-public-ip");
        assert!(a.is_ours("flannel.alpha.coreos.com/public-ip-overwrite"));
        assert!(!a.is_ours("kubernetes.io/hostname"));
    }
}
