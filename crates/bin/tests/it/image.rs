//! The container image: `scripts/build-image.sh` links our binaries statically (the image is
//! `FROM scratch`: no libc to load them with) and puts beside them the firewall tools flanneld
//! runs, with every library they load. Checked here by running them with nothing else around:
//! the binaries alone in an empty root, iptables and nft from the image's root in a namespace
//! of the test's own, and the built image with buildah (installed by scripts/install-deps.sh).
//! And the image's flanneld, in a root of only the image's files, finds etcd and the API server
//! by names it can only learn from `/etc/hosts` or from DNS, as a pod's runtime provides them.

use crate::common;

use common::kube::{KubeNode, NODE, POD_CIDR};
use common::{require_root, unique, Netns, Node, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether the ELF file asks for a program interpreter (the dynamic loader).
fn has_interpreter(path: &Path) -> bool {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let o = phoff + i * size;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The image's contents, built once for all the tests here (scripts/build-image.sh, a debug
/// build linked as the image's is, or the tests' own binaries when they are), the tag of the image when buildah made one, and what
/// the script printed.
fn built() -> &'static (PathBuf, String, String) {
    static BUILT: OnceLock<(PathBuf, String, String)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tag = format!("localhost/flannel-rs:{}", unique("t"));
        let mut build = Command::new(repo().join("scripts/build-image.sh"));
        build
            .env("FLANNEL_IMAGE_PROFILE", "dev")
            .env("FLANNEL_IMAGE_TAG", &tag);
        // The test command links everything statically (scripts/test.sh): the binaries these
        // tests run with are the image's, no second build of the whole stack.
        let bins = common::bin_dir();
        if !has_interpreter(&bins.join("flanneld")) {
            build.env("FLANNEL_IMAGE_BINS", &bins);
        }
        let (ok, out) = run(&mut build);
        assert!(ok, "build-image.sh failed:\n{out}");
        (repo().join("target/image/rootfs"), tag, out)
    })
}

/// Starts the node's flanneld from the image's root instead of the host's binary, as a
/// container runtime runs it: in a mount namespace of its own, with `/etc/hosts` and
/// `/etc/resolv.conf` given (the runtime bind-mounts both), `/proc`, `/sys`, `/dev`, a fresh `/run`,
/// and the node's test directory at its own path (subnet.env, the state socket, configs).
fn from_image_root(n: &mut Node, root: &Path, hosts: &str, resolv: &str) {
    let script = format!(
        r#"set -e; R={root}; D={dir}
mount --make-rprivate /
for d in etc tmp run; do mount -t tmpfs none "$R/$d"; done
mkdir -p "$R$D"; mount --bind "$D" "$R$D"
mount -t proc proc "$R/proc"; mount --rbind /sys "$R/sys"; mount --rbind /dev "$R/dev"
printf '%s\n' '{hosts}' >"$R/etc/hosts"; printf '%s\n' '{resolv}' >"$R/etc/resolv.conf"
exec chroot "$R" /opt/bin/flanneld "$@""#,
        root = root.display(),
        dir = n.dir.path().display()
    );
    n.launcher = ["unshare", "-m", "sh", "-c", &script]
        .map(String::from)
        .to_vec();
}

/// etcd named in `--etcd-endpoints` only by the pod's `/etc/hosts`, then only by a DNS server
/// (in the node's namespace: nothing else answers there): the image's flanneld gets its lease
/// from it both times. A static glibc program has no NSS modules to load; glibc 2.36 resolves
/// `files` and `dns` (its built-in default without /etc/nsswitch.conf) by itself.
#[test]
fn the_image_flanneld_finds_etcd_by_hosts_file_and_by_dns() {
    if common::skip_without_root() {
        return;
    }
    require_root();
    let (root, _, _) = built();
    let mut n = Node::new("imgetcd");
    n.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    let dns = common::dns::Dns::start(
        &n.ns.0,
        "127.0.0.53:53",
        &[("etcd-by-dns.example", "127.0.0.1".parse().unwrap())],
    );
    for (hosts, name) in [
        (
            "127.0.0.1 localhost\n127.0.0.1 etcd-by-hosts.example",
            "etcd-by-hosts.example",
        ),
        ("127.0.0.1 localhost", "etcd-by-dns.example"),
    ] {
        from_image_root(&mut n, root, hosts, "nameserver 127.0.0.53");
        n.start(&[&format!("--etcd-endpoints=http://{name}:2379")]);
        n.wait_ready();
        assert!(n.stop().success(), "{}", n.log());
        let env = std::fs::read_to_string(n.subnet_env()).unwrap();
        assert!(env.contains("FLANNEL_SUBNET=10.244."), "{name}: {env}");
    }
    assert!(
        dns.asked
            .lock()
            .unwrap()
            .iter()
            .any(|q| q == "etcd-by-dns.example"),
        "the DNS server was never asked"
    );
    let log = n.log();
    assert!(!log.contains("failed to lookup"), "{log}");
}

/// The API server named only by `/etc/hosts` (the kubeconfig's server) and only by DNS
/// (`--kube-api-url`): the image's flanneld publishes its annotations both times. And a
/// kubeconfig without a CA (`insecure-skip-tls-verify`) works in the image, which has no
/// system CA bundle for kube-rs to load first.
#[test]
fn the_image_flanneld_finds_the_api_server_by_hosts_file_and_by_dns() {
    if common::skip_without_root() {
        return;
    }
    require_root();
    let (root, _, _) = built();
    let mut k = KubeNode::with_names(
        "imgkube",
        &[POD_CIDR],
        &["api-by-hosts.example", "api-by-dns.example"],
    );
    let dir = k.node.dir.path().to_path_buf();
    std::fs::copy(k.api.ca(), dir.join("ca.crt")).unwrap();
    let kubeconfig = |server: &str, ca: bool| {
        let mut kc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(k.api.kubeconfig()).unwrap()).unwrap();
        let cluster = &mut kc["clusters"][0]["cluster"];
        cluster["server"] = server.into();
        if ca {
            cluster["certificate-authority"] = dir.join("ca.crt").display().to_string().into();
        } else {
            cluster
                .as_object_mut()
                .unwrap()
                .remove("certificate-authority");
            cluster["insecure-skip-tls-verify"] = true.into();
        }
        let path = dir.join(format!("kubeconfig-{}", unique("k")));
        std::fs::write(&path, kc.to_string()).unwrap();
        format!("--kubeconfig-file={}", path.display())
    };
    let dns = common::dns::Dns::start(
        &k.node.ns.0,
        "127.0.0.53:53",
        &[("api-by-dns.example", "127.0.0.1".parse().unwrap())],
    );
    let nc = format!("--net-config-path={}", k.net_conf().display());
    let hosts = "127.0.0.1 localhost\n127.0.0.1 api-by-hosts.example";
    for args in [
        vec![kubeconfig("https://api-by-hosts.example:6443", true)],
        vec![
            kubeconfig("https://api-by-hosts.example:6443", true),
            "--kube-api-url=https://api-by-dns.example:6443".to_string(),
        ],
        vec![kubeconfig("https://api-by-dns.example:6443", false)],
    ] {
        k.api
            .patch(
                flannel_kube_fake::Kind::Node,
                "",
                NODE,
                flannel_kube_fake::PatchType::Merge,
                &serde_json::json!({"metadata": {"annotations": null}}),
                false,
            )
            .unwrap();
        from_image_root(&mut k.node, root, hosts, "nameserver 127.0.0.53");
        let mut all: Vec<&str> = vec!["--kube-subnet-mgr", &nc, "--iface=eth0"];
        all.extend(args.iter().map(String::as_str));
        k.node.start_env(&all, &[("NODE_NAME", NODE)]);
        k.node.wait_ready();
        assert_eq!(
            k.annotation("public-ip").as_deref(),
            Some("10.0.0.50"),
            "{args:?}: {}",
            k.node.log()
        );
        assert!(k.node.stop().success(), "{}", k.node.log());
    }
    assert!(
        dns.asked
            .lock()
            .unwrap()
            .iter()
            .any(|q| q == "api-by-dns.example"),
        "the DNS server was never asked"
    );
}

/// Removes the test's image (and any container of it) when the test ends, pass or fail.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}

#[test]
fn the_image_holds_static_binaries_and_working_firewall_tools() {
    if common::skip_without_root() {
        return;
    }
    require_root();
    let (root, tag, out) = built();
    let image = Image(tag.clone());
    let tag = image.0.clone();

    // Each of our binaries alone in an empty root still runs.
    for (bin, arg, want) in [
        ("opt/bin/flanneld", "--version", "v0."),
        ("flannel", "", "CNI Plugin flannel version"),
        ("opt/bin/flannelctl", "--help", "usage: flannelctl"),
    ] {
        let p = root.join(bin);
        assert!(!has_interpreter(&p), "{bin} is dynamically linked");
        let empty = TempDir::new("img");
        common::copy_executable(&p, &empty.path().join("prog"));
        let mut c = Command::new("/usr/sbin/chroot");
        c.arg(empty.path()).arg("/prog").env_clear();
        if !arg.is_empty() {
            c.arg(arg);
        }
        let (ok, out) = run(&mut c);
        assert!(ok && out.contains(want), "{bin} in an empty root: {out}");
    }

    // The firewall tools flanneld calls work from the image's root, in our own namespace.
    let ns = Netns::new("img");
    for args in [
        &["iptables", "-t", "nat", "-S"][..],
        &["iptables-restore", "--version"][..],
        &["ip6tables", "-t", "filter", "-S"][..],
        &["nft", "list", "ruleset"][..],
    ] {
        let (ok, out) = run(Command::new("/usr/bin/ip")
            .args(["netns", "exec", &ns.0, "/usr/sbin/chroot"])
            .arg(root)
            .arg(format!("/usr/sbin/{}", args[0]))
            .args(&args[1..])
            .env_clear());
        assert!(ok, "{args:?} in the image's root: {out}");
    }

    // The image itself, when buildah is there: it runs flanneld and the plugin.
    if Command::new("buildah").arg("--version").output().is_ok() {
        let (ok, ctr) = run(Command::new("buildah").args(["from", &tag]));
        assert!(ok, "buildah from {tag}: {ctr}");
        let ctr = ctr.trim().to_string();
        let (ok, out) = run(Command::new("buildah").args([
            "run",
            "--isolation",
            "chroot",
            &ctr,
            "/opt/bin/flanneld",
            "--version",
        ]));
        let _ = Command::new("buildah").args(["rm", &ctr]).output();
        assert!(ok && out.contains("v0."), "flanneld in the image: {out}");
    } else {
        assert!(out.contains("buildah not installed"), "{out}");
    }
}
