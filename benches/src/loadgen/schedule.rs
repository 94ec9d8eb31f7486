//! The open-loop schedule: request `k` (0, 1, 2, …) is intended to be sent at
//! `start + k / rate`, on connection `k mod connections`. Intended times are
//! `1/rate` apart globally, so each connection sends every `connections / rate`.

use std::time::Duration;

use tokio::time::Instant;

/// Fixed intended send times for a constant-rate run.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    rate: f64,
    connections: usize,
    duration: Duration,
}

impl Schedule {
    /// A schedule of `rate` requests per second spread round-robin over
    /// `connections`, for `duration` from `start`.
    pub fn new(start: Instant, rate: f64, connections: usize, duration: Duration) -> Self {
        Schedule {
            start,
            rate,
            connections: connections.max(1),
            duration,
        }
    }

    /// The schedule's start.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Offset of request `k`'s intended send time from the start.
    pub fn offset(&self, k: u64) -> Duration {
        // Rounded to the nanosecond, so `k / rate` is exact whenever it can be.
        Duration::from_nanos((k as f64 * 1e9 / self.rate).round() as u64)
    }

    /// Intended send time of request `k`.
    pub fn intended(&self, k: u64) -> Instant {
        self.start + self.offset(k)
    }

    /// The connection that sends request `k`.
    pub fn connection_of(&self, k: u64) -> usize {
        (k % self.connections as u64) as usize
    }

    /// Number of requests whose intended time falls within the duration
    /// (`offset(k) < duration`).
    pub fn total(&self) -> u64 {
        (self.duration.as_secs_f64() * self.rate).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_1000_over_4_connections_is_1ms_apart_globally() {
        let start = Instant::now();
        let s = Schedule::new(start, 1000.0, 4, Duration::from_secs(1));
        assert_eq!(s.total(), 1000);
        for k in 0..1000u64 {
            assert_eq!(s.intended(k) - start, Duration::from_millis(k));
            assert_eq!(s.connection_of(k), (k % 4) as usize);
        }
        // Connection 1 sends at 1, 5, 9, … ms: every 4 ms.
        let conn1: Vec<Duration> = (0..12u64)
            .filter(|&k| s.connection_of(k) == 1)
            .map(|k| s.offset(k))
            .collect();
        assert_eq!(
            conn1,
            vec![
                Duration::from_millis(1),
                Duration::from_millis(5),
                Duration::from_millis(9)
            ]
        );
    }

    #[test]
    fn total_rounds_up_partial_intervals() {
        let s = Schedule::new(Instant::now(), 3.0, 2, Duration::from_millis(1500));
        // offsets 0, 0.333, 0.667, 1.0, 1.333 s are < 1.5 s
        assert_eq!(s.total(), 5);
    }
}
