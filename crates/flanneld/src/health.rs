//! The health server (upstream `--healthz-ip/--healthz-port`): `GET /healthz` is always 200,
//! `GET /readyz` is 200 once rules and subnet.env are in place and 503 before, `GET /metrics`
//! the Prometheus metrics (ours; upstream has none).
//!
//! It must never cost the daemon its resources: at most [`MAX_CONNECTIONS`] are served at once
//! (the rest wait in the kernel's listen backlog, holding no file descriptor of ours), each
//! has [`CONNECTION_DEADLINE`] to send its request and take the answer, and a failing `accept`
//! (out of file descriptors, say) backs off instead of spinning.

use crate::metrics::{self, Metrics};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Connections served at once: probes come one at a time, this leaves room for a few.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take from accept to the end of the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(3);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

const PLAIN: &str = "text/plain; charset=utf-8";

/// The response to a request head: status line, content type and body.
pub fn respond(
    head: &str,
    ready: bool,
    metrics: &Metrics,
) -> (&'static str, &'static str, Cow<'static, str>) {
    let request = head.lines().next().unwrap_or("");
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/healthz") => ("200 OK", PLAIN, "flanneld is running".into()),
        ("GET" | "HEAD", "/readyz") if ready => ("200 OK", PLAIN, "flanneld is ready".into()),
        ("GET" | "HEAD", "/readyz") => (
            "503 Service Unavailable",
            PLAIN,
            "flanneld is not ready yet".into(),
        ),
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

/// Reads a request head (bounded in size; the caller bounds the time).
pub(crate) async fn read_head<S: AsyncReadExt + Unpin>(s: &mut S) -> String {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].ends_with(b"\n\n") {
            break;
        }
    }
    String::from_utf8_lossy(&buf[..n]).into_owned()
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
    let head = read_head(&mut s).await;
    let (status, ty, body) = respond(&head, ready.load(Ordering::SeqCst), &metrics);
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
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(serve(listener, ready, metrics)))
}

async fn serve(listener: TcpListener, ready: Arc<AtomicBool>, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failing: Option<std::io::ErrorKind> = None;
    loop {
        // A slot first: while all are busy, new connections wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((s, _)) => {
                if failing.take().is_some() {
                    info!("the health server accepts connections again");
                }
                backoff = ACCEPT_BACKOFF_MIN;
                let (ready, metrics) = (ready.clone(), metrics.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ =
                        tokio::time::timeout(CONNECTION_DEADLINE, handle(s, ready, metrics)).await;
                });
            }
            Err(e) => {
                if failing != Some(e.kind()) {
                    warn!(error = %e, "the health server cannot accept connections; backing off");
                    failing = Some(e.kind());
                }
                drop(slot);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_like_upstream_plus_metrics() {
        let m = Metrics::new();
        let r = |head: &str, ready: bool| {
            let (s, t, b) = respond(head, ready, &m);
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
