//! What the driver owes its callers: proposals waiting to be applied and reads waiting for a
//! confirmed index, plus the envelope that lets an applied entry find its proposer.
//!
//! Matching is by request id, never by position: entries from other leaders, no-ops and
//! re-delivered entries interleave freely with ours.

use std::collections::HashMap;

use super::{ProposeError, Reply};

/// Bytes in front of every command: origin node id (u64 BE) + request id (u64 BE).
const ENVELOPE_HEADER: usize = 16;

/// A decoded entry payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    /// The node whose driver proposed the entry.
    pub(crate) origin: u64,
    /// Unique among that node's proposals in one term.
    pub(crate) request_id: u64,
    /// The state machine's command.
    pub(crate) command: &'a [u8],
}

/// Proposals appended to the log by this node and not yet applied.
pub(crate) struct Proposals<O> {
    next_id: u64,
    pending: HashMap<u64, Pending<O>>,
}

struct Pending<O> {
    /// The term in which this node proposed it (and so the term of its entry).
    term: u64,
    reply: Reply<(u64, O)>,
}

/// ReadIndex requests, from arrival to answer.
#[derive(Default)]
pub(crate) struct Reads {
    next_ctx: u64,
    /// Arrived while this leader had not yet committed an entry of its term (raft-rs silently
    /// ignores ReadIndex then); issued as soon as it has.
    deferred: Vec<Reply<u64>>,
    /// Handed to raft, keyed by request context, awaiting a `ReadState`.
    issued: HashMap<u64, Issued>,
    /// Ticks counted so far (the driver's clock, in raft ticks).
    ticks: u64,
    /// Confirmed by a quorum at this index; answered once it is applied locally.
    confirmed: Vec<(u64, Reply<u64>)>,
}

/// Wraps a command for the log.
pub(crate) fn encode(origin: u64, request_id: u64, command: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(ENVELOPE_HEADER + command.len());
    data.extend_from_slice(&origin.to_be_bytes());
    data.extend_from_slice(&request_id.to_be_bytes());
    data.extend_from_slice(command);
    data
}

/// Unwraps an entry's payload; `None` if it is too short to be one of ours.
pub(crate) fn decode(data: &[u8]) -> Option<Envelope<'_>> {
    let (origin, rest) = data.split_first_chunk::<8>()?;
    let (request_id, command) = rest.split_first_chunk::<8>()?;
    Some(Envelope {
        origin: u64::from_be_bytes(*origin),
        request_id: u64::from_be_bytes(*request_id),
        command,
    })
}

// === impl Proposals ===

impl<O> Proposals<O> {
    pub(crate) fn new() -> Self {
        // Start each run from the clock (nanoseconds), so a restarted follower, which may
        // propose again in the same term, never reuses a request id of its earlier run.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2));
        Self {
            next_id: start,
            pending: HashMap::new(),
        }
    }

    /// A fresh request id for the next proposal.
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Remembers a proposal raft accepted in `term`.
    pub(crate) fn insert(&mut self, request_id: u64, term: u64, reply: Reply<(u64, O)>) {
        self.pending.insert(request_id, Pending { term, reply });
    }

    /// The waiting caller of the applied entry (`request_id`, proposed in `entry_term`).
    ///
    /// Request ids start from the clock in each run, and the term must match too: an entry of
    /// an earlier run that is re-applied now never answers a proposal of this run.
    pub(crate) fn take(&mut self, request_id: u64, entry_term: u64) -> Option<Reply<(u64, O)>> {
        match self.pending.get(&request_id) {
            Some(p) if p.term == entry_term => self.pending.remove(&request_id).map(|p| p.reply),
            _ => None,
        }
    }

    /// Fails the proposals not made as leader of `leader_term` (all of them if `None`).
    pub(crate) fn fail_outside(&mut self, leader_term: Option<u64>, error: &ProposeError) {
        let failed = self.pending.extract_if(|_, p| Some(p.term) != leader_term);
        for (_, p) in failed {
            let _ = p.reply.send(Err(error.clone()));
        }
    }

    /// Fails every waiting proposal.
    pub(crate) fn fail_all(&mut self, error: &ProposeError) {
        self.fail_outside(None, error);
    }

    /// Number of proposals waiting.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

/// A read handed to raft, not yet confirmed.
struct Issued {
    reply: Reply<u64>,
    /// Its request context, to hand to raft again.
    ctx: Vec<u8>,
    /// The tick it was last handed to raft.
    at: u64,
}

/// Ticks after which an unanswered read is handed to raft again. raft-rs drops a ReadIndex
/// silently when the leader has not yet committed an entry of its term (a follower forwarding
/// a read right after an election cannot know that), and a forwarded read can be lost with
/// its message; asking again is safe (the context is the same, a late duplicate answer finds
/// nothing to confirm). Three ticks (300 ms by default) is longer than a heartbeat round.
pub(crate) const READ_RETRY_TICKS: u64 = 3;

// === impl Reads ===

impl Reads {
    /// Holds a read until this leader has committed an entry in its term.
    pub(crate) fn defer(&mut self, reply: Reply<u64>) {
        self.deferred.push(reply);
    }

    /// The deferred reads, to issue now.
    pub(crate) fn take_deferred(&mut self) -> Vec<Reply<u64>> {
        std::mem::take(&mut self.deferred)
    }

    /// Whether any read waits for this leader's first commit.
    pub(crate) fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Registers a read handed to raft; returns its request context: this node's id and a
    /// counter, so the leader, which keys pending reads by context, never confuses reads of
    /// different nodes.
    pub(crate) fn issue(&mut self, origin: u64, reply: Reply<u64>) -> Vec<u8> {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let mut bytes = origin.to_be_bytes().to_vec();
        bytes.extend_from_slice(&ctx.to_be_bytes());
        self.issued.insert(
            ctx,
            Issued {
                reply,
                ctx: bytes.clone(),
                at: self.ticks,
            },
        );
        bytes
    }

    /// Counts a raft tick; returns the contexts of the reads unanswered for
    /// [`READ_RETRY_TICKS`], to hand to raft again.
    pub(crate) fn tick(&mut self) -> Vec<Vec<u8>> {
        self.ticks += 1;
        let now = self.ticks;
        self.issued
            .values_mut()
            .filter(|read| now - read.at >= READ_RETRY_TICKS)
            .map(|read| {
                read.at = now;
                read.ctx.clone()
            })
            .collect()
    }

    /// A quorum confirmed `index` for the read with context `ctx` (ignored unless `origin`'s).
    pub(crate) fn confirm(&mut self, origin: u64, ctx: &[u8], index: u64) {
        let Some((node, counter)) = ctx.split_first_chunk::<8>() else {
            return;
        };
        let Ok(counter) = <[u8; 8]>::try_from(counter) else {
            return;
        };
        if u64::from_be_bytes(*node) != origin {
            return;
        }
        if let Some(read) = self.issued.remove(&u64::from_be_bytes(counter)) {
            self.confirmed.push((index, read.reply));
        }
    }

    /// Answers the confirmed reads whose index is applied.
    pub(crate) fn serve(&mut self, applied: u64) {
        if self.confirmed.iter().all(|(index, _)| *index > applied) {
            return;
        }
        for (index, reply) in std::mem::take(&mut self.confirmed) {
            if index <= applied {
                let _ = reply.send(Ok(index));
            } else {
                self.confirmed.push((index, reply));
            }
        }
    }

    /// Fails the reads no quorum confirmed yet (leadership changed: raft will not answer them).
    /// Confirmed reads stay: their index is safe and local apply will reach it.
    pub(crate) fn fail_unconfirmed(&mut self, error: &ProposeError) {
        for reply in self
            .deferred
            .drain(..)
            .chain(self.issued.drain().map(|(_, read)| read.reply))
        {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// Fails every read.
    pub(crate) fn fail_all(&mut self, error: &ProposeError) {
        self.fail_unconfirmed(error);
        for (_, reply) in self.confirmed.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_reads_are_asked_again_until_confirmed() {
        let mut reads = Reads::default();
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let ctx = reads.issue(7, reply);
        for _ in 1..READ_RETRY_TICKS {
            assert!(reads.tick().is_empty(), "too early to ask again");
        }
        assert_eq!(
            reads.tick(),
            vec![ctx.clone()],
            "asked again with the same context"
        );
        for _ in 1..READ_RETRY_TICKS {
            assert!(reads.tick().is_empty(), "the retry restarted the count");
        }
        assert_eq!(reads.tick(), vec![ctx.clone()]);

        reads.confirm(7, &ctx, 42);
        assert!(
            reads.tick().is_empty(),
            "a confirmed read is not asked again"
        );
        // A duplicate answer to the retried request finds nothing to confirm.
        reads.confirm(7, &ctx, 43);
        reads.serve(42);
        assert_eq!(answer.try_recv().unwrap().unwrap(), 42);
    }
}
