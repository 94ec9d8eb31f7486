//! `[client]`, validated: how long the router waits on clients, and how it closes on
//! them after an early error.

use std::time::Duration;

/// Client-side limits (`[client]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// A request head must arrive within this time (`header_timeout_ms`).
    pub header_timeout: Duration,
    /// A request body must arrive within this time (`body_timeout_ms`).
    pub body_timeout: Duration,
    /// A client that accepts no bytes of its answer for this long is cut off
    /// (`send_timeout_ms`).
    pub send_timeout: Duration,
    /// After an early error answer, the client's bytes are read and dropped for up
    /// to this long before closing (`linger_ms`; 0: no lingering close).
    pub linger: Duration,
}
