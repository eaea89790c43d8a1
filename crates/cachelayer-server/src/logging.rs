//! Logging: the `tracing` subscriber both commands install before anything else, writing to
//! stdout as text or as one JSON object per line (`--log-format`), filtered by `--log`.
//!
//! This module must never decide what is logged, only how and where; and never replace a
//! subscriber a program embedding the server installed first.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

use crate::error::Error;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the log subscriber (stdout; text or one JSON object per line).
pub fn init(format: LogFormat, filter: &str) -> Result<(), Error> {
    let filter = EnvFilter::try_new(filter).map_err(|err| {
        Error::config(
            "--log (CACHELAYER_LOG)",
            format!("{err}; write e.g. info or cachelayer=debug"),
        )
    })?;
    // Colours only for a terminal: escape codes in a log file or collector are noise.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already installed (an embedding program's subscriber): keep it.
    drop(installed);
    Ok(())
}
