//! The `vmk-snap` binary: parse, run, exit status (all in vmk_common::cli and the library).

fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_snap::Args>(vmk_snap::run)
}
