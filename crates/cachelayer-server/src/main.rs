//! `cachelayer`: the command line (`serve`, `proxy`). Parses flags (with environment
//! fallbacks) and hands them to [`cachelayer_server::cli::run`], which refuses invalid
//! settings with a message naming them (exit status 2) and runs the subcommand. It must
//! never hold more than that and the allocator: everything else is in the library.

use std::process::ExitCode;

use cachelayer_server::cli::{self, Cli};
use clap::Parser;

/// mimalloc instead of the system allocator: glibc's malloc and free were about 9% of the
/// server's time per cached request in the profile (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cli::run(Cli::parse())
}
