//! The weights a VIP's table is built from: the pool file's, ramped up
//! under `slow_start`, scaled by probe times under `least_response_time`.
use super::*;

/// `least_response_time`: a backend's weight is multiplied by the fastest
/// backend's smoothed probe time over its own, in sixteenths (so jitter
/// rarely changes the table), at least 1/16.
pub fn response_time_factor(rtt_ms: Option<f64>, fastest_ms: Option<f64>) -> u32 {
    match (rtt_ms, fastest_ms) {
        (Some(r), Some(f)) if r > 0.0 => ((16.0 * f / r).round() as u32).clamp(1, 16),
        _ => 16,
    }
}

/// The weight a backend has in its VIP's table now: during its VIP's
/// `slow_start` after it came up, a share of its weight growing linearly
/// from 1 (near zero) to all of it.
pub fn effective_weight(b: &RunningBackend, slow_start: Option<Duration>, now: Instant) -> u32 {
    match (b.up_since, slow_start) {
        (Some(t), Some(ss)) if now.duration_since(t) < ss && !ss.is_zero() => {
            let part = now.duration_since(t).as_secs_f64() / ss.as_secs_f64();
            ((f64::from(b.weight) * part) as u32).clamp(1, b.weight.max(1))
        }
        _ => b.weight,
    }
}

/// A backend's weight in its VIP's table now (`fastest`: the smallest
/// smoothed probe time among the VIP's backends taking new flows).
pub(super) fn table_weight(
    b: &RunningBackend,
    conf: &Vip,
    fastest: Option<f64>,
    now: Instant,
) -> u32 {
    let w = effective_weight(b, conf.slow_start, now);
    if conf.scheduler == crate::config::Scheduler::LeastResponseTime {
        // In sixteenths: the factor times the weight, at least 1.
        (w * response_time_factor(b.rtt_ms, fastest))
            .div_ceil(16)
            .max(1)
    } else {
        w
    }
}

impl<D: DataPlane> Controller<D> {
    /// Once a second: VIPs with a backend ramping up (`slow_start`) get
    /// their tables rebuilt with the weights of now; a ramp that is over
    /// ends. True when some table is due (then `flush`).
    pub fn ramp(&mut self, now: Instant) -> bool {
        let mut due = false;
        for (key, v) in self.vips.iter_mut() {
            let ss = v.conf.slow_start;
            let mut ramping = false;
            for b in v.backends.values_mut() {
                if let Some(t) = b.up_since {
                    ramping = true;
                    if ss.is_none_or(|ss| now.duration_since(t) >= ss) {
                        b.up_since = None;
                    }
                }
            }
            // Ramping, or weighted by response times (a table is written
            // only when the weights of now differ from the table's).
            if (ramping && ss.is_some())
                || v.conf.scheduler == crate::config::Scheduler::LeastResponseTime
            {
                self.dirty.insert(*key);
                due = true;
            }
        }
        due
    }
}
