//! flannel-lab: a flannel cluster in network namespaces on one machine.
fn main() -> std::process::ExitCode {
    flannel_lab::main()
}
