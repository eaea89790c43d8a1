//! `cachelayer`: the command line (`serve`, `proxy`). Parses flags (with environment
//! fallbacks), refuses invalid settings with a message naming them (exit status 2), and runs
//! the subcommand. It must never start serving with a setting it could not check.

use std::process::ExitCode;

use cachelayer_server::config::LogFormat;
use cachelayer_server::{Cli, Command, Error, ErrorKind, init_logging, proxy_main, serve};
use clap::Parser;

/// mimalloc instead of the system allocator: glibc's malloc and free were about 9% of the
/// server's time per cached request in the profile (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match args.into_config() {
            Ok(config) => run(
                config.workers,
                config.log_format,
                &config.log.clone(),
                serve(config),
            ),
            Err(err) => refuse(&err),
        },
        Command::Proxy(args) => match args.into_config() {
            Ok(config) => run(
                config.workers,
                config.log_format,
                &config.log.clone(),
                proxy_main(config),
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
fn run(
    workers: usize,
    format: LogFormat,
    filter: &str,
    main: impl Future<Output = Result<(), Error>>,
) -> ExitCode {
    if let Err(err) = init_logging(format, filter) {
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
        Err(err) => {
            tracing::error!(error = %err, "cachelayer failed");
            eprintln!("cachelayer: {err}");
            match err.kind() {
                ErrorKind::Config => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
