//! A follower's repeated acknowledgements, which it does not send.
//!
//! When a write commits, the leader tells its followers at once with an append that carries no
//! entries, only the new commit index (raft-rs's commit broadcast; without it a follower would
//! apply the write, and tell its watchers, DNS and proxies, only with the next write or
//! heartbeat). The follower answers that append like any other: "I have everything up to
//! index N". But it said exactly that a moment ago, when the entries arrived, and the leader
//! already counted it. A leader given the same acknowledgement again changes nothing: raft-rs
//! (`handle_append_response`) marks the follower active and returns, because its match index
//! does not move. At one writer that useless answer is 2 of the 8 peer messages a write costs
//! in a 3-node cluster; not sending it saves 2-4 % of the CPU per write (BENCHMARKS.md,
//! "Fewer peer messages per write").
//!
//! So the driver drops an acknowledgement that repeats, word for word (same leader, term and
//! index, not a rejection), one it sent within the last heartbeat interval. The leader is
//! unaffected only if it received the first one, so:
//!
//! - when the transport reports the leader unreachable (a message dropped, a stream broken,
//!   and with it whatever was in flight), what was sent to it is forgotten and the next
//!   acknowledgement goes out whatever it says;
//! - a loss the transport did not see costs at most the window: the leader, still missing
//!   the acknowledgement, asks again with each heartbeat, and after the window the answer
//!   leaves even if it repeats. That is the same bound raft itself has for a lost message.
//!
//! Everything else leaves untouched: rejections (the leader must probe), heartbeat responses
//! (they carry read-index contexts and keep the leader's quorum check alive), votes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ::raft::eraftpb::{Message, MessageType};

/// The last acknowledgement sent to each leader; see the module doc.
#[derive(Debug)]
pub(crate) struct RepeatedAcks {
    window: Duration,
    last: HashMap<u64, Ack>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    term: u64,
    index: u64,
    at: Instant,
}

// === impl RepeatedAcks ===

impl RepeatedAcks {
    /// Repeats within `window` of the first are dropped: one heartbeat interval.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            last: HashMap::new(),
        }
    }

    /// Whether `msg`, about to be sent at `now`, repeats an acknowledgement its addressee
    /// already has (and so should not be sent). Records it if it is a new one.
    pub(crate) fn is_repeat(&mut self, msg: &Message, now: Instant) -> bool {
        if msg.get_msg_type() != MessageType::MsgAppendResponse || msg.reject {
            return false;
        }
        let fresh = Ack {
            term: msg.term,
            index: msg.index,
            at: now,
        };
        match self.last.get_mut(&msg.to) {
            Some(last)
                if last.term == fresh.term
                    && last.index == fresh.index
                    && now.saturating_duration_since(last.at) < self.window =>
            {
                true
            }
            Some(last) => {
                *last = fresh;
                false
            }
            None => {
                self.last.insert(msg.to, fresh);
                false
            }
        }
    }

    /// Something sent to `peer` may have been lost: its next acknowledgement goes out.
    pub(crate) fn forget(&mut self, peer: u64) {
        self.last.remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(200);

    fn ack(to: u64, term: u64, index: u64) -> Message {
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgAppendResponse);
        msg.to = to;
        msg.term = term;
        msg.index = index;
        msg
    }

    #[test]
    fn a_repeat_within_the_window_is_dropped_and_a_new_index_is_not() {
        let mut acks = RepeatedAcks::new(WINDOW);
        let t0 = Instant::now();
        assert!(!acks.is_repeat(&ack(1, 3, 10), t0), "first acknowledgement");
        assert!(acks.is_repeat(&ack(1, 3, 10), t0), "same batch");
        assert!(
            acks.is_repeat(&ack(1, 3, 10), t0 + WINDOW / 2),
            "commit-only append"
        );
        assert!(
            !acks.is_repeat(&ack(1, 3, 11), t0 + WINDOW / 2),
            "a new entry"
        );
        assert!(acks.is_repeat(&ack(1, 3, 11), t0 + WINDOW / 2));
    }

    #[test]
    fn a_repeat_after_the_window_goes_out_and_restarts_it() {
        let mut acks = RepeatedAcks::new(WINDOW);
        let t0 = Instant::now();
        assert!(!acks.is_repeat(&ack(1, 3, 10), t0));
        assert!(
            !acks.is_repeat(&ack(1, 3, 10), t0 + WINDOW),
            "the leader may have missed it"
        );
        assert!(acks.is_repeat(&ack(1, 3, 10), t0 + WINDOW + WINDOW / 2));
    }

    #[test]
    fn a_new_term_or_leader_is_told_again() {
        let mut acks = RepeatedAcks::new(WINDOW);
        let t0 = Instant::now();
        assert!(!acks.is_repeat(&ack(1, 3, 10), t0));
        assert!(!acks.is_repeat(&ack(1, 4, 10), t0), "new term");
        assert!(!acks.is_repeat(&ack(2, 4, 10), t0), "new leader");
        assert!(
            acks.is_repeat(&ack(1, 4, 10), t0),
            "each leader is tracked on its own"
        );
    }

    #[test]
    fn after_a_loss_the_next_acknowledgement_goes_out() {
        let mut acks = RepeatedAcks::new(WINDOW);
        let t0 = Instant::now();
        assert!(!acks.is_repeat(&ack(1, 3, 10), t0));
        acks.forget(1);
        assert!(!acks.is_repeat(&ack(1, 3, 10), t0));
        assert!(acks.is_repeat(&ack(1, 3, 10), t0));
    }

    #[test]
    fn rejections_and_other_messages_always_go_out() {
        let mut acks = RepeatedAcks::new(WINDOW);
        let t0 = Instant::now();
        let mut reject = ack(1, 3, 10);
        reject.reject = true;
        reject.reject_hint = 7;
        assert!(!acks.is_repeat(&reject, t0));
        assert!(!acks.is_repeat(&reject, t0));
        let mut heartbeat = ack(1, 3, 10);
        heartbeat.set_msg_type(MessageType::MsgHeartbeatResponse);
        assert!(!acks.is_repeat(&heartbeat, t0));
        assert!(!acks.is_repeat(&heartbeat, t0));
        // A rejection is no acknowledgement: it does not start a window either.
        assert!(!acks.is_repeat(&ack(1, 3, 10), t0));
    }
}
