//! Bridges raft-rs's `slog` logging into `tracing`, so the whole crate logs through
//! one facade. raft-rs logs are emitted under the `raft` target: quiet unless a
//! subscriber enables it (for example `RUST_LOG=raft=debug`).

use std::fmt::{self, Write as _};

use slog::{Drain, Level, OwnedKVList, Record, KV};

/// A slog drain that forwards every record to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TracingDrain;

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            Level::Critical | Level::Error => tracing::Level::ERROR,
            Level::Warning => tracing::Level::WARN,
            Level::Info => tracing::Level::INFO,
            Level::Debug => tracing::Level::DEBUG,
            Level::Trace => tracing::Level::TRACE,
        };
        // Formatting costs; skip it when nobody listens at this level.
        let enabled = match level {
            tracing::Level::ERROR => tracing::enabled!(target: "raft", tracing::Level::ERROR),
            tracing::Level::WARN => tracing::enabled!(target: "raft", tracing::Level::WARN),
            tracing::Level::INFO => tracing::enabled!(target: "raft", tracing::Level::INFO),
            tracing::Level::DEBUG => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            tracing::Level::TRACE => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match level {
            tracing::Level::ERROR => tracing::error!(target: "raft", "{msg}{}", kv.0),
            tracing::Level::WARN => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            tracing::Level::INFO => tracing::info!(target: "raft", "{msg}{}", kv.0),
            tracing::Level::DEBUG => tracing::debug!(target: "raft", "{msg}{}", kv.0),
            tracing::Level::TRACE => tracing::trace!(target: "raft", "{msg}{}", kv.0),
        }
        Ok(())
    }
}

/// A raft-rs logger for replica `id` that writes through `tracing`.
pub(crate) fn raft_logger(id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("replica" => id))
}
