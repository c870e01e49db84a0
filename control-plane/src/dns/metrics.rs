//! [`DnsMetrics`]: queries answered, by question type and response code, counted without
//! allocating or contending on the hot path.
//!
//! The DNS server answers 100k+ queries a second on a few threads; an OpenTelemetry counter
//! per query (attribute hashing, a map lookup under a lock) would cost more than the rest of
//! a cached answer. Instead every [`Responder`](super::respond::Responder) owns a [`Shard`]:
//! a fixed table of atomics indexed by (type, rcode), written only by its owner (one
//! uncontended relaxed increment per query, on a cache line no other thread writes). A scrape
//! sums the shards ([`DnsMetrics::for_each`]); a shard whose responder is dropped (a TCP
//! connection closing) is folded into `retired` first, so counts never go down.
//!
//! Queries refused because of their source (`--dns-allow`) are counted twice: as REFUSED
//! replies by type like any other, and in one more cell of the same table,
//! [`DnsMetrics::refused_by_acl`], which tells them apart from names outside every namespace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The question types counted by name; every other type counts as `OTHER`.
pub const QTYPES: [(u16, &str); 10] = [
    (1, "A"),
    (28, "AAAA"),
    (33, "SRV"),
    (5, "CNAME"),
    (2, "NS"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (255, "ANY"),
];
/// Response codes 0–5 by name (RFC 1035); every other code counts as `OTHER`.
pub const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];
/// The label of types and codes not named above.
pub const OTHER: &str = "OTHER";

const TYPES: usize = QTYPES.len() + 1;
const CODES: usize = RCODES.len() + 1;
const CELLS: usize = TYPES * CODES;
/// The cell after the (type, code) table: queries refused by `--dns-allow`.
const ACL: usize = CELLS;
/// Every cell of a table.
const ALL: usize = CELLS + 1;

/// The DNS server's counters, shared by its transports and read by the metrics. Cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub struct DnsMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Live shards and what dropped ones counted; one lock, taken when a responder starts or
    /// ends and when metrics are collected, never per query.
    shards: Mutex<Shards>,
}

#[derive(Debug)]
struct Shards {
    live: Vec<Arc<Table>>,
    retired: [u64; ALL],
}

#[derive(Debug)]
struct Table([AtomicU64; ALL]);

/// One responder's counters; folded into the totals when dropped.
#[derive(Debug)]
pub struct Shard {
    table: Arc<Table>,
    metrics: DnsMetrics,
}

// === impl Shards ===

impl Default for Shards {
    fn default() -> Self {
        Self {
            live: Vec::new(),
            retired: [0; ALL],
        }
    }
}

// === impl DnsMetrics ===

impl DnsMetrics {
    /// A new shard for one responder.
    pub fn shard(&self) -> Shard {
        let table = Arc::new(Table(std::array::from_fn(|_| AtomicU64::new(0))));
        self.lock().live.push(Arc::clone(&table));
        Shard {
            table,
            metrics: self.clone(),
        }
    }

    /// Calls `f(qtype, rcode, count)` for every non-zero count, totals over every shard.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, &'static str, u64)) {
        let totals = self.totals();
        for (i, count) in totals.into_iter().take(CELLS).enumerate() {
            if count > 0 {
                let (t, c) = (i / CODES, i % CODES);
                let qtype = QTYPES.get(t).map_or(OTHER, |(_, name)| name);
                let rcode = RCODES.get(c).copied().unwrap_or(OTHER);
                f(qtype, rcode, count);
            }
        }
    }

    /// Queries answered REFUSED because their source is outside `--dns-allow` (also counted
    /// by [`DnsMetrics::for_each`] under their type and REFUSED).
    pub fn refused_by_acl(&self) -> u64 {
        self.totals()[ACL]
    }

    fn totals(&self) -> [u64; ALL] {
        let shards = self.lock();
        let mut totals = shards.retired;
        for table in &shards.live {
            for (total, cell) in totals.iter_mut().zip(&table.0) {
                *total += cell.load(Ordering::Relaxed);
            }
        }
        totals
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shards> {
        self.inner
            .shards
            .lock()
            .expect("invariant: the DNS metrics lock is never held across a panic")
    }
}

// === impl Shard ===

impl Shard {
    /// Counts one answered query of type `qtype` (0 when it could not be parsed) with
    /// response code `rcode` (the header's 4 bits).
    #[inline]
    pub fn record(&self, qtype: u16, rcode: u8) {
        let t = match qtype {
            1 => 0,
            28 => 1,
            33 => 2,
            5 => 3,
            2 => 4,
            6 => 5,
            12 => 6,
            15 => 7,
            16 => 8,
            255 => 9,
            _ => TYPES - 1,
        };
        let c = usize::from(rcode).min(CODES - 1);
        self.table.0[t * CODES + c].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one query refused because of its source (`--dns-allow`); its reply is counted
    /// by [`Shard::record`] as well.
    #[inline]
    pub fn record_refused_by_acl(&self) {
        self.table.0[ACL].fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        let mut shards = self.metrics.lock();
        for (retired, cell) in shards.retired.iter_mut().zip(&self.table.0) {
            *retired += cell.load(Ordering::Relaxed);
        }
        shards.live.retain(|t| !Arc::ptr_eq(t, &self.table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(metrics: &DnsMetrics) -> Vec<(&'static str, &'static str, u64)> {
        let mut all = Vec::new();
        metrics.for_each(|t, c, n| all.push((t, c, n)));
        all
    }

    #[test]
    fn shards_add_up_and_survive_their_responders() {
        let metrics = DnsMetrics::default();
        let a = metrics.shard();
        let b = metrics.shard();
        a.record(1, 0);
        b.record(1, 0);
        b.record(28, 3);
        a.record(99, 9);
        drop(b);
        a.record(33, 5);
        a.record_refused_by_acl();
        assert_eq!(
            totals(&metrics),
            vec![
                ("A", "NOERROR", 2),
                ("AAAA", "NXDOMAIN", 1),
                ("SRV", "REFUSED", 1),
                ("OTHER", "OTHER", 1)
            ]
        );
        assert_eq!(metrics.refused_by_acl(), 1);
        drop(a);
        assert_eq!(totals(&metrics).len(), 4);
        assert_eq!(
            metrics.refused_by_acl(),
            1,
            "kept when its shard is dropped"
        );
        assert!(metrics.lock().live.is_empty());
    }
}
