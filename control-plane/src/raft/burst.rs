//! Whether writes reach the Raft driver in bursts: the signal for its yield (see `driver.rs`).
//!
//! Woken for a single message, the driver may yield its core once so that the runtime worker
//! it preempted can queue the rest of a burst, turning many proposals (on the leader) or
//! appends (on a follower) into one batch and one fsync. That only pays when there is a burst
//! to wait for. A lone writer has none, and behind a yield on a busy core each of its steps
//! waits for every other runnable thread: traced at one client, the leader's proposal lost
//! 0.1-0.17 ms of a ~0.95 ms write there, and each follower yielded on its append too.
//!
//! The signal is the moving average of new log entries per loop turn, over the turns that
//! bring any: proposals on the leader, entries carried by appends on a follower. With one
//! writer every such turn brings one entry and the average sits at 1, on every node. Under
//! concurrent writers the leader's batches (and so the followers' appends) carry several, and
//! they keep doing so even when a yield was skipped (proposals pile up during every fsync), so
//! the driver cannot talk itself out of batching. Message counts are no signal: a leader's two
//! acknowledgements of one write, or a follower's commit and next append, often arrive
//! together.

/// The average is kept in sixteenths of an entry.
const SCALE: u32 = 16;

/// Weight of the newest turn: 1/8 (the average follows a change within ~20 turns).
const SHIFT: u32 = 3;

/// Yield while more than this many entries per turn arrive on average (in sixteenths: 1.5).
const BURSTY_ABOVE: u32 = 3 * SCALE / 2;

/// Turns with more entries than this count as this (one huge batch must not hold the average up for long).
const CAP: u32 = 16;

/// Moving average of new log entries per driver loop turn (turns with at least one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bursts {
    /// In sixteenths of an entry.
    average: u32,
}

// === impl Bursts ===

impl Default for Bursts {
    /// Starts at one entry per turn: no yield until bursts are seen.
    fn default() -> Self {
        Self { average: SCALE }
    }
}

impl Bursts {
    /// Records a turn that brought `entries` new log entries.
    pub(crate) fn record(&mut self, entries: usize) {
        let sample = u32::try_from(entries).unwrap_or(CAP).min(CAP) * SCALE;
        // average += (sample - average) / 8, in unsigned arithmetic.
        self.average = self.average - (self.average >> SHIFT) + (sample >> SHIFT);
    }

    /// Whether entries have lately come in bursts (worth a yield to collect the rest).
    pub(crate) fn bursty(&self) -> bool {
        self.average > BURSTY_ABOVE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_writer_never_looks_bursty() {
        let mut bursts = Bursts::default();
        assert!(!bursts.bursty());
        for _ in 0..1_000 {
            bursts.record(1);
            assert!(!bursts.bursty());
        }
    }

    #[test]
    fn batches_make_it_bursty_and_single_entries_calm_it_down() {
        let mut bursts = Bursts::default();
        // Concurrent writers: a batch after each fsync, then stragglers one at a time.
        for _ in 0..50 {
            for size in [8, 1, 1, 1] {
                bursts.record(size);
            }
        }
        assert!(bursts.bursty());
        // The writers stop; one remains.
        let mut turns = 0;
        while bursts.bursty() {
            bursts.record(1);
            turns += 1;
        }
        assert!(turns < 30, "took {turns} turns to calm down");
    }

    #[test]
    fn one_huge_batch_counts_as_a_capped_one() {
        let mut bursts = Bursts::default();
        bursts.record(usize::MAX);
        assert_eq!(bursts.average, SCALE - SCALE / 8 + CAP * SCALE / 8);
        let mut turns = 0;
        while bursts.bursty() {
            bursts.record(1);
            turns += 1;
        }
        assert!(turns <= 20, "took {turns} turns to calm down");
    }
}
