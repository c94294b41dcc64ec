//! `vmk completions <shell>`: completions for the whole `vmk` command tree.

use std::process::ExitCode;

fn main() -> ExitCode {
    let matches = vmk_docgen::completions_command().get_matches();
    let shell = *matches
        .get_one::<clap_complete::Shell>("shell")
        .expect("required by clap");
    vmk_docgen::write_completions(shell, &mut std::io::stdout());
    ExitCode::SUCCESS
}
