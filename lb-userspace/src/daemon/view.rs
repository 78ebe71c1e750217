//! What `lb status` shows: the daemon's state and the data path's
//! counters, with new-flow rates sampled every second.
use super::*;

/// New flows per second of a set of counters (VIPs, or backends), by id.
#[derive(Default)]
struct Rate {
    last: HashMap<u32, u64>,
    per_s: HashMap<u32, f64>,
}

impl Rate {
    /// Records counter `id` at `value`, `dt` seconds after the last sample.
    fn sample(&mut self, id: u32, value: u64, dt: f64) {
        let prev = self.last.insert(id, value).unwrap_or(value);
        self.per_s
            .insert(id, value.saturating_sub(prev) as f64 / dt);
    }

    fn get(&self, id: u32) -> f64 {
        *self.per_s.get(&id).unwrap_or(&0.0)
    }
}

pub(super) struct Rates {
    at: Instant,
    vip: Rate,
    backend: Rate,
}

impl Rates {
    pub(super) fn new() -> Self {
        Rates {
            at: Instant::now(),
            vip: Rate::default(),
            backend: Rate::default(),
        }
    }
}

impl Daemon {
    pub(super) fn sample_rates(&mut self) {
        let dt = self.rates.at.elapsed().as_secs_f64().max(0.001);
        self.rates.at = Instant::now();
        for v in self.ctl.vips.values() {
            if let Ok(s) = self.ctl.dp.vip_stats(v.id) {
                self.rates.vip.sample(v.id, s.new_flows, dt);
            }
            for b in v.backends.values() {
                if let Ok(s) = self.ctl.dp.backend_stats(b.id) {
                    self.rates.backend.sample(b.id, s.new_flows, dt);
                }
            }
        }
    }

    pub(super) fn status(&self) -> Status {
        let (flows_at, flows) = self.flows.lock().expect("flow counts").clone();
        let counters = self
            .ctl
            .dp
            .counters()
            .map(|c| {
                c.iter()
                    .enumerate()
                    .filter(|(_, v)| **v > 0)
                    .map(|(i, v)| (lb_common::counter::NAMES[i].to_string(), *v))
                    .collect()
            })
            .unwrap_or_default();
        let vips = self
            .ctl
            .vips
            .values()
            .map(|v| {
                let s = self.ctl.dp.vip_stats(v.id).unwrap_or_default();
                let counts = v.counts_connections();
                VipStatus {
                    name: v.conf.name.clone(),
                    address: v.conf.address.to_string(),
                    port: v.conf.port,
                    protocol: v.conf.protocol.as_str().to_string(),
                    state: match (v.panic, v.serving() > 0) {
                        (true, _) => "panic",
                        (false, true) => "up",
                        (false, false) => "down",
                    }
                    .into(),
                    packets: s.packets,
                    bytes: s.bytes,
                    new_flows: s.new_flows,
                    new_flows_per_s: self.rates.vip.get(v.id),
                    drops: s.drops,
                    backends: v
                        .backends
                        .values()
                        .map(|b| {
                            let bs = self.ctl.dp.backend_stats(b.id).unwrap_or_default();
                            BackendStatus {
                                address: b.address.to_string(),
                                weight: b.weight,
                                state: match b.state {
                                    BackendState::Active => "active",
                                    BackendState::Drain => "drain",
                                    BackendState::Disabled => "disabled",
                                }
                                .into(),
                                health: match b.health {
                                    HealthView::Up => "up",
                                    HealthView::Down => "down",
                                    HealthView::Unchecked => "unchecked",
                                }
                                .into(),
                                last_probe: b.last_probe.as_ref().map(|p| p.detail.clone()),
                                latency_ms: b.last_probe.as_ref().map(|p| p.latency_ms),
                                active_flows: *flows.get(&b.id).unwrap_or(&0),
                                connections: counts
                                    .then(|| self.ctl.dp.load(b.id).unwrap_or_default()),
                                packets: bs.packets,
                                bytes: bs.bytes,
                                new_flows: bs.new_flows,
                                syn_retransmits: bs.syn_retransmits,
                                handshake_ms: b.handshake_ms,
                                refused: bs.refused,
                                new_flows_per_s: self.rates.backend.get(b.id),
                            }
                        })
                        .chain(
                            self.ctl
                                .removed_backends(v.id)
                                .into_iter()
                                .map(|(addr, id)| {
                                    let bs = self.ctl.dp.backend_stats(id).unwrap_or_default();
                                    BackendStatus {
                                        address: addr.to_string(),
                                        weight: 0,
                                        state: "removed".into(),
                                        health: "-".into(),
                                        last_probe: None,
                                        latency_ms: None,
                                        active_flows: *flows.get(&id).unwrap_or(&0),
                                        connections: counts
                                            .then(|| self.ctl.dp.load(id).unwrap_or_default()),
                                        packets: bs.packets,
                                        bytes: bs.bytes,
                                        new_flows: bs.new_flows,
                                        syn_retransmits: bs.syn_retransmits,
                                        handshake_ms: None,
                                        refused: bs.refused,
                                        new_flows_per_s: 0.0,
                                    }
                                }),
                        )
                        .collect(),
                }
            })
            .collect();
        Status {
            instance: self.pool.instance.clone(),
            config: self.config_path.display().to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            flows_age_s: flows_at.map(|t| t.elapsed().as_secs()),
            vips,
            counters,
        }
    }
}
