use flannel_core::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error("etcd {op} {key}: {source}")]
    Etcd {
        op: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {op} {key}: no answer within {secs} s")]
    Timeout {
        op: &'static str,
        key: String,
        secs: u64,
    },
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("reading etcd TLS file {path}: {source}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
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
}
