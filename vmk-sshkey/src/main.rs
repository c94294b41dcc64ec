//! The `vmk-sshkey` binary: parse, run, exit status (all in vmk_common::cli and the library).

fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_sshkey::Args>(vmk_sshkey::run)
}
