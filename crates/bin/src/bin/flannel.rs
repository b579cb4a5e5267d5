//! flannel: the CNI plugin.
fn main() -> std::process::ExitCode {
    flannel_cni::main()
}
