//! The health server (upstream `--healthz-ip/--healthz-port`): `GET /healthz` is always 200,
//! `GET /readyz` is 200 once rules and subnet.env are in place and 503 before.
//!
//! It must never cost the daemon its resources: at most [`MAX_CONNECTIONS`] are served at once
//! (the rest wait in the kernel's listen backlog, holding no file descriptor of ours), each
//! has [`CONNECTION_DEADLINE`] to send its request and take the answer, and a failing `accept`
//! (out of file descriptors, say) backs off instead of spinning.

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

/// The response for a request line: status line and body.
pub fn respond(request: &str, ready: bool) -> (&'static str, &'static str) {
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/healthz") => ("200 OK", "flanneld is running"),
        ("GET" | "HEAD", "/readyz") if ready => ("200 OK", "flanneld is ready"),
        ("GET" | "HEAD", "/readyz") => ("503 Service Unavailable", "flanneld is not ready yet"),
        _ => ("404 Not Found", "404 page not found\n"),
    }
}

async fn handle(mut s: TcpStream, ready: Arc<AtomicBool>) {
    let mut buf = [0u8; 1024];
    let mut n = 0;
    // Read the request head (bounded in size; the caller bounds the time); only its first line
    // matters.
    while n < buf.len() {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let line = head.lines().next().unwrap_or("");
    let (status, body) = respond(line, ready.load(Ordering::SeqCst));
    debug!(request = line, status, "health request");
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Binds now (so a taken port is a startup error) and serves in the background.
pub async fn start(
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(serve(listener, ready)))
}

async fn serve(listener: TcpListener, ready: Arc<AtomicBool>) {
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
                let ready = ready.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = tokio::time::timeout(CONNECTION_DEADLINE, handle(s, ready)).await;
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
    fn routes_like_upstream() {
        assert_eq!(
            respond("GET /healthz HTTP/1.1", false),
            ("200 OK", "flanneld is running")
        );
        assert_eq!(
            respond("GET /readyz HTTP/1.1", false).0,
            "503 Service Unavailable"
        );
        assert_eq!(
            respond("GET /readyz?verbose HTTP/1.1", true),
            ("200 OK", "flanneld is ready")
        );
        assert_eq!(respond("GET /metrics HTTP/1.1", true).0, "404 Not Found");
        assert_eq!(respond("", true).0, "404 Not Found");
    }
}
