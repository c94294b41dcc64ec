fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_ayinstall::Args>(vmk_ayinstall::run)
}
