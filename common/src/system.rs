//! Per-process CPU and memory gauges (`system_cpu_percent`, `system_memory_percent`).
//!
//! The gauges describe *this process*, not the host: two arms on one machine must be
//! comparable side by side. A background sampler refreshes them so a scrape never
//! reads a stale value; `/api/health` refreshes them too.

use prometheus::Gauge;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Samples this process's CPU and resident memory into two gauges.
pub struct SystemSampler {
    system: Mutex<System>,
    pid: Option<Pid>,
    cpu: Gauge,
    memory: Gauge,
}

impl SystemSampler {
    /// Creates a sampler writing to `cpu` (percent of one core) and `memory` (percent of
    /// host memory), and takes a first sample.
    pub fn new(cpu: Gauge, memory: Gauge) -> Arc<Self> {
        let mut system = System::new();
        system.refresh_memory();
        let sampler = Arc::new(SystemSampler {
            system: Mutex::new(system),
            pid: sysinfo::get_current_pid().ok(),
            cpu,
            memory,
        });
        sampler.refresh();
        sampler
    }

    /// Takes one sample now. CPU usage is measured since the previous sample.
    pub fn refresh(&self) {
        let Some(pid) = self.pid else { return };
        let Ok(mut system) = self.system.lock() else {
            return;
        };
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let total = system.total_memory();
        if let Some(process) = system.process(pid) {
            self.cpu.set(f64::from(process.cpu_usage()));
            if total > 0 {
                self.memory
                    .set(process.memory() as f64 * 100.0 / total as f64);
            }
        }
    }

    /// Refreshes the gauges every `interval` until the returned task is aborted.
    pub fn spawn(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let sampler = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let s = Arc::clone(&sampler);
                // sysinfo reads /proc synchronously.
                let _ = tokio::task::spawn_blocking(move || s.refresh()).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_gauge_reads_this_process() {
        let cpu = Gauge::new("c", "c").unwrap_or_else(|e| panic!("{e}"));
        let mem = Gauge::new("m", "m").unwrap_or_else(|e| panic!("{e}"));
        let sampler = SystemSampler::new(cpu.clone(), mem.clone());
        sampler.refresh();
        assert!(mem.get() > 0.0 && mem.get() < 100.0, "{}", mem.get());
        assert!(cpu.get() >= 0.0);
    }
}
