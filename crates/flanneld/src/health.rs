//! The health server (upstream `--healthz-ip/--healthz-port`): `GET /healthz` is always 200,
//! `GET /readyz` is 200 once rules and subnet.env are in place and 503 before, `GET /metrics`
//! the Prometheus metrics (ours; upstream has none).
//!
//! Kubelet's liveness probe (1 s timeout) must always be answered: no number of idle or slow
//! connections, from one address or many, may hold it up, and none may cost the daemon its
//! resources (see [`crate::serve`]).

use crate::metrics::{self, Metrics};
use crate::serve::{max_connections, read_head, serve, PER_PEER};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

const PLAIN: &str = "text/plain; charset=utf-8";

/// How long the lease watch may fail without moving before `/readyz` says so: longer than a
/// restart of the API server or etcd, shorter than an operator's patience.
pub const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether flanneld is ready: started (rules and subnet.env in place) and its lease watch
/// moving; else why not.
pub fn readiness(started: &AtomicBool, metrics: &Metrics) -> Result<(), String> {
    if !started.load(Ordering::SeqCst) {
        return Err("flanneld is not ready yet".into());
    }
    match metrics.datastore().and_then(|d| d.stalled(STALL_LIMIT)) {
        Some(p) => Err(format!(
            "flanneld's lease watch is not progressing, its peers may be out of date: {p}"
        )),
        None => Ok(()),
    }
}

/// The response to a request head: status line, content type and body.
pub fn respond(
    head: &str,
    ready: Result<(), String>,
    metrics: &Metrics,
) -> (&'static str, &'static str, Cow<'static, str>) {
    let request = head.lines().next().unwrap_or("");
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/healthz") => ("200 OK", PLAIN, "flanneld is running".into()),
        ("GET" | "HEAD", "/readyz") => match ready {
            Ok(()) => ("200 OK", PLAIN, "flanneld is ready".into()),
            Err(why) => ("503 Service Unavailable", PLAIN, why.into()),
        },
        ("GET" | "HEAD", "/metrics") => {
            let om = metrics::wants_openmetrics(head);
            let ty = if om {
                metrics::OPENMETRICS
            } else {
                metrics::TEXT
            };
            ("200 OK", ty, metrics.render(om).into())
        }
        _ => ("404 Not Found", PLAIN, "404 page not found\n".into()),
    }
}

/// Writes one HTTP/1.1 answer and closes.
pub(crate) async fn answer<S: AsyncWriteExt + Unpin>(
    s: &mut S,
    status: &str,
    content_type: &str,
    body: &str,
) {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn handle(mut s: TcpStream, ready: Arc<AtomicBool>, metrics: Arc<Metrics>) {
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    let (status, ty, body) = respond(&head, readiness(&ready, &metrics), &metrics);
    debug!(
        request = head.lines().next().unwrap_or(""),
        status, "health request"
    );
    answer(&mut s, status, ty, &body).await;
}

/// Binds now (so a taken port is a startup error) and serves in the background.
pub async fn start(
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = crate::serve::bind_tcp(addr)?;
    Ok(tokio::spawn(serve(
        listener,
        "health server",
        max_connections(),
        PER_PEER,
        move |s| handle(s, ready.clone(), metrics.clone()),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_like_upstream_plus_metrics() {
        let m = Metrics::new();
        let r = |head: &str, ready: bool| {
            let why = if ready {
                Ok(())
            } else {
                Err("flanneld is not ready yet".to_string())
            };
            let (s, t, b) = respond(head, why, &m);
            (s, t, b.into_owned())
        };
        assert_eq!(
            r("GET /healthz HTTP/1.1", false),
            ("200 OK", PLAIN, "flanneld is running".into())
        );
        assert_eq!(
            r("GET /readyz HTTP/1.1", false).0,
            "503 Service Unavailable"
        );
        assert_eq!(
            r("GET /readyz?verbose HTTP/1.1", true),
            ("200 OK", PLAIN, "flanneld is ready".into())
        );
        let (s, t, b) = r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", true);
        assert_eq!((s, t), ("200 OK", metrics::TEXT));
        assert!(b.contains("flannel_build_info"), "{b}");
        let (_, t, b) = r(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n",
            true,
        );
        assert_eq!(t, metrics::OPENMETRICS);
        assert!(b.ends_with("# EOF\n"));
        assert_eq!(r("POST /metrics HTTP/1.1", true).0, "404 Not Found");
        assert_eq!(r("", true).0, "404 Not Found");
    }
}
