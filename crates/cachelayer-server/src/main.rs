//! `cachelayer`: the command line. Parses flags (with environment fallbacks), refuses
//! invalid settings with a message naming them (exit status 2), and runs the subcommand.
//! It must never start serving with a setting it could not check.

use std::process::ExitCode;

use cachelayer_server::{Cli, Command, ErrorKind, init_logging, serve};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("cachelayer: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = init_logging(config.log_format, &config.log) {
        eprintln!("cachelayer: {err}");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cachelayer: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(serve(config));
    // Connections still open past the drain deadline are dropped here, not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "cachelayer serve failed");
            eprintln!("cachelayer: {err}");
            match err.kind() {
                ErrorKind::Config => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
