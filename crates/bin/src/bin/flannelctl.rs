//! flannelctl: see `flannel_ctl`.

fn main() -> std::process::ExitCode {
    flannel_ctl::main()
}
