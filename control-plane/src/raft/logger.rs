//! A `slog` drain that forwards raft-rs' logs to `tracing`, so the process has one logging
//! system. raft-rs logs every vote and heartbeat decision at info: those become `debug` here,
//! except role changes and elections, which operators want to see at `info`.

use std::fmt;

use slog::{Drain, KV, Level, OwnedKVList, Record};

/// Forwards each slog record as a `tracing` event with the record's key-values in `kv`.
struct TracingDrain;

/// Lazily renders a record's key-values as `k=v k=v` (only if the event is enabled).
struct Kv<'a, 'b> {
    record: &'a Record<'b>,
    values: &'a OwnedKVList,
}

/// A slog serializer writing into a formatter.
struct KvWriter<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    first: bool,
}

/// The root logger handed to `RawNode::new`.
pub(crate) fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

// === impl TracingDrain ===

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let kv = Kv { record, values };
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(kv = %kv, "{msg}"),
            Level::Warning => tracing::warn!(kv = %kv, "{msg}"),
            Level::Info if is_lifecycle(msg) => tracing::info!(kv = %kv, "{msg}"),
            Level::Info => tracing::debug!(kv = %kv, "{msg}"),
            Level::Debug | Level::Trace => tracing::trace!(kv = %kv, "{msg}"),
        }
        Ok(())
    }
}

/// Role changes ("became leader at term 3") and elections ("starting a new election").
fn is_lifecycle(msg: &fmt::Arguments<'_>) -> bool {
    if !tracing::enabled!(tracing::Level::INFO) {
        return false;
    }
    let text = msg.to_string();
    text.starts_with("became ") || text.contains("election")
}

// === impl Kv ===

impl fmt::Display for Kv<'_, '_> {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut writer = KvWriter { out, first: true };
        let record = self.record;
        record
            .kv()
            .serialize(record, &mut writer)
            .and_then(|()| self.values.serialize(record, &mut writer))
            .map_err(|_| fmt::Error)
    }
}

// === impl KvWriter ===

impl slog::Serializer for KvWriter<'_, '_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let sep = if self.first { "" } else { " " };
        self.first = false;
        write!(self.out, "{sep}{key}={val}")?;
        Ok(())
    }
}
