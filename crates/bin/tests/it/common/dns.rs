//! A DNS server for a few names, inside a network namespace the test made: enough of RFC 1035
//! for a resolver (glibc's) to look up A records over UDP. Unknown names get NXDOMAIN, known
//! names asked for another type an empty answer. Stops when dropped.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Dns {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Names asked for, in order (to show the lookup went through this server).
    pub asked: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Dns {
    /// Serves `names` on UDP `listen` (e.g. 127.0.0.53:53) inside namespace `ns`.
    pub fn start(ns: &str, listen: &str, names: &[(&str, Ipv4Addr)]) -> Self {
        let names: Vec<(String, Ipv4Addr)> =
            names.iter().map(|(n, a)| (n.to_string(), *a)).collect();
        let listen = listen.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, asked) = (stop.clone(), asked.clone());
            flannel_testkit::netns::spawn_in_ns(ns, move || {
                let sock = UdpSocket::bind(&listen).expect("bind the DNS server");
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let _ = tx.send(());
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some((name, reply)) = answer(&buf[..len], &names) {
                        asked.lock().unwrap().push(name);
                        let _ = sock.send_to(&reply, from);
                    }
                }
            })
        };
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the DNS server did not start");
        Self {
            stop,
            thread: Some(thread),
            asked,
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to one query: the name asked, and the message.
fn answer(q: &[u8], names: &[(String, Ipv4Addr)]) -> Option<(String, Vec<u8>)> {
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    // One question: QNAME as labels, then QTYPE and QCLASS.
    let mut i = 12;
    let mut labels = Vec::new();
    while *q.get(i)? != 0 {
        let n = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + n)?).to_lowercase());
        i += 1 + n;
    }
    let end = i + 5;
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question = q.get(12..end)?;
    let name = labels.join(".");
    let known = names.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
    let rcode = if known.is_some() { 0 } else { 3 };
    let answers = u16::from(known.is_some() && qtype == 1);
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&[0x81, 0x80 | rcode]);
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&answers.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    if let (Some(addr), 1) = (known, answers) {
        // The name by pointer to the question, type A, class IN, TTL 5, 4 bytes.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        r.extend_from_slice(&addr.octets());
    }
    Some((name, r))
}
