//! Fixtures shared by the integration tests: a real etcd, network namespaces that clean up after
//! themselves, unique names. Everything here is real: no mocks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// What the lab and the tests share lives in the test kit; these are its names here.
pub use flannel_testkit::etcd::Etcd;
pub use flannel_testkit::netns::run_ip as ip;
pub use flannel_testkit::procfs::{cpu_seconds, rss_kib};
pub use flannel_testkit::{
    assert_quiet_outage, eventually, expect_refusal, in_ns, unique, Netns, TempDir,
};

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For a test that needs root (network namespaces, devices): true when it must not run. As
/// another user it is skipped with a line saying so; with `FLANNEL_TESTS_REQUIRE_ROOT` set (the
/// README's test command and CI set it) a test that would be skipped fails instead, so a run
/// that means to test everything cannot quietly test less.
pub fn skip_without_root() -> bool {
    if is_root() {
        return false;
    }
    let name = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    assert!(
        std::env::var_os("FLANNEL_TESTS_REQUIRE_ROOT").is_none(),
        "{name} needs root (it makes network namespaces) and FLANNEL_TESTS_REQUIRE_ROOT is set: run the tests as root"
    );
    // Straight to stderr: the test harness hides what eprintln! says in a passing test.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped {name}: needs root (it makes network namespaces)"
    );
    true
}

pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(String::from));
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "this test needs root: it creates network namespaces"
    );
}

/// The MAC address of link `dev` in namespace `ns`, as `ip link` shows it.
pub fn link_mac(ns: &str, dev: &str) -> String {
    let l = ip(&["-n", ns, "-o", "link", "show", dev]);
    l.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{dev} in {ns} has no MAC: {l}"))
        .to_string()
}

/// Opens `n` TCP connections to 127.0.0.1:`port` inside namespace `ns` and keeps them open
/// (idle) until the returned handles are dropped.
pub fn idle_connections_in_ns(ns: &str, port: u16, n: usize) -> Vec<std::net::TcpStream> {
    in_ns(ns, move || {
        (0..n)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(2),
                )
                .ok()
            })
            .collect()
    })
}

/// Puts an executable copy of `src` at `dst` by running `cp`, not by writing it from here:
/// a file this process holds open for writing is inherited by every child another test thread
/// forks meanwhile, until that child execs, and running the file then fails with "Text file
/// busy" (ETXTBSY). Written by a process of its own, the file is closed for good when `cp`
/// exits.
pub fn copy_executable(src: &Path, dst: &Path) {
    let o = Command::new("cp")
        .arg(src)
        .arg(dst)
        .output()
        .expect("run cp");
    assert!(
        o.status.success(),
        "cp {} {}: {}",
        src.display(),
        dst.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An executable script at `dst` (see [`copy_executable`] for why it is not written in place).
pub fn write_executable(dst: &Path, contents: &str) {
    let draft = dst.with_extension("draft");
    std::fs::write(&draft, contents).expect("write the script");
    copy_executable(&draft, dst);
    let _ = std::fs::remove_file(&draft);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The directory holding the built binaries (flanneld, flannel, flannel-lab).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flanneld"))
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

/// A child process killed and reaped on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Certificates for an etcd that speaks TLS, from the workspace's one generator
/// (`flannel_kube_fake::tls::Ca`): a CA, a server certificate for 127.0.0.1 and a client
/// certificate (CN root), all signed by the CA; PEM files in `dir`.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    pub fn generate(dir: &Path) -> Self {
        use flannel_kube_fake::tls::Ca;
        let p = |n: &str| dir.join(n);
        let ca = Ca::new("test-ca").expect("make a CA");
        std::fs::write(p("ca.pem"), &ca.pem).expect("write ca.pem");
        let sans = ["127.0.0.1".to_string(), "localhost".to_string()];
        let server = ca
            .issue(&sans, "127.0.0.1", true)
            .expect("server certificate");
        Ca::write(dir, "server", &server).expect("write the server certificate");
        let client = ca.issue(&[], "root", false).expect("client certificate");
        Ca::write(dir, "client", &client).expect("write the client certificate");
        Self {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
        }
    }
}

pub mod ctl;
pub mod dns;
pub mod flood;
/// One node in a namespace of its own: `eth0` with 10.0.0.50/24 and fd00::50/64, a real etcd on
/// its loopback (stoppable and restartable on the same data dir, optionally with TLS), and our
/// flanneld started and stopped on demand. Everything goes on drop.
pub mod kube;
pub mod lab;

pub struct Node {
    pub flanneld: Option<Proc>,
    /// How many times the log said "flannel is ready" before the current start.
    ready_before: usize,
    etcd: Option<Proc>,
    /// Extra etcd arguments (TLS); a test may add some before restarting etcd.
    pub etcd_args: Vec<String>,
    /// The client URL of the node's etcd.
    pub endpoint: String,
    /// Flags every `etcdctl` call gets (credentials, CA) once the test turned them on.
    pub etcdctl_flags: Vec<String>,
    /// `ulimit -n` for the next flanneld start, when set.
    pub nofile: Option<u64>,
    /// A command line flanneld is started through (it must exec `"$0" "$@"`), when set.
    pub launcher: Vec<String>,
    pub dir: TempDir,
    pub ns: Netns,
}

impl Node {
    pub fn new(tag: &str) -> Self {
        let mut n = Self::build(tag, None);
        n.start_etcd();
        n
    }

    /// A node without etcd (Kubernetes mode brings its own API server).
    pub fn bare(tag: &str) -> Self {
        Self::build(tag, None)
    }

    /// A node whose etcd serves TLS only (`https://127.0.0.1:2379`); returns the certificates.
    pub fn with_tls(tag: &str) -> (Self, TlsFiles) {
        let dir = TempDir::new(&format!("{tag}-tls"));
        let tls = TlsFiles::generate(dir.path());
        let mut node = Self::build(tag, Some((&tls, dir)));
        node.start_etcd();
        (node, tls)
    }

    fn build(tag: &str, tls: Option<(&TlsFiles, TempDir)>) -> Self {
        require_root();
        let ns = Netns::new(tag);
        ip(&[
            "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ]);
        ip(&["-n", &ns.0, "addr", "add", "10.0.0.50/24", "dev", "eth0"]);
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            "fd00::50/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns.0, "link", "set", "eth1", "up"]);
        let dir = TempDir::new(tag);
        let (scheme, mut etcd_args, mut etcdctl_flags) = ("http", Vec::new(), Vec::new());
        let scheme = match tls {
            None => scheme,
            Some((t, tls_dir)) => {
                // The certificates live with the node's files from here on.
                let keep = dir.path().join("tls");
                std::fs::rename(tls_dir.path(), &keep).expect("move tls dir");
                std::mem::forget(tls_dir);
                let at = |p: &Path| {
                    keep.join(p.file_name().expect("file"))
                        .display()
                        .to_string()
                };
                etcd_args = vec![
                    format!("--cert-file={}", at(&t.server_cert)),
                    format!("--key-file={}", at(&t.server_key)),
                ];
                etcdctl_flags = vec![format!("--cacert={}", at(&t.ca))];
                "https"
            }
        };
        let endpoint = format!("{scheme}://127.0.0.1:2379");
        Node {
            ready_before: 0,
            flanneld: None,
            etcd: None,
            etcd_args,
            endpoint,
            etcdctl_flags,
            nofile: None,
            launcher: Vec::new(),
            dir,
            ns,
        }
    }

    /// Starts the node's etcd on its data dir (kept across restarts).
    pub fn start_etcd(&mut self) {
        assert!(self.etcd.is_none(), "etcd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        self.etcd = Some(Proc(
            Command::new("ip")
                .args(["netns", "exec", &self.ns.0, "etcd", "--data-dir"])
                .arg(self.dir.path().join("etcd"))
                .arg(format!("--listen-client-urls={}", self.endpoint))
                .arg(format!("--advertise-client-urls={}", self.endpoint))
                .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
                .args(&self.etcd_args)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start etcd"),
        ));
    }

    /// Names the certificate files of a node made by [`Node::with_tls`] (`ca.pem`, ...), without
    /// holding on to the node.
    pub fn tls_files(&self) -> impl Fn(&str) -> String {
        let dir = self.dir.path().join("tls");
        move |name| dir.join(name).display().to_string()
    }

    /// Kills the node's etcd (its data stays).
    pub fn stop_etcd(&mut self) {
        drop(self.etcd.take().expect("etcd running"));
    }

    /// `etcdctl` inside the node, retried while etcd starts.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let mut out = String::new();
        let mut err = String::new();
        let ok = eventually(Duration::from_secs(10), || {
            match Command::new("ip")
                .args(["netns", "exec", &self.ns.0, "etcdctl"])
                .arg(format!("--endpoints={}", self.endpoint))
                .args(&self.etcdctl_flags)
                .args(args)
                .env("ETCDCTL_API", "3")
                .output()
            {
                Ok(o) if o.status.success() => {
                    out = String::from_utf8_lossy(&o.stdout).into_owned();
                    true
                }
                Ok(o) => {
                    err = String::from_utf8_lossy(&o.stderr).into_owned();
                    false
                }
                Err(e) => {
                    err = e.to_string();
                    false
                }
            }
        });
        assert!(ok.is_some(), "etcdctl {args:?} failed: {err}");
        out
    }

    pub fn subnet_env(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("flanneld.log")).unwrap_or_default()
    }

    /// Starts flanneld (`--etcd-endpoints`, `--iface=eth0` and `--subnet-file` are given).
    pub fn start(&mut self, extra: &[&str]) {
        let mut args = vec!["--iface=eth0"];
        args.extend_from_slice(extra);
        self.start_with(&args);
    }

    /// Starts flanneld with `--etcd-endpoints`, `--subnet-file` and exactly `extra`.
    pub fn start_with(&mut self, extra: &[&str]) {
        self.start_env(extra, &[]);
    }

    /// flanneld's metrics page, as `flannelctl metrics` prints it from the state socket.
    pub fn metrics_page(&self) -> String {
        self.exec(
            &bin_dir().join("flannelctl").display().to_string(),
            &[
                &format!("--state-socket={}", self.state_socket().display()),
                "metrics",
            ],
        )
    }

    /// How many kernel passes flanneld has made (every trigger, full and incremental).
    pub fn reconcile_passes(&self) -> f64 {
        let m = flannel_lab::metrics::parse(&self.metrics_page());
        flannel_lab::metrics::total(&m, "flannel_reconcile_passes_total")
    }

    /// Waits until flanneld has made `more` kernel passes after now: what a test that checks
    /// that state stays right "a few passes later" waits for, instead of a guess in seconds.
    pub fn wait_passes(&self, more: usize) {
        let from = self.reconcile_passes();
        let done = eventually(Duration::from_secs(20), || {
            self.reconcile_passes() >= from + more as f64
        });
        assert!(
            done.is_some(),
            "flanneld made fewer than {more} kernel passes in 20 s\n{}",
            self.log()
        );
    }

    /// Where this flanneld serves its state (`--state-socket`).
    pub fn state_socket(&self) -> PathBuf {
        self.dir.path().join("flanneld.sock")
    }

    /// Like [`Self::start_with`], with extra environment variables (`FLANNELD_*`).
    pub fn start_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        // subnet.env stays: a restart reads the previous run's subnet and network from it.
        self.ready_before = self.log().matches("flannel is ready").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("flanneld.log"))
            .expect("log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.0])
            .args(&self.launcher)
            .arg(bin_dir().join("flanneld"))
            .arg(format!("--subnet-file={}", self.subnet_env().display()));
        // Parallel tests: each flanneld its own state socket (the default is the node's one).
        if !extra.iter().any(|a| a.starts_with("--state-socket")) {
            cmd.arg(format!("--state-socket={}", self.state_socket().display()));
        }
        if !extra.iter().any(|a| a.starts_with("--etcd-endpoints")) {
            cmd.arg(format!("--etcd-endpoints={}", self.endpoint));
        }
        if let Some(limit) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit(2) between fork and exec touches no memory of the parent; the
            // limit is inherited by flanneld through `ip netns exec`.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start flanneld");
        self.flanneld = Some(Proc(child));
    }

    /// Waits until this start of flanneld says it is ready; panics with the log otherwise.
    pub fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(15), || {
            self.log().matches("flannel is ready").count() > self.ready_before
        });
        assert!(
            ok.is_some(),
            "flanneld did not become ready:\n{}",
            self.log()
        );
    }

    /// The PID of the running flanneld (`ip netns exec` execs it in place).
    pub fn flanneld_pid(&self) -> i32 {
        self.flanneld.as_ref().expect("flanneld running").0.id() as i32
    }

    /// Whether the flanneld started last is still running.
    pub fn flanneld_running(&mut self) -> bool {
        match self.flanneld.as_mut() {
            Some(p) => matches!(p.0.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for flanneld to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let p = self.flanneld.as_mut()?;
        let mut status = None;
        eventually(timeout, || {
            status = p.0.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// SIGTERM, then the exit status; a flanneld that ignores the signal fails the test
    /// (with its log) instead of hanging it.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.flanneld_pid();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.wait_exit(Duration::from_secs(30));
        // Dropping the process kills and reaps it if it still runs.
        self.flanneld = None;
        status.unwrap_or_else(|| panic!("flanneld ignored SIGTERM for 30 s:\n{}", self.log()))
    }

    /// Runs a command inside the node and returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns.0, program])
            .args(args)
            .output()
            .expect("exec");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// `GET <path>` to 127.0.0.1:<port> inside namespace `ns` (from a thread that enters it):
/// the status code and body, or `None` when nothing answers.
pub fn http_get_in_ns(ns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    http_get_in_ns_with(ns, port, path, "")
}

/// [`http_get_in_ns`] with more request headers (each ending in `\r\n`).
pub fn http_get_in_ns_with(
    ns: &str,
    port: u16,
    path: &str,
    headers: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).ok()?;
    let path = path.to_string();
    let headers = headers.to_string();
    std::thread::spawn(move || {
        // SAFETY: setns(2) on this short-lived thread only; the fd is open for the call.
        if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        Some((code, body))
    })
    .join()
    .ok()
    .flatten()
}
