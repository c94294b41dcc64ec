//! The `vmk-ayinstall` binary: parse, run, exit status (all in vmk_common::cli and the library).

fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_ayinstall::Args>(vmk_ayinstall::run)
}
