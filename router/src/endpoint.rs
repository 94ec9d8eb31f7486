//! The endpoints of an arm: every address its URLs resolve to (a Kubernetes headless
//! Service gives one per pod), each with its own health and in-flight count. A request
//! picks an endpoint by the power of two choices on in-flight requests; the arm is up
//! while any endpoint is. Re-resolution keeps the endpoints (and so their pooled
//! connections) of addresses that stay. Which arm a user gets never depends on this.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// One address of an arm.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The pool key of its connections.
    pub key: String,
    inflight: AtomicUsize,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            key: addr.to_string(),
            inflight: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }

    /// Requests in flight on it.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether it takes requests.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The last failure's reason, while down.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Records a check or request outcome: up on success, down on failure.
    pub fn observe(&self, result: Result<(), String>) {
        let up = result.is_ok();
        if let Ok(mut e) = self.last_error.lock() {
            *e = result.err();
        }
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(endpoint = %self.addr, "endpoint is up");
            } else {
                tracing::warn!(endpoint = %self.addr, reason = ?self.last_error(), "endpoint is down");
            }
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// A request in flight on an endpoint.
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one arm, swapped whole on re-resolution.
#[derive(Debug)]
pub struct EndpointSet {
    list: ArcSwap<Vec<Arc<Endpoint>>>,
}

impl EndpointSet {
    /// A set of `addrs` (deduplicated, at most `max`).
    pub fn new(addrs: &[SocketAddr], max: usize) -> EndpointSet {
        let set = EndpointSet {
            list: ArcSwap::from_pointee(Vec::new()),
        };
        set.update(addrs, max);
        set
    }

    /// The endpoints now.
    pub fn all(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.list.load_full()
    }

    /// Replaces the addresses, keeping the endpoint (health, pooled connections) of
    /// every address that stays. An empty resolution keeps the old set: a DNS hiccup
    /// must not take an arm down.
    pub fn update(&self, addrs: &[SocketAddr], max: usize) {
        if addrs.is_empty() {
            return;
        }
        let old = self.list.load_full();
        let mut next: Vec<Arc<Endpoint>> = Vec::with_capacity(addrs.len().min(max));
        for addr in addrs {
            if next.len() >= max {
                tracing::warn!(
                    max,
                    "more addresses than upstream.max_endpoints_per_arm; the rest are ignored"
                );
                break;
            }
            if next.iter().any(|e| e.addr == *addr) {
                continue;
            }
            let kept = old.iter().find(|e| e.addr == *addr).cloned();
            next.push(kept.unwrap_or_else(|| Arc::new(Endpoint::new(*addr))));
        }
        if next.iter().map(|e| e.addr).ne(old.iter().map(|e| e.addr)) {
            self.list.store(Arc::new(next));
        }
    }

    /// Whether any endpoint is up.
    pub fn any_up(&self) -> bool {
        self.list.load().iter().any(|e| e.is_up())
    }

    /// Endpoints up and down.
    pub fn counts(&self) -> (usize, usize) {
        let list = self.list.load();
        let up = list.iter().filter(|e| e.is_up()).count();
        (up, list.len() - up)
    }

    /// The endpoint for the next request: of two distinct healthy endpoints drawn at
    /// random, the one with fewer requests in flight (power of two choices). When
    /// none is up, any endpoint (the request then finds out, and health follows).
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        self.pick_avoiding(None)
    }

    /// [`pick`](Self::pick), skipping `avoid` (the endpoint a retry comes from) while
    /// another endpoint is up.
    pub fn pick_avoiding(&self, avoid: Option<SocketAddr>) -> Option<Arc<Endpoint>> {
        let list = self.list.load();
        let healthy: Vec<&Arc<Endpoint>> = list
            .iter()
            .filter(|e| e.is_up() && Some(e.addr) != avoid)
            .collect();
        let healthy = if healthy.is_empty() {
            list.iter().filter(|e| e.is_up()).collect()
        } else {
            healthy
        };
        let pool: Vec<&Arc<Endpoint>> = if healthy.is_empty() {
            list.iter().collect()
        } else {
            healthy
        };
        let inflight: Vec<usize> = pool.iter().map(|e| e.inflight()).collect();
        let index = two_choices(&inflight, rand::random::<u64>())?;
        Some(Arc::clone(pool[index]))
    }
}

/// The addresses `authorities` resolve to now (blocking; IP literals need no lookup).
/// Used once when a config is applied; the resolver task refreshes them.
pub fn resolve_now(authorities: &[http::uri::Authority]) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for authority in authorities {
        match authority.as_str().parse::<SocketAddr>() {
            Ok(addr) => out.push(addr),
            Err(_) => match authority.as_str().to_socket_addrs() {
                Ok(addrs) => out.extend(addrs),
                Err(e) => tracing::warn!(%authority, error = %e, "cannot resolve arm endpoint"),
            },
        }
    }
    out
}

/// The addresses `authorities` resolve to, without blocking the runtime.
pub async fn resolve(authorities: &[http::uri::Authority]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for authority in authorities {
        match tokio::net::lookup_host(authority.as_str()).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => tracing::warn!(%authority, error = %e, "cannot resolve arm endpoint"),
        }
    }
    out
}

/// The power of two choices, as a pure function: with `draw` as the randomness, two
/// distinct candidates among `inflight.len()` and the index of the less loaded one
/// (ties to the first drawn). `None` when there is no candidate.
pub fn two_choices(inflight: &[usize], draw: u64) -> Option<usize> {
    match inflight.len() {
        0 => None,
        1 => Some(0),
        n => {
            let n64 = n as u64;
            let a = (draw % n64) as usize;
            // A second, distinct index from the draw's other bits.
            let b = (a + 1 + ((draw >> 32) % (n64 - 1)) as usize) % n;
            Some(if inflight[b] < inflight[a] { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn two_choices_picks_the_less_loaded_of_two_distinct_candidates() {
        assert_eq!(two_choices(&[], 7), None);
        assert_eq!(two_choices(&[9], 7), Some(0));
        for draw in 0..1000u64 {
            let draw = draw.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let picked = two_choices(&[5, 0, 5], draw).unwrap_or(9);
            assert!(picked < 3);
            // The idle endpoint wins whenever it is one of the two drawn, which is
            // two draws in three: the loaded ones are never both preferred over it.
            let two = two_choices(&[0, 5], draw);
            assert_eq!(two, Some(0), "with two endpoints both are always drawn");
        }
    }

    #[test]
    fn spread_under_equal_load_reaches_every_endpoint() {
        let mut hits = [0usize; 4];
        let mut x = 1u64;
        for _ in 0..4000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            hits[two_choices(&[0, 0, 0, 0], x).unwrap_or(0)] += 1;
        }
        assert!(hits.iter().all(|&h| h > 700), "{hits:?}");
    }

    #[test]
    fn re_resolution_keeps_the_endpoints_of_addresses_that_stay() {
        let set = EndpointSet::new(&[addr(1), addr(2)], 64);
        let before = set.all();
        before[1].observe(Err("refused".into()));
        set.update(&[addr(2), addr(3)], 64);
        let after = set.all();
        assert_eq!(after.len(), 2);
        assert!(
            Arc::ptr_eq(&before[1], &after[0]),
            "addr 2 kept its endpoint"
        );
        assert!(!after[0].is_up(), "and its health");
        assert!(after[1].is_up());
        set.update(&[], 64);
        assert_eq!(set.all().len(), 2, "an empty resolution keeps the old set");
        set.update(&[addr(4), addr(5), addr(6)], 2);
        assert_eq!(set.all().len(), 2, "capped at max_endpoints_per_arm");
        assert_eq!(set.counts(), (2, 0));
    }

    #[test]
    fn a_retry_avoids_the_endpoint_it_comes_from_while_another_is_up() {
        let set = EndpointSet::new(&[addr(1), addr(2)], 64);
        for _ in 0..100 {
            assert_eq!(
                set.pick_avoiding(Some(addr(1))).map(|e| e.addr),
                Some(addr(2))
            );
        }
        let single = EndpointSet::new(&[addr(1)], 64);
        assert_eq!(
            single.pick_avoiding(Some(addr(1))).map(|e| e.addr),
            Some(addr(1))
        );
    }

    #[test]
    fn a_down_endpoint_gets_no_requests_while_another_is_up() {
        let set = EndpointSet::new(&[addr(1), addr(2)], 64);
        set.all()[0].observe(Err("refused".into()));
        for _ in 0..100 {
            assert_eq!(set.pick().map(|e| e.addr), Some(addr(2)));
        }
        let guard = set.all()[1].start();
        assert_eq!(set.all()[1].inflight(), 1);
        drop(guard);
        assert_eq!(set.all()[1].inflight(), 0);
    }
}
