//! The checks of a VIP's optional settings: slow start, passive health,
//! persistence and the scheduler's limits.
use std::time::Duration;

use super::*;

impl Check<'_> {
    /// A VIP's `slow_start`: 1s to 1h.
    pub(super) fn slow_start(&self, f: &VipFile) -> Option<Duration> {
        let s = f.slow_start.get()?;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&s.value.0) {
            let message = format!(
                "slow_start {} is out of range; use 1s to 1h",
                humantime::format_duration(s.value.0)
            );
            self.report(&s.path, message);
        }
        Some(s.value.0)
    }

    /// A VIP's `passive_health`, when given: a window the data path's
    /// per-second samples can measure, and an active check to bring a
    /// backend back.
    pub(super) fn passive(&self, f: &VipFile) -> Option<PassiveHealth> {
        let p = f.passive_health.get()?;
        let window = p.value.window.or(Dur(DEFAULT_PASSIVE_WINDOW)).0;
        if let Some(w) = p.value.window.get() {
            if !PASSIVE_WINDOW_RANGE.contains(&w.value.0) {
                let message = format!(
                    "passive_health window {} is out of range; use 2s to 10m (the data path's \
                     counters are read once a second)",
                    humantime::format_duration(w.value.0)
                );
                self.report(&w.path, message);
            }
        }
        if f.health_check.get().is_some_and(|h| {
            h.value
                .kind
                .get()
                .is_some_and(|k| matches!(k.value, CheckKind::None))
        }) {
            let message = "passive_health needs an active health check to bring a backend \
                           back; set health_check.kind (tcp, http, udp or exec)"
                .to_string();
            self.report(&p.path, message);
        }
        Some(PassiveHealth {
            window,
            min_samples: p.value.min_samples.or(Int(DEFAULT_PASSIVE_MIN_SAMPLES)).0,
            failure_ratio: p.value.failure_ratio.or(Ratio(DEFAULT_PASSIVE_RATIO)).0,
        })
    }

    /// A VIP's `persistence`, when given: its timeout in range, and the
    /// client prefix it shares with `source_hash`.
    pub(super) fn persistence(&self, f: &VipFile) -> Option<Persistence> {
        let p = f.persistence.get()?;
        let timeout = p.value.timeout.or(Dur(DEFAULT_PERSISTENCE_TIMEOUT)).0;
        if let Some(t) = p.value.timeout.get() {
            if !PERSISTENCE_TIMEOUT_RANGE.contains(&t.value.0) {
                let message = format!(
                    "persistence timeout {} is out of range; use 1s to 24h",
                    humantime::format_duration(t.value.0)
                );
                self.report(&t.path, message);
            }
        }
        let p4 = p.value.prefix_v4.or(Int(32)).0 as u8;
        let p6 = p.value.prefix_v6.or(Int(128)).0 as u8;
        // The data path keeps one client prefix per VIP.
        if f.scheduler.get().map(|s| s.value) == Some(Scheduler::SourceHash) {
            let s4 = f.source_prefix_v4.or(Int(32)).0 as u8;
            let s6 = f.source_prefix_v6.or(Int(128)).0 as u8;
            if (s4, s6) != (p4, p6) {
                let message = format!(
                    "persistence prefixes /{p4} and /{p6} differ from source_prefix_v4 /{s4} \
                     and source_prefix_v6 /{s6}; a VIP has one client prefix, so give the same \
                     ones"
                );
                self.report(&p.path, message);
            }
        }
        Some(Persistence {
            timeout,
            prefix_v4: p4,
            prefix_v6: p6,
        })
    }

    /// `least_connections_exact` looks at every backend for each new flow:
    /// at most `MAX_EXACT_BACKENDS` of them.
    pub(super) fn exact_backends(&self, f: &VipFile) {
        let (Some(s), Some(b)) = (f.scheduler.get(), f.backends.get()) else {
            return;
        };
        let max = lb_common::MAX_EXACT_BACKENDS as usize;
        if s.value == Scheduler::LeastConnectionsExact && b.value.len() > max {
            let message = format!(
                "least_connections_exact takes at most {max} backends ({} given): it looks at \
                 each one for every new flow; use least_connections",
                b.value.len()
            );
            self.report(&s.path, message);
        }
    }
}
