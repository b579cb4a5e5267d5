//! flanneld: wires the flag parser, the etcd subnet manager, the vxlan backend and the firewall
//! together. The binary in `flannel-rs` calls [`main`].

pub mod daemon;
pub mod drift;
pub mod health;
pub mod iface;
pub mod instance_lock;
pub mod metrics;
pub mod policy;
pub mod serve;
pub mod signals;
pub mod skiplog;
pub mod startup;
pub mod state_socket;

use flannel_cli::flags::{self, parse, usage, Parsed};
use flannel_cli::options;
use std::process::ExitCode;

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let values = match parse(&args, &|k| std::env::var(k).ok()) {
        Ok(Parsed::Help) => {
            eprint!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Values(v)) => v,
        Err(e @ flags::FlagError::BadEnv { .. }) => {
            eprintln!("flanneld: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("{e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    if values.bool("version") {
        eprintln!("{}", flannel_core::VERSION);
        return ExitCode::SUCCESS;
    }
    init_logging(values.int("v"));
    tracing::info!("CLI flags config: {}", values.describe());
    if !values.rest.is_empty() {
        tracing::warn!("ignoring extra arguments {:?}", values.rest);
    }
    let opts = match options::Options::from_values(&values, &|k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    // Before anything is bound or written: a second flanneld on this node stops here.
    let _lock = match instance_lock::take(&opts.subnet_file, instance_lock::WAIT) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{}", error_line(&e));
            return ExitCode::from(1);
        }
    };
    raise_nofile_limit();
    large_allocations_go_back();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(startup::run(opts)) {
        Ok(()) => {
            tracing::info!("Exiting cleanly...");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{}", error_line(&e));
            ExitCode::from(1)
        }
    }
}

/// Lets flanneld open as many files as the hard limit allows, as Go's runtime does for
/// upstream's flanneld: the servers' connection limits are a share of it.
fn raise_nofile_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit(2) read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Large buffers (a huge peer Node or lease read once, a long listing) are given back to the
/// system when freed. glibc raises its mmap threshold each time such a buffer is freed, after
/// which the next ones come from the heap and stay in flanneld's resident memory for good; a
/// fixed threshold keeps them mmapped. Our data paths allocate nothing that large per packet.
fn large_allocations_go_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning, before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// The error and its causes on one line, each cause said once.
fn error_line(e: &anyhow::Error) -> String {
    flannel_core::errtext::chain(e.chain().map(|c| c.to_string()))
}

fn init_logging(v: i64) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_directives(v)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Our crates whose logs `-v` controls.
const OUR_CRATES: &[&str] = &[
    "flanneld",
    "flannel_core",
    "flannel_subnet",
    "flannel_net",
    "flannel_backend",
];

/// `-v` means our logs: 0-1 info, 2-4 debug, 5 and up trace. Dependencies (HTTP/2, gRPC,
/// netlink) stay at warn whatever `-v` says; `RUST_LOG` overrides all of it.
pub fn log_directives(v: i64) -> String {
    let ours = match v {
        i64::MIN..=1 => "info",
        2..=4 => "debug",
        _ => "trace",
    };
    // kube-client logs every failed request itself; ours say it once, with the cause.
    let mut d = String::from("warn,kube_client=off");
    for c in OUR_CRATES {
        d.push_str(&format!(",{c}={ours}"));
    }
    d
}

#[cfg(test)]
mod tests {
    #[test]
    fn v_levels_apply_to_our_crates_only() {
        let d = super::log_directives(10);
        assert!(
            d.starts_with("warn,") && d.contains("flannel_subnet=trace"),
            "{d}"
        );
        assert!(super::log_directives(0).contains("flanneld=info"));
        assert!(super::log_directives(3).contains("flannel_net=debug"));
    }
}
