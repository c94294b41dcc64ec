fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_mount::Args>(vmk_mount::run)
}
