//! flanneld's other outside input: command-line flags with their `FLANNELD_*` environment, and
//! the request head a health-check or metrics client sends. Any bytes give values or an error, never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

static METRICS: std::sync::OnceLock<std::sync::Arc<flanneld::metrics::Metrics>> =
    std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The head up to the first empty line is what a client sends to the health server (and
    // to the state socket): request line and headers (`Accept` picks the metrics format).
    let head = text.split("\n\n").next().unwrap_or_default();
    let metrics = METRICS.get_or_init(flanneld::metrics::Metrics::new);
    let (status, _, _) = flanneld::health::respond(
        head,
        if data.len() % 2 == 0 { Ok(()) } else { Err("not ready".into()) },
        metrics,
    );
    assert!(status.starts_with("200") || status.starts_with("404") || status.starts_with("503"));
    // The rest: arguments before a line "--", `NAME=value` environment lines after it.
    let mut args = Vec::new();
    let mut env = Vec::new();
    let mut in_env = false;
    for l in text.lines().skip(1) {
        if l == "--" {
            in_env = true;
        } else if in_env {
            if let Some((k, v)) = l.split_once('=') {
                env.push((k.to_string(), v.to_string()));
            }
        } else {
            args.push(l.to_string());
        }
    }
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let Ok(flannel_cli::flags::Parsed::Values(v)) = flannel_cli::flags::parse(&args, &get) {
        let _ = v.describe();
        let _ = flannel_cli::Options::from_values(&v, &get);
    }
});
