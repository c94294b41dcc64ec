fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_clone::Args>(vmk_clone::run)
}
