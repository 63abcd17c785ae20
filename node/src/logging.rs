//! The daemon's logs: tracing-subscriber to stderr, as text or JSON lines,
//! filtered by `RUST_LOG` (default `info`).
//!
//! What the daemon itself logs never holds a secret: no PIN, no key bytes
//! (public keys appear as their first eight bytes, as the net crate prints
//! them), no user id and no payload. The vault layer below keeps the same rule
//! (the hardening issue's log-scan test).

use serde::Deserialize;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object a line, for a log collector.
    Json,
}

/// The filter used when `RUST_LOG` is unset or does not parse.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the process's log subscriber: stderr, `format`, the `RUST_LOG`
/// filter (default [`DEFAULT_FILTER`]). Idempotent: a second call (or one
/// after another subscriber was installed) changes nothing.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already set: keep that one.
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
