use flannel_core::ConfigError;
use std::error::Error as _;
use std::fmt;

/// An etcd client error, displayed with its real cause. etcd-client's own text hides it (a TLS
/// problem prints "transport error: transport error") and it has no `source()`; gRPC statuses
/// print a Debug dump of their source. This prints `<code>: <message>: <causes>` instead.
#[derive(Debug)]
pub struct EtcdCause(pub etcd_client::Error);

impl From<etcd_client::Error> for EtcdCause {
    fn from(e: etcd_client::Error) -> Self {
        Self(e)
    }
}

impl fmt::Display for EtcdCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut msgs: Vec<String> = Vec::new();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = None;
        match &self.0 {
            etcd_client::Error::GRpcStatus(s) => {
                msgs.push(format!("{:?}", s.code()).to_lowercase());
                msgs.push(s.message().to_string());
                cause = s.source();
            }
            etcd_client::Error::TransportError(t) => {
                msgs.push("transport error".into());
                cause = t.source();
            }
            other => msgs.push(other.to_string()),
        }
        while let Some(c) = cause {
            msgs.push(c.to_string());
            cause = c.source();
        }
        f.write_str(&flannel_core::errtext::chain(msgs))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error("etcd {op} {key}: {cause}")]
    Etcd {
        op: &'static str,
        key: String,
        cause: EtcdCause,
    },
    #[error("etcd {op} {key}: no answer within {secs} s")]
    Timeout {
        op: &'static str,
        key: String,
        secs: u64,
    },
    #[error("cannot connect to etcd at {endpoints}: {cause}")]
    Connect { endpoints: String, cause: EtcdCause },
    #[error("{flag} {path}: {msg}")]
    TlsFile {
        flag: String,
        path: String,
        msg: String,
    },
    #[error("etcd endpoints {0}")]
    Endpoints(String),
    #[error("invalid network config at {key}: {source}")]
    Config {
        key: String,
        #[source]
        source: ConfigError,
    },
    #[error("out of subnets: every subnet between SubnetMin and SubnetMax is leased")]
    OutOfSubnets,
    #[error("could not take a subnet after {0} attempts: other nodes kept winning the race")]
    TooManyConflicts(usize),
    #[error("lease {key} is gone or was changed by another writer")]
    LeaseLost { key: String },
    /// Not possible yet: wait and ask again (a node without podCIDR, the API away).
    #[error("{0}")]
    NotYet(String),
    /// A request to the Kubernetes API failed; `code` is the HTTP status when the server
    /// answered.
    #[error("Kubernetes API: {op} {target}: {msg}")]
    Kube {
        op: &'static str,
        target: String,
        msg: String,
        code: Option<u16>,
    },
    /// A file the datastore reads (net-conf.json, a kubeconfig) cannot be used.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}
