//! flannel-kube-fake: the Kubernetes API fake as a process (for the lab).
fn main() -> std::process::ExitCode {
    flannel_kube_fake::cli::main()
}
