//! The health server (upstream `--healthz-ip/--healthz-port`): `GET /healthz` is always 200,
//! `GET /readyz` is 200 once rules and subnet.env are in place and 503 before.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

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
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    // Read the request head (bounded in size and time); only its first line matters.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while n < buf.len() {
            match s.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].contains(&b'\n') {
                break;
            }
        }
    })
    .await;
    if read.is_err() {
        return;
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
    Ok(tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                tokio::spawn(handle(s, ready.clone()));
            }
        }
    }))
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
