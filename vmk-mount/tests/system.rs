fn main() -> std::process::ExitCode {
    vmk_testkit::run_system_tests(vec![])
}
