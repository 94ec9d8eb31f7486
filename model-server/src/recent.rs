//! Prediction ids and the bounded memory of recent predictions.
//!
//! An id is `<variant>-<epoch>-<sequence>` (hex): the arm that served it (so the
//! router can send feedback back to it), a random per-process epoch (so ids from a
//! previous run never match), and a sequence number. The last `capacity` predictions
//! live in a fixed ring indexed by sequence, so memory stays flat however long the
//! server runs, and feedback with `actual` can be matched to what was predicted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Issues prediction ids and remembers the last `capacity` predicted values.
pub struct RecentPredictions {
    variant: String,
    epoch: u32,
    next: AtomicU64,
    ring: Mutex<Vec<(u64, f32)>>,
}

/// What a prediction id says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IdLookup {
    /// The id is not of this arm's shape (another arm's, or not an id at all).
    Foreign,
    /// The id is this arm's but too old (evicted or from an earlier run).
    Forgotten,
    /// The id's predicted value.
    Known(f32),
}

/// The arm encoded in a prediction id (the shared rule the router also uses).
pub fn variant_of(prediction_id: &str) -> Option<&str> {
    abgate_common::feedback::prediction_owner(prediction_id)
}

impl RecentPredictions {
    /// A ring of `capacity` slots for arm `variant`.
    pub fn new(variant: &str, capacity: usize) -> Self {
        RecentPredictions {
            variant: variant.to_string(),
            epoch: rand::random(),
            next: AtomicU64::new(1),
            ring: Mutex::new(vec![(0, 0.0); capacity.max(1)]),
        }
    }

    /// Records `values` and returns one id per value.
    pub fn record(&self, values: &[f32]) -> Vec<String> {
        let first = self.next.fetch_add(values.len() as u64, Ordering::Relaxed);
        if let Ok(mut ring) = self.ring.lock() {
            let cap = ring.len() as u64;
            for (i, v) in values.iter().enumerate() {
                let seq = first + i as u64;
                ring[(seq % cap) as usize] = (seq, *v);
            }
        }
        (0..values.len() as u64)
            .map(|i| format!("{}-{:08x}-{:x}", self.variant, self.epoch, first + i))
            .collect()
    }

    /// Looks an id up.
    pub fn lookup(&self, prediction_id: &str) -> IdLookup {
        let Some(rest) = prediction_id
            .strip_prefix(self.variant.as_str())
            .and_then(|r| r.strip_prefix('-'))
        else {
            return IdLookup::Foreign;
        };
        let Some((epoch, seq)) = rest.split_once('-') else {
            return IdLookup::Foreign;
        };
        let (Ok(epoch), Ok(seq)) = (u32::from_str_radix(epoch, 16), u64::from_str_radix(seq, 16))
        else {
            return IdLookup::Foreign;
        };
        if epoch != self.epoch {
            return IdLookup::Forgotten;
        }
        let Ok(ring) = self.ring.lock() else {
            return IdLookup::Forgotten;
        };
        match ring[(seq % ring.len() as u64) as usize] {
            (s, v) if s == seq && seq != 0 => IdLookup::Known(v),
            _ => IdLookup::Forgotten,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_encode_the_arm_and_find_their_value() {
        let r = RecentPredictions::new("best_model", 4);
        let ids = r.record(&[5.5, 6.0]);
        assert_eq!(variant_of(&ids[0]), Some("best_model"));
        assert_eq!(r.lookup(&ids[0]), IdLookup::Known(5.5));
        assert_eq!(r.lookup(&ids[1]), IdLookup::Known(6.0));
    }

    #[test]
    fn the_ring_forgets_old_predictions_and_stays_bounded() {
        let r = RecentPredictions::new("a", 2);
        let old = r.record(&[1.0]);
        for _ in 0..10 {
            r.record(&[2.0]);
        }
        assert_eq!(r.lookup(&old[0]), IdLookup::Forgotten);
        assert_eq!(r.ring.lock().map(|g| g.len()).unwrap_or(0), 2);
    }

    #[test]
    fn foreign_and_earlier_run_ids_are_told_apart() {
        let r = RecentPredictions::new("a", 8);
        let other_run = RecentPredictions::new("a", 8);
        let id = other_run.record(&[1.0]).remove(0);
        if other_run.epoch != r.epoch {
            assert_eq!(r.lookup(&id), IdLookup::Forgotten);
        }
        assert_eq!(r.lookup("b-00000000-1"), IdLookup::Foreign);
        assert_eq!(r.lookup("a-zz-1"), IdLookup::Foreign);
        assert_eq!(r.lookup("nonsense"), IdLookup::Foreign);
    }
}
