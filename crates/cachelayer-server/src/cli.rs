//! The command line: [`Cli`] and its subcommands, and [`run`], which checks the chosen
//! command's settings, installs logging, starts the runtime and maps the outcome to an exit
//! status (2 for a setting it refused).
//!
//! This is the only module that knows both commands; they never know each other. It must
//! never start serving with a setting it could not check.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{Error, ErrorKind};
use crate::logging::{self, LogFormat};
use crate::proxy::{self, ProxyArgs};
use crate::serve::{self, ServeArgs};

/// `cachelayer`: a shared cache for web APIs.
#[derive(Debug, Parser)]
#[command(name = "cachelayer", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the product catalogue API, cached end to end.
    Serve(Box<ServeArgs>),
    /// Put the HTTP cache in front of an existing API (a shared caching reverse proxy).
    Proxy(Box<ProxyArgs>),
}

/// Run the command `cli` names, to its end; its exit status.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => match args.into_config() {
            Ok(config) => run_on_runtime(
                config.workers,
                config.log_format,
                &config.log.clone(),
                serve::run(config),
            ),
            Err(err) => refuse(&err),
        },
        Command::Proxy(args) => match args.into_config() {
            Ok(config) => run_on_runtime(
                config.workers,
                config.log_format,
                &config.log.clone(),
                proxy::run(config),
            ),
            Err(err) => refuse(&err),
        },
    }
}

fn refuse(err: &Error) -> ExitCode {
    eprintln!("cachelayer: {err}");
    ExitCode::from(2)
}

/// Install logging, start the runtime with `workers` threads, and run `main` on it.
fn run_on_runtime(
    workers: usize,
    format: LogFormat,
    filter: &str,
    main: impl Future<Output = Result<(), Error>>,
) -> ExitCode {
    if let Err(err) = logging::init(format, filter) {
        return refuse(&err);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cachelayer: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(main);
    // Connections still open past the drain deadline are dropped here, not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // Said once: a refused setting on stderr, as before logging started; anything else
        // in the log, where the rest of the run's story is.
        Err(err) if err.kind() == ErrorKind::Config => refuse(&err),
        Err(err) => {
            tracing::error!(error = %err, "cachelayer failed");
            ExitCode::FAILURE
        }
    }
}
