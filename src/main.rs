//! The `facestudio` command line; everything it does lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    facestudio::device::tune_cpu_threads();
    facestudio::device::keep_freed_memory();
    let cli = facestudio::cli::Cli::parse();
    match facestudio::cli::main_with(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
