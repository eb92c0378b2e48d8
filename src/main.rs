//! The goose-api executable.

fn main() -> std::process::ExitCode {
    goose_api::cli::main()
}
