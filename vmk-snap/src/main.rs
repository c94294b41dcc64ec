fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_snap::Args>(vmk_snap::run)
}
