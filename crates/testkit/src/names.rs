//! Names unique to this process and call, so that tests running in parallel (and labs beside
//! them) never share a namespace, a directory or an etcd prefix.

use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_calls_never_give_one_name() {
        assert_ne!(super::unique("a"), super::unique("a"));
        assert!(super::unique("ns").starts_with(&format!("ns{}x", std::process::id())));
    }
}
