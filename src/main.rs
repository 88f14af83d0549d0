//! The `seckill` command: parse, start the logs, run the command (see `seckill::cli`), and map
//! its result to an exit code. The crate's layout is in `src/lib.rs`.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use seckill::cli::{Cli, Verdict};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(cli.command.default_log_filter())),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(Verdict::Success) => ExitCode::SUCCESS,
        Ok(Verdict::Failed) => ExitCode::FAILURE,
        Err(e) => {
            // Said once, on stderr (a log line too would repeat it).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
