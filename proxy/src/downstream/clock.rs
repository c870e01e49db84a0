//! A coarse clock for the HTTP/1.1 server: the `Date` header's text and the instant the
//! header-read timeout counts from, both updated once a second by the listener instead of
//! read from the system clocks per request (hyper read the wall clock three times per request
//! for its `Date` alone).
//!
//! The listener calls [`Clock::tick`] on each whole second; connections only load atomics
//! (the `Date` text is formatted once per second per thread, cached in a thread-local).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the clock is updated: `Date` has a resolution of one second.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// The length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) const DATE_LEN: usize = 29;

/// The listener's clock.
#[derive(Debug)]
pub(crate) struct Clock {
    base: Instant,
    /// Milliseconds from `base` to the end of the current tick: never earlier than the real
    /// time while ticks come on time, so a deadline counted from it is never early.
    upper_ms: AtomicU64,
    /// Seconds since the Unix epoch at the last tick.
    unix: AtomicU64,
}

thread_local! {
    /// The last `Date` text this thread formatted, and for which second.
    static DATE: Cell<(u64, [u8; DATE_LEN])> = const { Cell::new((u64::MAX, [0; DATE_LEN])) };
}

// === impl Clock ===

impl Clock {
    pub(crate) fn new() -> Self {
        let clock = Self {
            base: Instant::now(),
            upper_ms: AtomicU64::new(0),
            unix: AtomicU64::new(0),
        };
        clock.tick();
        clock
    }

    /// Reads both system clocks (once a second, from the listener).
    pub(crate) fn tick(&self) {
        let since = self.base.elapsed() + TICK;
        self.upper_ms.store(
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.unix.store(unix, Ordering::Relaxed);
    }

    /// When the first tick after now should come: the next whole second of the wall clock, so
    /// `Date` changes within a few milliseconds of the real second.
    pub(crate) fn first_tick() -> tokio::time::Instant {
        let into_second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(Duration::ZERO, |d| {
                Duration::from_nanos(d.subsec_nanos().into())
            });
        tokio::time::Instant::now() + (TICK - into_second) + Duration::from_millis(1)
    }

    /// An instant at or after now (at most one tick late): where timeouts count from.
    pub(crate) fn now_upper(&self) -> Instant {
        self.base + Duration::from_millis(self.upper_ms.load(Ordering::Relaxed))
    }

    /// The `Date` header's value for the current second.
    pub(crate) fn date(&self) -> [u8; DATE_LEN] {
        let unix = self.unix.load(Ordering::Relaxed);
        DATE.with(|cached| {
            let (second, text) = cached.get();
            if second == unix {
                return text;
            }
            let text = imf_fixdate(unix);
            cached.set((unix, text));
            text
        })
    }
}

/// `unix` seconds as an IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`,
/// formatted by `httpdate` (hyper's own `Date` formatter) into a fixed buffer.
pub(crate) fn imf_fixdate(unix: u64) -> [u8; DATE_LEN] {
    use std::io::Write as _;
    let date = httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(unix));
    let mut out = [0u8; DATE_LEN];
    // An HttpDate is always DATE_LEN bytes (years 1970-9999; the clock is in that range).
    let _ = write!(&mut out[..], "{date}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        // RFC 9110's example.
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_798_761_599),
            b"Thu, 31 Dec 2026 23:59:59 GMT"
        );
        assert_eq!(
            &imf_fixdate(4_102_444_800),
            b"Fri, 01 Jan 2100 00:00:00 GMT"
        );
    }

    #[test]
    fn the_upper_instant_is_not_before_now() {
        let clock = Clock::new();
        assert!(clock.now_upper() >= Instant::now());
        assert_eq!(clock.date().len(), DATE_LEN);
    }
}
