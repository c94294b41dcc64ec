fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_run::Args>(vmk_run::run)
}
