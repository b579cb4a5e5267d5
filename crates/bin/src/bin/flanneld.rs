//! flanneld: the flannel-rs node daemon.
fn main() -> std::process::ExitCode {
    flanneld::main()
}
