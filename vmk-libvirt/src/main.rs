//! The `vmk-libvirt` binary: parse, run, exit status (all in vmk_common::cli and the library).

fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_libvirt::Args>(vmk_libvirt::run)
}
