//! What the compiler needs of Pods, Namespaces and NetworkPolicies, already checked: every
//! field the API could send malformed is either understood or recorded as a problem, and a
//! part we cannot express matches nothing (it never allows).

use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub type Labels = BTreeMap<String, String>;

/// The label the API server puts on every namespace.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// As the API spells it (`TCP`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// As nftables spells it.
    pub fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

/// A container port with a name (`containers[].ports[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    pub phase: String,
    pub ports: Vec<NamedPort>,
}

impl Pod {
    /// Whether policies see this pod at all: hostNetwork pods (their address is the node's),
    /// pods without an address and finished pods are left out, as selected pods and as peers.
    pub fn counts(&self) -> bool {
        !self.host_network
            && !self.ips.is_empty()
            && self.phase != "Succeeded"
            && self.phase != "Failed"
    }

    /// The port its containers call `name` for `proto`.
    pub fn named_port(&self, name: &str, proto: Proto) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.proto == proto)
            .map(|p| p.port)
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

/// A label selector. `invalid` when a part of it could not be read (an unknown operator):
/// as a peer it then matches nothing, as a policy's pod selector every pod of the namespace
/// (what we cannot read never allows, and never leaves a pod open).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub labels: Labels,
    pub exprs: Vec<Expr>,
    pub invalid: bool,
}

impl Selector {
    /// Whether `labels` match every requirement (an empty selector matches everything).
    pub fn matches(&self, labels: &Labels) -> bool {
        if self.invalid {
            return false;
        }
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|e| {
                let v = labels.get(&e.key);
                match e.op {
                    Op::In => v.is_some_and(|v| e.values.contains(v)),
                    Op::NotIn => v.is_none_or(|v| !e.values.contains(v)),
                    Op::Exists => v.is_some(),
                    Op::DoesNotExist => v.is_none(),
                }
            })
    }

    /// As the policy's own pod selector: an unreadable one selects the whole namespace.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.invalid || self.matches(labels)
    }
}

/// One `from`/`to` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods by selector: `pods` alone is the policy's namespace, `namespaces` alone every pod
    /// of the matching namespaces, both together (AND) the matching pods there.
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    /// `ipBlock`: the CIDR less the exceptions; pod addresses included.
    Block { cidr: IpNet, except: Vec<IpNet> },
    /// A peer we could not read: matches nothing.
    Nothing,
}

/// One `ports` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// Every port of the protocol (no `port`).
    All(Proto),
    /// `port`, or `port`..=`endPort`.
    Range { proto: Proto, from: u16, to: u16 },
    /// A named port, resolved on each destination pod.
    Named { proto: Proto, name: String },
    /// An entry we could not read: matches nothing.
    Nothing,
}

/// One ingress or egress rule. An empty `peers` list means every peer, an empty `ports`
/// list every port (of every protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `Some` when the policy is of type Ingress: the pods it selects are isolated for
    /// ingress and these rules allow (none: nothing).
    pub ingress: Option<Vec<Rule>>,
    /// The same for Egress.
    pub egress: Option<Vec<Rule>>,
    /// What could not be read and is therefore not enforced (it allows nothing).
    pub problems: Vec<String>,
}

impl Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Whether `ip` is in `cidr` and in none of the exceptions.
pub fn in_block(ip: IpAddr, cidr: &IpNet, except: &[IpNet]) -> bool {
    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}
