//! Wall-clock time as the router reports it (a pure leaf: every layer may read it).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
