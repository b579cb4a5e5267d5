//! A real etcd for a test: on a free loopback port with its data in a temporary directory,
//! healthy before it is handed out, stopped on drop. When CI already runs one
//! (`FLANNEL_TEST_ETCD_ENDPOINTS`), that one is used and tests keep apart by key prefix.

use crate::TempDir;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

/// A real etcd on loopback, stopped on drop.
pub struct Etcd {
    pub endpoint: String,
    child: Option<Child>,
    _dir: Option<TempDir>,
}

impl Etcd {
    pub fn start() -> Self {
        if let Ok(ep) = std::env::var("FLANNEL_TEST_ETCD_ENDPOINTS") {
            if !ep.is_empty() {
                return Self {
                    endpoint: ep,
                    child: None,
                    _dir: None,
                };
            }
        }
        let dir = TempDir::new("etcd");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcd (apt-get install etcd-server): {e}"));
        let e = Self {
            endpoint,
            child: Some(child),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Listening is not serving: wait until etcd's own /health says so (it has a leader).
        let healthy = || -> bool {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", client)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut resp = String::new();
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
                && s.read_to_string(&mut resp).is_ok()
                && resp.contains("\"health\":\"true\"")
        };
        while !healthy() {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
