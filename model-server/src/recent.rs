//! Prediction ids and the bounded memory of recent predictions.
//!
//! An id is `<variant>-<32 hex digits>` ([`abgate_common::feedback::prediction_id`]):
//! the arm that served it (so the router can send feedback back to it) and 128 bits
//! from the thread's CSPRNG (`rand::rng()`, ChaCha12 reseeded from the OS), so an id
//! cannot be guessed from another one, and ids from a previous run never match.
//!
//! The last `capacity` predictions are remembered, each with its predicted value, a
//! keyed 128-bit digest of the user key it was made for (SipHash-1-3 under two random
//! per-process keys, so a long key costs no more memory than a short one), when it was
//! made (unix time), whether its request named an arm with `X-Variant` (an override),
//! and which feedback it has received. The feedback answer reports these ([`Made`]),
//! so the router counts feedback in the experiment phase of its prediction, for the
//! arm its user was assigned. A map from id to entry and a ring of ids in arrival order
//! (the oldest is forgotten when a new one arrives at capacity) hold them, both
//! allocated for `capacity` up front: about 96 bytes per prediction (~10 MB at the
//! default 100,000), however long the server runs and whatever requests arrive.
//! Both live under one mutex, so a feedback's checks and the flags it sets are one
//! step: of two identical feedbacks sent at once, exactly one is taken.

use abgate_common::feedback::{parse_prediction_id, prediction_id};
use abgate_common::FeedbackType;
use rand::Rng as _;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;

/// A received feedback's claim on its prediction: at most one of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The `rating`.
    Rating,
    /// The accuracy judgement (`accurate`, `too_high` or `too_low`).
    Judgement,
    /// The ground truth `actual`.
    Actual,
}

impl Slot {
    const fn bit(self) -> u8 {
        match self {
            Slot::Rating => 1,
            Slot::Judgement => 2,
            Slot::Actual => 4,
        }
    }

    /// How a client reads it in an error message.
    pub const fn describe(self) -> &'static str {
        match self {
            Slot::Rating => "a rating",
            Slot::Judgement => "an accuracy judgement (accurate, too_high or too_low)",
            Slot::Actual => "an `actual`",
        }
    }

    /// The slot a feedback type claims.
    pub const fn of(kind: FeedbackType) -> Slot {
        match kind {
            FeedbackType::Rating => Slot::Rating,
            FeedbackType::Accurate | FeedbackType::TooHigh | FeedbackType::TooLow => {
                Slot::Judgement
            }
        }
    }
}

/// What remembering a feedback came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Claim {
    /// The id is not of this arm's shape (another arm's, or not an id at all).
    Foreign,
    /// The id has this arm's shape but names no remembered prediction (never issued,
    /// or forgotten).
    Unknown,
    /// The prediction was made for a user and the feedback comes from someone else.
    Forbidden,
    /// The prediction already received this.
    Duplicate(Slot),
    /// Taken: the flags are set; the predicted value.
    Accepted(f32),
}

/// What the store knows of an accepted feedback's prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Made {
    /// Unix time the prediction was made.
    pub predicted_at: f64,
    /// Whether it was made for a user (then the feedback came from that user).
    pub for_user: bool,
    /// Whether its request named an arm with `X-Variant`.
    pub overridden: bool,
}

struct Entry {
    value: f32,
    made: Made,
    /// Digest of the user key, `None` for an anonymous prediction.
    user: Option<[u64; 2]>,
    /// [`Slot::bit`]s received.
    received: u8,
}

struct Store {
    entries: HashMap<u128, Entry>,
    /// Ids in arrival order, oldest first; never longer than the capacity.
    order: VecDeque<u128>,
}

/// Issues prediction ids and remembers the last `capacity` predictions.
pub struct RecentPredictions {
    variant: String,
    capacity: usize,
    keys: [std::hash::RandomState; 2],
    store: Mutex<Store>,
}

/// The arm encoded in a prediction id (the shared rule the router also uses).
pub fn variant_of(prediction_id: &str) -> Option<&str> {
    abgate_common::feedback::prediction_owner(prediction_id)
}

impl RecentPredictions {
    /// Room for the last `capacity` predictions of arm `variant`.
    pub fn new(variant: &str, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RecentPredictions {
            variant: variant.to_string(),
            capacity,
            keys: [std::hash::RandomState::new(), std::hash::RandomState::new()],
            store: Mutex::new(Store {
                entries: HashMap::with_capacity(capacity),
                order: VecDeque::with_capacity(capacity),
            }),
        }
    }

    fn digest(&self, user: &[u8]) -> [u64; 2] {
        [self.keys[0].hash_one(user), self.keys[1].hash_one(user)]
    }

    /// Records `values`, predicted for `user` (`None`: anonymous), and returns one
    /// new id per value.
    pub fn record(&self, values: &[f32], user: Option<&[u8]>) -> Vec<String> {
        self.record_request(values, user, false)
    }

    /// [`RecentPredictions::record`] for a request that did (`overridden`) or did not
    /// name its arm with `X-Variant`.
    pub fn record_request(
        &self,
        values: &[f32],
        user: Option<&[u8]>,
        overridden: bool,
    ) -> Vec<String> {
        let made = Made {
            predicted_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            for_user: user.is_some(),
            overridden,
        };
        let user = user.map(|u| self.digest(u));
        let mut rng = rand::rng();
        let bits: Vec<u128> = values.iter().map(|_| rng.random()).collect();
        if let Ok(mut store) = self.store.lock() {
            let Store { entries, order } = &mut *store;
            for (&id, &value) in bits.iter().zip(values) {
                if order.len() >= self.capacity {
                    if let Some(old) = order.pop_front() {
                        entries.remove(&old);
                    }
                }
                order.push_back(id);
                entries.insert(
                    id,
                    Entry {
                        value,
                        made,
                        user,
                        received: 0,
                    },
                );
            }
        }
        bits.into_iter()
            .map(|b| prediction_id(&self.variant, b))
            .collect()
    }

    /// Takes a feedback on `prediction_id` from `user` claiming `slots`, unless the
    /// prediction is unknown, was made for another user (checked first), or already
    /// received one of `slots` (then nothing is set).
    pub fn claim(&self, prediction_id: &str, user: Option<&[u8]>, slots: &[Slot]) -> Claim {
        self.claim_made(prediction_id, user, slots).0
    }

    /// [`RecentPredictions::claim`], with what is known of the prediction when the
    /// feedback is accepted.
    pub fn claim_made(
        &self,
        prediction_id: &str,
        user: Option<&[u8]>,
        slots: &[Slot],
    ) -> (Claim, Option<Made>) {
        let Some((owner, bits)) = parse_prediction_id(prediction_id) else {
            return (Claim::Foreign, None);
        };
        if owner != self.variant {
            return (Claim::Foreign, None);
        }
        let sender = user.map(|u| self.digest(u));
        let Ok(mut store) = self.store.lock() else {
            return (Claim::Unknown, None);
        };
        let Some(entry) = store.entries.get_mut(&bits) else {
            return (Claim::Unknown, None);
        };
        if entry.user.is_some() && entry.user != sender {
            return (Claim::Forbidden, None);
        }
        if let Some(&taken) = slots.iter().find(|s| entry.received & s.bit() != 0) {
            return (Claim::Duplicate(taken), None);
        }
        for s in slots {
            entry.received |= s.bit();
        }
        (Claim::Accepted(entry.value), Some(entry.made))
    }

    /// How many predictions are remembered now (at most the capacity).
    pub fn len(&self) -> usize {
        self.store.lock().map(|s| s.order.len()).unwrap_or(0)
    }

    /// Whether no prediction is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATING: &[Slot] = &[Slot::Rating];
    const JUDGEMENT: &[Slot] = &[Slot::Judgement];

    #[test]
    fn ids_are_the_arm_and_128_random_bits_and_find_their_value() {
        let r = RecentPredictions::new("best_model", 4);
        let ids = r.record(&[5.5, 6.0], None);
        for id in &ids {
            assert_eq!(variant_of(id), Some("best_model"));
            assert_eq!(id.len(), "best_model-".len() + 32, "{id}");
        }
        let bits: Vec<u128> = ids
            .iter()
            .filter_map(|id| parse_prediction_id(id).map(|(_, b)| b))
            .collect();
        assert_eq!(bits.len(), 2);
        assert_ne!(bits[0], bits[1]);
        assert!(
            bits[0].abs_diff(bits[1]) > 1 << 64,
            "{ids:?} look sequential"
        );
        assert_eq!(r.claim(&ids[0], None, RATING), Claim::Accepted(5.5));
        assert_eq!(r.claim(&ids[1], None, RATING), Claim::Accepted(6.0));
    }

    #[test]
    fn ids_do_not_repeat_or_follow_each_other() {
        let r = RecentPredictions::new("a", 1000);
        let ids = r.record(&[1.0; 1000], None);
        let bits: std::collections::HashSet<u128> = ids
            .iter()
            .filter_map(|id| parse_prediction_id(id).map(|(_, b)| b))
            .collect();
        assert_eq!(bits.len(), 1000);
        // Random bits: about half of them differ between neighbours.
        let mut sorted: Vec<u128> = bits.into_iter().collect();
        sorted.sort_unstable();
        assert!(sorted.windows(2).all(|w| w[1] - w[0] > 1 << 64));
    }

    #[test]
    fn an_accepted_feedback_tells_when_and_for_whom_its_prediction_was_made() {
        let r = RecentPredictions::new("a", 8);
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mine = r.record_request(&[1.0], Some(b"u1"), false);
        let forced = r.record_request(&[2.0], Some(b"u1"), true);
        let anonymous = r.record(&[3.0], None);
        let (claim, made) = r.claim_made(&mine[0], Some(b"u1"), RATING);
        assert_eq!(claim, Claim::Accepted(1.0));
        let made = made.unwrap_or_else(|| unreachable!());
        assert!(made.for_user && !made.overridden);
        assert!(made.predicted_at >= before && made.predicted_at < before + 60.0);
        let (_, made) = r.claim_made(&forced[0], Some(b"u1"), RATING);
        assert!(made.is_some_and(|m| m.overridden));
        let (_, made) = r.claim_made(&anonymous[0], Some(b"u2"), RATING);
        assert!(made.is_some_and(|m| !m.for_user));
        // Refused feedback tells nothing.
        assert_eq!(
            r.claim_made(&mine[0], Some(b"u2"), JUDGEMENT),
            (Claim::Forbidden, None)
        );
    }

    #[test]
    fn the_store_forgets_the_oldest_and_stays_bounded() {
        let r = RecentPredictions::new("a", 2);
        let old = r.record(&[1.0], None);
        for _ in 0..10 {
            r.record(&[2.0, 3.0, 4.0], None);
        }
        assert_eq!(r.len(), 2);
        let store = r.store.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(store.entries.len(), 2);
        drop(store);
        assert_eq!(r.claim(&old[0], None, RATING), Claim::Unknown);
        let newest = r.record(&[9.0], None);
        assert_eq!(r.claim(&newest[0], None, RATING), Claim::Accepted(9.0));
    }

    #[test]
    fn foreign_unknown_and_earlier_run_ids_are_told_apart() {
        let r = RecentPredictions::new("a", 8);
        let other_run = RecentPredictions::new("a", 8);
        let id = other_run.record(&[1.0], None).remove(0);
        assert_eq!(r.claim(&id, None, RATING), Claim::Unknown);
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(r.claim(&format!("a-{hex}"), None, RATING), Claim::Unknown);
        assert_eq!(r.claim(&format!("b-{hex}"), None, RATING), Claim::Foreign);
        assert_eq!(r.claim("a-00000000-1", None, RATING), Claim::Foreign);
        assert_eq!(r.claim("nonsense", None, RATING), Claim::Foreign);
    }

    #[test]
    fn each_slot_is_taken_once_and_a_refused_claim_sets_nothing() {
        let r = RecentPredictions::new("a", 8);
        let id = r.record(&[5.0], None).remove(0);
        assert_eq!(r.claim(&id, None, RATING), Claim::Accepted(5.0));
        assert_eq!(r.claim(&id, None, RATING), Claim::Duplicate(Slot::Rating));
        // Judgement and actual together; then the actual alone is a repeat, and the
        // refused rating-with-actual below does not count as an actual either.
        assert_eq!(
            r.claim(&id, None, &[Slot::Judgement, Slot::Actual]),
            Claim::Accepted(5.0)
        );
        assert_eq!(
            r.claim(&id, None, JUDGEMENT),
            Claim::Duplicate(Slot::Judgement)
        );
        let other = r.record(&[6.0], None).remove(0);
        assert_eq!(r.claim(&other, None, &[Slot::Actual]), Claim::Accepted(6.0));
        assert_eq!(
            r.claim(&other, None, &[Slot::Rating, Slot::Actual]),
            Claim::Duplicate(Slot::Actual)
        );
        assert_eq!(r.claim(&other, None, RATING), Claim::Accepted(6.0));
    }

    #[test]
    fn a_users_prediction_takes_feedback_from_that_user_only_checked_before_repeats() {
        let r = RecentPredictions::new("a", 8);
        let id = r.record(&[5.0], Some(b"alice")).remove(0);
        assert_eq!(r.claim(&id, Some(b"bob"), RATING), Claim::Forbidden);
        assert_eq!(r.claim(&id, None, RATING), Claim::Forbidden);
        assert_eq!(r.claim(&id, Some(b"alic"), RATING), Claim::Forbidden);
        assert_eq!(r.claim(&id, Some(b"alice"), RATING), Claim::Accepted(5.0));
        assert_eq!(r.claim(&id, Some(b"bob"), RATING), Claim::Forbidden);
        assert_eq!(
            r.claim(&id, Some(b"alice"), RATING),
            Claim::Duplicate(Slot::Rating)
        );
        let raw = r.record(&[5.0], Some(b"\xff\xfe")).remove(0);
        assert_eq!(r.claim(&raw, Some(b"\xff\xfd"), RATING), Claim::Forbidden);
        assert_eq!(
            r.claim(&raw, Some(b"\xff\xfe"), RATING),
            Claim::Accepted(5.0)
        );
        let anonymous = r.record(&[5.0], None).remove(0);
        assert_eq!(
            r.claim(&anonymous, Some(b"carol"), RATING),
            Claim::Accepted(5.0)
        );
    }

    #[test]
    fn of_concurrent_identical_claims_exactly_one_is_taken() {
        let r = std::sync::Arc::new(RecentPredictions::new("a", 8));
        for _ in 0..20 {
            let id = r.record(&[5.0], None).remove(0);
            let taken: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| r.claim(&id, None, JUDGEMENT)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().map(|c| matches!(c, Claim::Accepted(_))))
                    .filter(|c| matches!(c, Ok(true)))
                    .count()
            });
            assert_eq!(taken, 1);
        }
    }
}
