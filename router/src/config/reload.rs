//! `[reload]`, validated: how the router notices a changed config file.

use std::time::Duration;

/// Live reload (`[reload]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadConfig {
    /// How often the file is checked for changes (`poll_interval_ms`).
    pub poll_interval: Duration,
}
