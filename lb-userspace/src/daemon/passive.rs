//! Passive health (`passive_health` of a VIP): a backend whose clients
//! send their SYNs again (no SYN-ACK came back, counted by the data path
//! per backend) for too many of its new connections is taken out as a
//! failed probe would. It stays out for at least the window; then `rise`
//! passing probes in a row bring it back.
use super::*;
use std::collections::VecDeque;

/// A backend taken out by passive health.
pub(super) struct Hold {
    /// Out at least until then.
    until: Instant,
    /// Passing probes in a row since it was taken out.
    passed: u32,
}

/// Per backend of a VIP with passive health: one sample a second of its
/// (new flows, SYN retransmissions) counters; and the backends taken out.
#[derive(Default)]
pub(super) struct Passive {
    samples: HashMap<BackendRef, VecDeque<(Instant, u64, u64)>>,
    pub(super) holds: HashMap<BackendRef, Hold>,
}

/// Whether `retransmits` over a window, against the new connections of
/// that window (a retransmitted SYN is no new flow), trip the check.
pub(super) fn trips(p: &config::PassiveHealth, new_flows: u64, retransmits: u64) -> bool {
    new_flows >= u64::from(p.min_samples)
        && retransmits as f64 >= p.failure_ratio * new_flows as f64
}

impl Daemon {
    /// Once a second: samples the counters of every backend of a VIP with
    /// passive health and takes out those over their VIP's ratio; true when
    /// it took one out (its verdict is then to be written).
    pub(super) fn check_passive_tripped(&mut self) -> bool {
        let now = Instant::now();
        let mut tripped = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stats: Option<Vec<lb_common::BackendStats>> = None;
        for v in self.ctl.vips.values() {
            let Some(p) = &v.conf.passive_health else {
                continue;
            };
            let key = v.key();
            // Every slot's statistics in one read, once a VIP needs them.
            if stats.is_none() {
                stats = self.ctl.dp.all_backend_stats().ok();
            }
            for b in v.backends.values() {
                let r: BackendRef = (key, b.address);
                seen.insert(r);
                let Some(&s) = stats.as_ref().and_then(|all| all.get(b.id as usize)) else {
                    continue;
                };
                let q = self.passive.samples.entry(r).or_default();
                // Counters that went down (a slot given anew): start over.
                if q.back()
                    .is_some_and(|l| s.new_flows < l.1 || s.syn_retransmits + s.refused < l.2)
                {
                    q.clear();
                }
                // Failures: SYNs sent again, and (NAT) SYNs refused.
                q.push_back((now, s.new_flows, s.syn_retransmits + s.refused));
                while q.front().is_some_and(|(t, _, _)| now - *t > p.window) {
                    q.pop_front();
                }
                let (Some(first), Some(last)) = (q.front(), q.back()) else {
                    continue;
                };
                let (new, retx) = (
                    last.1.saturating_sub(first.1),
                    last.2.saturating_sub(first.2),
                );
                let eligible = b.probe.is_some()
                    && b.health == HealthView::Up
                    && !self.passive.holds.contains_key(&r);
                if eligible && trips(p, new, retx) {
                    tripped.push((r, v.conf.name.clone(), new, retx, p.window));
                }
            }
        }
        self.passive.samples.retain(|r, _| seen.contains(r));
        self.passive.holds.retain(|r, _| seen.contains(r));
        let any = !tripped.is_empty();
        for (r, vip, new, retx, window) in tripped {
            let detail = format!(
                "passive health: {retx} SYN retransmissions for {new} new connections in {}",
                humantime::format_duration(window)
            );
            log::warn!(
                "backend {} of VIP `{vip}` is down: {detail}; back after {} and passing probes",
                r.1,
                humantime::format_duration(window)
            );
            self.metrics.passive_trip(&vip, &r.1.to_string());
            self.metrics.transition(&vip, &r.1.to_string(), false);
            let outcome = crate::health::ProbeOutcome {
                ok: false,
                detail,
                latency: Duration::ZERO,
            };
            if let Err(e) = self.ctl.probe_result(&r, &outcome, Health::Down) {
                log::error!("applying a passive-health verdict: {e}");
            }
            self.passive.holds.insert(
                r,
                Hold {
                    until: now + window,
                    passed: 0,
                },
            );
            // Its samples start again when it is back.
            self.passive.samples.remove(&r);
        }
        any
    }

    /// A probe's verdict for a backend passive health took out: kept down
    /// until the hold is over and `rise` probes in a row passed. `None`:
    /// not held, the probe's verdict stands.
    pub(super) fn held_verdict(
        &mut self,
        r: &BackendRef,
        ev: &HealthEvent<ProbeSpec>,
    ) -> Option<Health> {
        let hold = self.passive.holds.get_mut(r)?;
        hold.passed = if ev.outcome.ok { hold.passed + 1 } else { 0 };
        if Instant::now() >= hold.until && hold.passed >= ev.backend.rise {
            self.passive.holds.remove(r);
            return Some(Health::Up);
        }
        Some(Health::Down)
    }
}

impl Daemon {
    /// Once a second: each NAT backend's handshakes since the last sample
    /// (count and summed time, from the data path), their average handed
    /// to the controller (`handshake_sample`).
    pub(super) fn sample_handshakes(&mut self) {
        let mut samples = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stats: Option<Vec<lb_common::BackendStats>> = None;
        for v in self.ctl.vips.values() {
            if v.conf.nat.is_none() {
                continue;
            }
            if stats.is_none() {
                stats = self.ctl.dp.all_backend_stats().ok();
            }
            for b in v.backends.values() {
                let r: BackendRef = (v.key(), b.address);
                let Some(&s) = stats.as_ref().and_then(|all| all.get(b.id as usize)) else {
                    continue;
                };
                seen.insert(r);
                let now = (s.handshakes, s.handshake_ns);
                let last = self.handshakes.insert(r, now);
                if let Some((n0, ns0)) = last.filter(|l| l.0 <= now.0 && l.1 <= now.1) {
                    if now.0 > n0 {
                        let ms = (now.1 - ns0) as f64 / (now.0 - n0) as f64 / 1e6;
                        samples.push((r, ms));
                    }
                }
            }
        }
        self.handshakes.retain(|r, _| seen.contains(r));
        for (r, ms) in samples {
            self.ctl.handshake_sample(&r, ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_on_the_ratio_once_there_are_enough_samples() {
        let p = config::PassiveHealth {
            window: Duration::from_secs(10),
            min_samples: 20,
            failure_ratio: 0.5,
        };
        assert!(!trips(&p, 19, 19), "19 connections: too few samples");
        assert!(trips(&p, 20, 20), "20 connections, each retransmitted");
        assert!(trips(&p, 20, 10), "20 connections, half retransmitted");
        assert!(!trips(&p, 20, 9), "20 connections, 9 retransmissions");
        assert!(!trips(&p, 0, 0));
        assert!(!trips(&p, 1000, 0));
    }
}
