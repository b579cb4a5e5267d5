//! Changes to the policy table made by anyone, as nftables announces them (`nft monitor`, the
//! netlink notifications of the nf_tables subsystem): each wakes the enforcer, which compares
//! the table with what it should be and puts back what someone changed, within a second
//! instead of at the next resync. Our own writes are announced too; comparing finds nothing
//! to do for them.

use super::watch::Shared;
use flannel_policy::TABLE;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::{debug, warn};

/// Follows `nft monitor` for as long as it runs, restarting it when it ends.
pub async fn watch_table(shared: Arc<Shared>) {
    let mut said = false;
    let mut pause =
        flannel_core::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match follow(&shared).await {
            Ok(()) => debug!("nft monitor ended; starting it again"),
            Err(e) if !said => {
                warn!("network policy: cannot follow nftables' notifications ({e}); a table changed by hand is put back at the next resync instead");
                said = true;
            }
            Err(e) => debug!("nft monitor: {e}"),
        }
        tokio::time::sleep(pause.next()).await;
    }
}

async fn follow(shared: &Shared) -> std::io::Result<()> {
    let mut child = tokio::process::Command::new("nft")
        .arg("monitor")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let Some(out) = child.stdout.take() else {
        return Err(std::io::Error::other("nft monitor has no output"));
    };
    let mut lines = BufReader::new(out).lines();
    let ours = format!(" {TABLE}");
    while let Some(line) = lines.next_line().await? {
        if line.contains(&ours) {
            shared.kernel_changed.notify_one();
        }
    }
    let status = child.wait().await?;
    Err(std::io::Error::other(format!(
        "nft monitor exited ({status})"
    )))
}
