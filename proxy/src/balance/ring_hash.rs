//! Consistent hashing: every endpoint owns `VNODES` points on a 64-bit ring, placed by a hash
//! of its identity (id and address), so an endpoint joining or leaving moves only the keys that
//! land on its own points. A key goes to the first point at or after its hash; an ineligible
//! endpoint (ejected, already tried) passes the key on to the next point.

use std::sync::Arc;

use super::Endpoint;

/// Points per endpoint: with 100, each endpoint's share stays within roughly ±10-15 % of even
/// for small subsets (the usual range quoted for Ketama-style rings), at 1.6 KiB per endpoint.
const VNODES: u32 = 100;

/// The ring of one subset: `(point, index into the subset's endpoints)`, sorted by point.
#[derive(Debug)]
pub(super) struct Ring {
    points: Vec<(u64, usize)>,
}

// === impl Ring ===

impl Ring {
    pub(super) fn new(endpoints: &[Arc<Endpoint>]) -> Self {
        let mut points = Vec::with_capacity(endpoints.len() * VNODES as usize);
        for (i, e) in endpoints.iter().enumerate() {
            let identity = format!("{}@{}", e.id, e.addr);
            for v in 0..VNODES {
                let mut key = identity.clone().into_bytes();
                key.extend_from_slice(&v.to_be_bytes());
                points.push((hash_bytes(&key), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    pub(super) fn pick<'a>(
        &self,
        hash: u64,
        endpoints: &'a [Arc<Endpoint>],
        eligible: &dyn Fn(&Endpoint) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let n = self.points.len();
        (0..n)
            .map(|k| &endpoints[self.points[(start + k) % n].1])
            .find(|e| eligible(e))
    }
}

/// FNV-1a then the SplitMix64 finaliser: stable across processes and builds (unlike std's
/// `DefaultHasher`), and the finaliser spreads FNV's weak low bits over the whole ring.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
