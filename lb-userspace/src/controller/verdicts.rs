//! Health verdicts: recorded as they come, written in batches (one table
//! per VIP), with panic mode when too few backends pass their checks.
use super::*;

impl<D: DataPlane> Controller<D> {
    /// Records a probe result. A health change is written by the next
    /// [`Controller::flush`], together with every other verdict recorded by
    /// then: one table per VIP however many of its backends changed.
    /// Returns whether the health changed.
    pub fn probe_result(
        &mut self,
        backend: &BackendRef,
        outcome: &ProbeOutcome,
        health: Health,
    ) -> Result<bool, ControlError> {
        let (key, addr) = backend;
        let Some(v) = self.vips.get_mut(key) else {
            return Ok(false);
        };
        let Some(b) = v.backends.get_mut(addr) else {
            return Ok(false);
        };
        b.last_probe = Some(ProbeView {
            ok: outcome.ok,
            detail: outcome.detail.clone(),
            latency_ms: outcome.latency.as_secs_f64() * 1000.0,
        });
        if outcome.ok {
            let ms = outcome.latency.as_secs_f64() * 1000.0;
            b.rtt_ms = Some(smooth(b.rtt_ms, ms));
        }
        if b.probe.is_none() {
            return Ok(false);
        }
        let new = match health {
            Health::Up => HealthView::Up,
            Health::Down => HealthView::Down,
        };
        if b.health == new {
            return Ok(false);
        }
        // Recovered: ramps up again under `slow_start`.
        if b.health == HealthView::Down && new == HealthView::Up {
            b.up_since = Some(Instant::now());
        }
        b.health = new;
        self.dirty.insert(*key);
        Ok(true)
    }

    /// Writes the health verdicts recorded since the last flush: per VIP,
    /// the flags of backends coming up, then one table, then the flags of
    /// backends going down (so no new flow is scheduled to a backend whose
    /// flag says unhealthy, nor sent to one the data path would refuse).
    /// A VIP that flipped less than `FLIP_GRACE` ago waits (nothing
    /// blocks): the answer is how long until the next flush can write it.
    pub fn flush(&mut self) -> Result<Option<Duration>, ControlError> {
        self.flush_within(Duration::MAX)
    }

    /// [`Controller::flush`], stopping at the end of the VIP that passes
    /// `budget` (at least one VIP is written): the VIPs left wait for the
    /// next call, due at once (`Some(ZERO)`), so that the caller's other
    /// work (an `lb status` answer) runs between when thousands of tables
    /// change together.
    pub fn flush_within(&mut self, budget: Duration) -> Result<Option<Duration>, ControlError> {
        let started = Instant::now();
        let mut wait: Option<Duration> = None;
        let mut written = 0;
        let mut keys = std::mem::take(&mut self.dirty).into_iter();
        while let Some(key) = keys.next() {
            if written > 0 && started.elapsed() >= budget {
                // The rest waits for the next call, due at once.
                self.dirty.insert(key);
                self.dirty.extend(keys);
                return Ok(Some(Duration::ZERO));
            }
            let Some(v) = self.vips.get(&key) else {
                continue;
            };
            let since = v.last_flip.map_or(FLIP_GRACE, |t| t.elapsed());
            if since < FLIP_GRACE {
                self.dirty.insert(key);
                let left = FLIP_GRACE - since;
                wait = Some(wait.map_or(left, |w| w.min(left)));
                continue;
            }
            if let Err(e) = self.flush_vip(&key) {
                self.dirty.insert(key);
                return Err(e);
            }
            written += 1;
        }
        Ok(wait)
    }

    /// Brings one VIP's slots and table in line with its backends' states:
    /// flags that let a backend take flows first, then the table, then
    /// flags that stop it (so the data path never finds a backend in the
    /// table that it would refuse, nor one out of it still marked usable).
    /// Returns whether a table was written.
    pub(super) fn flush_vip(&mut self, key: &VipKey) -> Result<bool, ControlError> {
        self.update_panic(key);
        let v = &self.vips[key];
        let (stop, start): (Vec<_>, Vec<_>) = v
            .backends
            .values()
            .filter(|b| kernel_flags(b, v.panic) != b.flags_written)
            .map(|b| {
                let stops = (BACKEND_F_DOWN | BACKEND_F_UNHEALTHY) & kernel_flags(b, v.panic);
                (b.address, stops & !b.flags_written != 0)
            })
            .partition(|(_, stops)| *stops);
        for (addr, _) in start {
            self.write_backend(key, addr)?;
        }
        let written = self.rebuild(key)?;
        for (addr, _) in stop {
            self.write_backend(key, addr)?;
        }
        Ok(written)
    }

    /// Enters or leaves panic mode as the VIP's health says, and logs it.
    pub(super) fn update_panic(&mut self, key: &VipKey) {
        let v = self.vips.get_mut(key).expect("known VIP");
        let panic = v.below_panic_threshold();
        if panic == v.panic {
            return;
        }
        v.panic = panic;
        let healthy = v
            .backends
            .values()
            .filter(|b| b.state == BackendState::Active && b.health != HealthView::Down)
            .count();
        let active = v
            .backends
            .values()
            .filter(|b| b.state == BackendState::Active)
            .count();
        if panic {
            log::warn!(
                "VIP `{}`: {healthy} of {active} active backends pass their checks, under its \
                 panic threshold of {}%: sending new flows to all {active} as if healthy",
                v.conf.name,
                v.conf.panic_threshold
            );
        } else {
            log::info!(
                "VIP `{}`: {healthy} of {active} active backends pass their checks again; \
                 panic mode over",
                v.conf.name
            );
        }
    }
}

/// An EWMA step: `old` moved a quarter of the way to `sample`.
fn smooth(old: Option<f64>, sample: f64) -> f64 {
    old.map_or(sample, |old| old + (sample - old) / 4.0)
}

impl<D: DataPlane> Controller<D> {
    /// A second's average handshake time of a NAT backend (from its
    /// clients' SYNs to its SYN-ACKs, as the data path saw them): smoothed
    /// into its handshake time, and into the response time that
    /// `least_response_time` weighs, with its probes'.
    pub fn handshake_sample(&mut self, backend: &BackendRef, ms: f64) {
        let (key, addr) = backend;
        if let Some(b) = self
            .vips
            .get_mut(key)
            .and_then(|v| v.backends.get_mut(addr))
        {
            b.handshake_ms = Some(smooth(b.handshake_ms, ms));
            b.rtt_ms = Some(smooth(b.rtt_ms, ms));
        }
    }
}
