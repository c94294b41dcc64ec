fn main() -> std::process::ExitCode {
    eprintln!("vmk: not implemented yet");
    std::process::ExitCode::from(1)
}
