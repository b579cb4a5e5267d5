//! The local state socket (`--state-socket`, default `/run/flannel/flanneld.sock`, mode 0600):
//! HTTP/1.1 over a Unix socket, for `flannelctl` on the node. `GET /state` is the daemon's
//! snapshot as JSON (see `flannel_core::state`), asked of the event loop and answered between
//! two events; `/metrics`, `/healthz` and `/readyz` are the health server's, so metrics are
//! there even with the health port off (its default).

use crate::health::{answer, readiness, respond};
use crate::metrics::Metrics;
use crate::serve::{max_connections, read_head, serve, PER_PEER};
use flannel_core::state::StateSnapshot;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// A request for the daemon's snapshot, answered on the channel inside.
pub type StateRequest = oneshot::Sender<StateSnapshot>;

/// The socket file, removed when flanneld exits if it is still the one we bound (another
/// process may have replaced it: its socket is not ours to remove).
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the socket we bound.
    id: Option<(u64, u64)>,
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.id.is_some() && file_id(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `path` (replacing a stale socket left by a previous run, never another kind of file
/// and never a socket something still answers on) and serves in the background.
pub fn start(
    path: &Path,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    requests: mpsc::Sender<StateRequest>,
) -> anyhow::Result<SocketFile> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another process (another flanneld?) listens on the state socket {}: stop it, or set --state-socket",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the old socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; remove it or set --state-socket",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = crate::serve::bind_unix(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    let id = file_id(path);
    tokio::spawn(serve(
        listener,
        "state socket",
        max_connections(),
        PER_PEER,
        move |s| handle(s, ready.clone(), metrics.clone(), requests.clone()),
    ));
    Ok(SocketFile {
        path: path.to_path_buf(),
        id,
    })
}

/// How long a `/state` request waits for the event loop: well inside the connection's deadline,
/// so that a busy loop is reported as such.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn handle(
    mut s: UnixStream,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    requests: mpsc::Sender<StateRequest>,
) {
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    let line = head.lines().next().unwrap_or("");
    debug!(request = line, "state socket request");
    let mut parts = line.split_whitespace();
    if (parts.next(), parts.next()) == (Some("GET"), Some("/state")) {
        let (tx, rx) = oneshot::channel();
        // Before ready the event loop does not run yet: say so at once. The loop answers
        // between two events; one long pass (a cold start of 20000 peers) is answered "busy"
        // before the connection's deadline rather than not at all.
        let why = if !ready.load(Ordering::SeqCst) {
            "flanneld is starting (no lease yet); try again\n"
        } else if requests.try_send(tx).is_err() {
            "flanneld is busy (other state requests are waiting); try again\n"
        } else {
            match tokio::time::timeout(SNAPSHOT_WAIT, rx).await {
                Ok(Ok(snapshot)) => match serde_json::to_string_pretty(&snapshot) {
                    Ok(json) => return answer(&mut s, "200 OK", "application/json", &json).await,
                    Err(_) => "flanneld could not encode its state\n",
                },
                Ok(Err(_)) => "flanneld is stopping\n",
                Err(_) => "flanneld is busy (a long reconcile pass is running); try again\n",
            }
        };
        answer(&mut s, "503 Service Unavailable", "text/plain", why).await;
        return;
    }
    let (status, ty, body) = respond(&head, readiness(&ready, &metrics), &metrics);
    answer(&mut s, status, ty, &body).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_state(path: &Path) -> String {
        let mut s = UnixStream::connect(path).await.expect("connect");
        s.write_all(b"GET /state HTTP/1.1\r\nHost: flanneld\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    /// A snapshot asked while the event loop is in a long pass is answered "busy" before the
    /// connection's deadline, not dropped unanswered; a free loop answers with the snapshot.
    #[tokio::test]
    async fn a_busy_event_loop_is_reported_as_busy_and_a_free_one_answers() {
        let dir = std::env::temp_dir().join(format!("flanneld-state-{}", std::process::id()));
        let path = dir.join("flanneld.sock");
        let ready = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::channel::<StateRequest>(4);
        let _file = start(&path, ready.clone(), Metrics::new(), tx).expect("start");

        let starting = get_state(&path).await;
        assert!(starting.starts_with("HTTP/1.1 503"), "{starting}");
        assert!(starting.contains("starting (no lease yet)"), "{starting}");

        ready.store(true, Ordering::SeqCst);
        let t0 = std::time::Instant::now();
        let busy = get_state(&path).await;
        assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
        assert!(busy.contains("busy (a long reconcile pass"), "{busy}");
        assert!(
            t0.elapsed() < crate::serve::CONNECTION_DEADLINE,
            "{:?}",
            t0.elapsed()
        );
        drop(rx.recv().await);

        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let _ = req.send(StateSnapshot {
                    version: "test".into(),
                    ..Default::default()
                });
            }
        });
        let ok = get_state(&path).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("\"version\": \"test\""), "{ok}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
