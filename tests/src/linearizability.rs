//! A Wing–Gong linearizability checker (with Lowe's memoization, as in Knossos/Porcupine) for
//! the registry's instance set, and the history it checks.
//!
//! The model is the set of instance ids of one service, drawn from a small pool (at most 8
//! ids, so a state is one byte). Operations: `Register(k)` (upsert, always succeeds),
//! `Deregister(k)` (succeeds if present, else NOT_FOUND — a definite, observable outcome), and
//! a linearizable `Read` returning the whole set.
//!
//! An operation whose outcome is unknown (timeout, UNAVAILABLE: it may or may not have taken
//! effect) is kept with no return time: it may be linearized anywhere after its call, or not at
//! all. Unknown reads constrain nothing and are dropped.

use std::collections::HashSet;
use std::time::Instant;

/// What a client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Register id `k` of the pool.
    Register(u8),
    /// Deregister id `k` of the pool.
    Deregister(u8),
    /// Read the set.
    Read,
}

/// What the client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The write was acknowledged.
    Ok,
    /// The deregistration answered NOT_FOUND.
    NotFound,
    /// The read returned this set (bit `k` = id `k` present).
    Read(u8),
    /// No definite answer.
    Unknown,
}

/// One completed (or abandoned) operation.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// The operation.
    pub op: Op,
    /// When the request was sent.
    pub call: Instant,
    /// When the answer arrived (ignored for `Unknown`).
    pub ret: Instant,
    /// What came back.
    pub outcome: Outcome,
}

struct Entry {
    op: Op,
    call: Instant,
    /// `None`: outcome unknown, never forces an order.
    ret: Option<Instant>,
    outcome: Outcome,
}

/// Whether some order of the events, consistent with real time, explains every outcome.
/// `Err` carries a short reason. At most 127 events per history.
pub fn check(events: &[Event]) -> Result<(), String> {
    let entries: Vec<Entry> = events
        .iter()
        .filter(|e| !(e.op == Op::Read && e.outcome == Outcome::Unknown))
        .map(|e| Entry {
            op: e.op,
            call: e.call,
            ret: (e.outcome != Outcome::Unknown).then_some(e.ret),
            outcome: e.outcome,
        })
        .collect();
    if entries.len() > 127 {
        return Err(format!("{} events: at most 127 per history", entries.len()));
    }
    let required: u128 = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.ret.is_some())
        .fold(0, |acc, (i, _)| acc | (1 << i));
    let mut seen = HashSet::new();
    if search(&entries, 0, 0, required, &mut seen) {
        Ok(())
    } else {
        Err(format!(
            "no linearization of {} operations explains the outcomes",
            entries.len()
        ))
    }
}

/// Depth-first: extend the linearized prefix `done` (in state `state`) by any op that may go
/// next. `seen` memoizes (prefix, state) pairs already known to be dead ends.
fn search(
    entries: &[Entry],
    done: u128,
    state: u8,
    required: u128,
    seen: &mut HashSet<(u128, u8)>,
) -> bool {
    if done & required == required {
        return true;
    }
    if !seen.insert((done, state)) {
        return false;
    }
    // An op may go next only if no pending op returned before it was called.
    let earliest_return = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| done & (1 << i) == 0)
        .filter_map(|(_, e)| e.ret)
        .min();
    for (i, entry) in entries.iter().enumerate() {
        if done & (1 << i) != 0 || earliest_return.is_some_and(|r| r < entry.call) {
            continue;
        }
        if let Some(next) = step(state, entry)
            && search(entries, done | (1 << i), next, required, seen)
        {
            return true;
        }
    }
    false
}

/// The model: the state after `entry`, if its outcome is possible in `state`.
fn step(state: u8, entry: &Entry) -> Option<u8> {
    match (entry.op, entry.outcome) {
        (Op::Register(k), Outcome::Ok | Outcome::Unknown) => Some(state | 1 << k),
        (Op::Deregister(k), Outcome::Ok) => (state & 1 << k != 0).then_some(state & !(1 << k)),
        (Op::Deregister(k), Outcome::NotFound) => (state & 1 << k == 0).then_some(state),
        (Op::Deregister(k), Outcome::Unknown) => Some(state & !(1 << k)),
        (Op::Read, Outcome::Read(seen)) => (seen == state).then_some(state),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(t0: Instant, call: u64, ret: u64, op: Op, outcome: Outcome) -> Event {
        Event {
            op,
            call: t0 + Duration::from_millis(call),
            ret: t0 + Duration::from_millis(ret),
            outcome,
        }
    }

    #[test]
    fn sequential_histories() {
        let t = Instant::now();
        let ok = [
            at(t, 0, 1, Op::Register(0), Outcome::Ok),
            at(t, 2, 3, Op::Read, Outcome::Read(0b1)),
            at(t, 4, 5, Op::Deregister(0), Outcome::Ok),
            at(t, 6, 7, Op::Deregister(0), Outcome::NotFound),
            at(t, 8, 9, Op::Read, Outcome::Read(0)),
        ];
        assert!(check(&ok).is_ok());
        // A read that misses a registration acknowledged before it began: stale.
        let stale = [
            at(t, 0, 1, Op::Register(0), Outcome::Ok),
            at(t, 2, 3, Op::Read, Outcome::Read(0)),
        ];
        assert!(check(&stale).is_err());
        // A value nobody wrote.
        let phantom = [at(t, 0, 1, Op::Read, Outcome::Read(0b10))];
        assert!(check(&phantom).is_err());
    }

    #[test]
    fn concurrency_allows_either_order() {
        let t = Instant::now();
        // The read overlaps the register: both answers are fine.
        for seen in [0, 0b1] {
            let h = [
                at(t, 0, 10, Op::Register(0), Outcome::Ok),
                at(t, 5, 6, Op::Read, Outcome::Read(seen)),
            ];
            assert!(check(&h).is_ok(), "{seen}");
        }
        // Two reads in real-time order cannot see the register and then un-see it.
        let flicker = [
            at(t, 0, 100, Op::Register(0), Outcome::Ok),
            at(t, 10, 20, Op::Read, Outcome::Read(0b1)),
            at(t, 30, 40, Op::Read, Outcome::Read(0)),
        ];
        assert!(check(&flicker).is_err());
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_apply() {
        let t = Instant::now();
        for seen in [0, 0b1] {
            let h = [
                at(t, 0, 1, Op::Register(0), Outcome::Unknown),
                at(t, 50, 51, Op::Read, Outcome::Read(seen)),
            ];
            assert!(check(&h).is_ok());
        }
        // But it cannot apply before it was called.
        let early = [
            at(t, 0, 1, Op::Read, Outcome::Read(0b1)),
            at(t, 5, 6, Op::Register(0), Outcome::Unknown),
        ];
        assert!(check(&early).is_err());
    }
}
