//! A consistent sample of distinct users per assigned arm, with bounded memory.
//!
//! A user (the sticky key) is in the sample when `XXH3_64(seed 1, key) < fraction·2^64`.
//! The fraction starts at 1 and halves whenever the sample (all arms together) exceeds
//! `experiment.user_sample_cap`; the users whose hash is no longer below the threshold
//! are dropped. The rule depends on the key alone, never on the arm, so the sample is an
//! unbiased, arm-independent sample of each arm's users and `sampled / fraction`
//! estimates the users the hash assigned to an arm. Hashes are kept in sets sharded by
//! hash. Requests never touch it: each worker's cell of the phase collects the sampled
//! users it sees ([`UserSample::sampled`]), and the phase moves them in here, and thins,
//! when it is read ([`super::phase`]).

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Shards per arm (a power of two).
const SHARDS: usize = 16;

/// The hash that decides sample membership: XXH3_64 with seed 1 (independent of the
/// assignment hash, which uses the salt).
pub fn user_hash(key: impl AsRef<[u8]>) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_ref(), 1)
}

/// The sets hold XXH3 hashes already: rehash them with one multiply (Fibonacci
/// hashing) rather than SipHash. The multiply spreads every bit, which matters: the
/// shard is chosen by the low bits and thinning zeroes the high ones.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fibonacci(u64);

impl Hasher for Fibonacci {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A set of user hashes (Fibonacci-rehashed).
pub(crate) type HashSet = std::collections::HashSet<u64, BuildHasherDefault<Fibonacci>>;

/// Keeps a value on its own cache line, so shards used by different threads do not
/// share one.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Padded<T>(pub(crate) T);

/// Distinct sampled users per arm.
pub struct UserSample {
    cap: usize,
    /// The fraction is `2^-shift`.
    shift: AtomicU32,
    total: AtomicUsize,
    /// `arms × SHARDS` sets of hashes.
    sets: Vec<Padded<Mutex<HashSet>>>,
    arms: usize,
}

/// What an insertion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Not in the sample, or already counted.
    No,
    /// A new sampled user; the sample is within its cap.
    Yes,
    /// A new sampled user, and the sample now exceeds its cap: call
    /// [`UserSample::thin`].
    OverCap,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn in_sample(hash: u64, shift: u32) -> bool {
    shift == 0 || (shift < 64 && hash < (1u64 << (64 - shift)))
}

impl UserSample {
    /// An empty sample for `arms` arms, thinned above `cap` users in all.
    pub fn new(arms: usize, cap: usize) -> Self {
        UserSample {
            cap: cap.max(1),
            shift: AtomicU32::new(0),
            total: AtomicUsize::new(0),
            sets: (0..arms * SHARDS).map(|_| Padded::default()).collect(),
            arms,
        }
    }

    /// The current sampling fraction, `2^-k`.
    pub fn fraction(&self) -> f64 {
        0.5f64.powi(self.shift.load(Ordering::Relaxed) as i32)
    }

    /// Whether the user with hash `hash` is in the sample at the current fraction.
    #[inline]
    pub fn sampled(&self, hash: u64) -> bool {
        in_sample(hash, self.shift.load(Ordering::Relaxed))
    }

    /// Counts the user with hash `hash` as assigned to `arm`.
    pub fn insert(&self, arm: usize, hash: u64) -> Inserted {
        if arm >= self.arms || !in_sample(hash, self.shift.load(Ordering::Relaxed)) {
            return Inserted::No;
        }
        let shard = &self.sets[arm * SHARDS + (hash as usize & (SHARDS - 1))].0;
        let new = {
            let mut set = lock(shard);
            // Re-check under the lock: a thinning may have run meanwhile.
            in_sample(hash, self.shift.load(Ordering::Relaxed)) && set.insert(hash)
        };
        if !new {
            return Inserted::No;
        }
        if self.total.fetch_add(1, Ordering::Relaxed) + 1 > self.cap {
            Inserted::OverCap
        } else {
            Inserted::Yes
        }
    }

    /// Sampled users per arm.
    pub fn counts(&self) -> Vec<u64> {
        (0..self.arms)
            .map(|arm| {
                self.sets[arm * SHARDS..(arm + 1) * SHARDS]
                    .iter()
                    .map(|s| lock(&s.0).len() as u64)
                    .sum()
            })
            .collect()
    }

    /// Halves the fraction until the sample is within its cap, dropping the users no
    /// longer sampled. Returns whether anything was dropped. The caller serialises
    /// thinning (the phase holds its SRM lock around it).
    pub fn thin(&self) -> bool {
        let mut thinned = false;
        while self.total.load(Ordering::Relaxed) > self.cap {
            let shift = self.shift.load(Ordering::Relaxed) + 1;
            if shift >= 64 {
                break;
            }
            self.shift.store(shift, Ordering::Relaxed);
            let mut total = 0;
            for shard in &self.sets {
                let mut set = lock(&shard.0);
                set.retain(|h| in_sample(*h, shift));
                total += set.len();
            }
            self.total.store(total, Ordering::Relaxed);
            thinned = true;
        }
        thinned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_counted_once_per_arm() {
        let s = UserSample::new(2, 100);
        let h = user_hash("alice");
        assert_eq!(s.insert(0, h), Inserted::Yes);
        assert_eq!(s.insert(0, h), Inserted::No);
        assert_eq!(s.insert(1, h), Inserted::Yes);
        assert_eq!(s.insert(2, h), Inserted::No);
        assert_eq!(s.counts(), vec![1, 1]);
        assert_eq!(s.fraction(), 1.0);
    }

    #[test]
    fn the_hash_is_xxh3_with_seed_one() {
        assert_eq!(
            user_hash("user-1"),
            xxhash_rust::xxh3::xxh3_64_with_seed(b"user-1", 1)
        );
        assert_ne!(user_hash("user-1"), xxhash_rust::xxh3::xxh3_64(b"user-1"));
    }

    #[test]
    fn the_fraction_halves_above_the_cap_and_the_estimate_stays_close() {
        let cap = 1000;
        let s = UserSample::new(2, cap);
        let users = 20_000u64;
        for i in 0..users {
            let arm = (i % 4 == 0) as usize; // 75% / 25%
            if s.insert(arm, user_hash(format!("user-{i}"))) == Inserted::OverCap {
                assert!(s.thin());
            }
        }
        let counts = s.counts();
        let sampled: u64 = counts.iter().sum();
        assert!(sampled as usize <= cap, "{counts:?}");
        let fraction = s.fraction();
        assert!(fraction <= 1.0 / 16.0, "{fraction}");
        // Every kept user is below the threshold, and the estimate is close (±15%).
        let estimate = sampled as f64 / fraction;
        assert!(
            (estimate - users as f64).abs() < 0.15 * users as f64,
            "{estimate}"
        );
        let share = counts[1] as f64 / sampled as f64;
        assert!((share - 0.25).abs() < 0.06, "{share}");
    }

    #[test]
    fn membership_is_consistent_across_arms_and_thinning() {
        let s = UserSample::new(1, 10);
        for i in 0..200 {
            let h = user_hash(format!("u{i}"));
            if s.insert(0, h) == Inserted::OverCap {
                s.thin();
            }
        }
        let shift = s.fraction().log2().abs() as u32;
        // A user dropped by thinning is never counted again.
        for i in 0..200 {
            let h = user_hash(format!("u{i}"));
            if !in_sample(h, shift) {
                assert_eq!(s.insert(0, h), Inserted::No);
            }
        }
    }
}
