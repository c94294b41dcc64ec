fn main() -> std::process::ExitCode {
    vmk_common::cli::main::<vmk_sshkey::Args>(vmk_sshkey::run)
}
