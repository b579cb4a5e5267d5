//! The container image: `scripts/build-image.sh` links our binaries statically (the image is
//! `FROM scratch`: no libc to load them with) and puts beside them the firewall tools flanneld
//! runs, with every library they load. Checked here by running them with nothing else around:
//! the binaries alone in an empty root, iptables and nft from the image's root in a namespace
//! of the test's own, and the built image with buildah (installed by scripts/install-deps.sh).

mod common;

use common::{require_root, unique, Netns, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let image = Image(format!("localhost/flannel-rs:{}", unique("t")));
    let tag = image.0.clone();
    let (ok, out) = run(Command::new(repo().join("scripts/build-image.sh"))
        .env("FLANNEL_IMAGE_PROFILE", "dev")
        .env("FLANNEL_IMAGE_TAG", &tag));
    assert!(ok, "build-image.sh failed:\n{out}");
    let root = repo().join("target/image/rootfs");

    // Each of our binaries alone in an empty root still runs.
    for (bin, arg, want) in [
        ("opt/bin/flanneld", "--version", "v0."),
        ("flannel", "", "CNI Plugin flannel version"),
        ("opt/bin/flannelctl", "--help", "usage: flannelctl"),
    ] {
        let p = root.join(bin);
        assert!(!has_interpreter(&p), "{bin} is dynamically linked");
        let empty = TempDir::new("img");
        std::fs::copy(&p, empty.path().join("prog")).unwrap();
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
            .arg(&root)
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
