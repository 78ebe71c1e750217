//! What `lb status` shows: the daemon's state and the data path's
//! counters, with new-flow rates over the time since the previous read
//! (at least a second): read when asked, so a daemon nobody asks reads no
//! statistics (at 65 000 backend slots, sampling them every second cost
//! 16% of a CPU at rest).
use super::*;

/// New flows per second of a set of counters (VIPs, or backends), by id:
/// the counter's last reading that is at least `MIN_WINDOW` old, and the
/// rate since it.
#[derive(Default)]
struct Rate {
    /// Per id: the last reading kept, when, and the rate up to it.
    last: HashMap<u32, (u64, Instant, f64)>,
}

/// The shortest span a rate is measured over.
const MIN_WINDOW: Duration = Duration::from_secs(1);

impl Rate {
    /// Counter `id` reads `value` now: its rate, updated when its last
    /// reading is at least `MIN_WINDOW` old (the first reading: 0).
    fn observe(&mut self, id: u32, value: u64, now: Instant) -> f64 {
        // One lookup: at 512 000 backends listed, two were a sixth of the
        // status read.
        let (prev, at, rate) = self.last.entry(id).or_insert((value, now, 0.0));
        let dt = now.duration_since(*at);
        if dt >= MIN_WINDOW {
            *rate = value.saturating_sub(*prev) as f64 / dt.as_secs_f64();
            (*prev, *at) = (value, now);
        }
        *rate
    }
}

/// The VIPs' and backends' rates, kept between status reads.
#[derive(Default)]
pub(super) struct Rates {
    vip: Rate,
    backend: Rate,
}

impl Rates {
    pub(super) fn new() -> std::sync::Mutex<Self> {
        std::sync::Mutex::new(Rates::default())
    }
}

impl Daemon {
    /// Answers a status request for `scope` (read here, on the main loop;
    /// written out as JSON off it: every backend listed at 512 000 is 130
    /// MB of JSON, and health results would wait for it).
    pub(super) fn answer_status(&self, scope: Scope, reply: tokio::sync::oneshot::Sender<String>) {
        let t = Instant::now();
        let status = self.status(&scope);
        let read = t.elapsed();
        if let (Scope::Vip(name), true) = (&scope, status.vips.is_empty()) {
            let e = format!("no VIP named `{name}` in {}", self.config_path.display());
            let _ = reply.send(serde_json::json!({ "error": e }).to_string());
            return;
        }
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            match serde_json::to_string(&status) {
                Ok(answer) => {
                    log::debug!(
                        "status: read in {read:?}, {} bytes of JSON in {:?}",
                        answer.len(),
                        t.elapsed()
                    );
                    let _ = reply.send(answer);
                }
                Err(e) => log::error!("writing the status answer: {e}"),
            }
        });
    }

    /// The status answer for `scope`: every VIP's counts and, where the
    /// scope lists them, its backends.
    pub(super) fn status(&self, scope: &Scope) -> Status {
        let now = Instant::now();
        // One lock for the whole read (a guard held in an expression while
        // a closure in it locks again would deadlock).
        let mut rates = self.rates.lock().expect("rates");
        let counted = self.flows.lock().expect("flow counts");
        let (flows_at, flows) = (&counted.at, &counted.per_backend);
        let removed = self.ctl.removed_backends();
        let removed_of = |id: u32| removed.get(&id).map_or(&[][..], Vec::as_slice);
        let rows: usize = self
            .ctl
            .vips
            .values()
            .map(|v| v.backends.len() + removed_of(v.id).len())
            .sum();
        let shown: Vec<_> = self
            .ctl
            .vips
            .values()
            .filter_map(|v| {
                let (show, list) = scope.shows(&v.conf.name, rows);
                show.then_some((v, list))
            })
            .collect();
        // Many of the slots listed: one batch read of every slot's
        // statistics; a few: one lookup each (a lookup, 1.3 µs, costs
        // about what the batch read costs for 6 slots: one VIP of 1000
        // listed at 512 000 slots took 133 ms by the batch).
        let listed: usize = shown
            .iter()
            .filter(|(_, list)| *list)
            .map(|(v, _)| v.backends.len() + removed_of(v.id).len())
            .sum();
        let all = (listed * 6 > rows).then(|| self.ctl.dp.all_backend_stats().unwrap_or_default());
        let stats_of = |id: u32| match &all {
            Some(all) => all.get(id as usize).copied().unwrap_or_default(),
            None => self.ctl.dp.backend_stats(id).unwrap_or_default(),
        };
        let flows_of = |id: u32| *flows.get(&id).unwrap_or(&0);
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
        let vips = shown
            .into_iter()
            .map(|(v, list)| {
                let s = self.ctl.dp.vip_stats(v.id).unwrap_or_default();
                let counts_connections = v.counts_connections();
                let connections =
                    |id| counts_connections.then(|| self.ctl.dp.load(id).unwrap_or_default());
                let removed = removed_of(v.id);
                let mut counts = BackendCounts {
                    backends: v.backends.len() as u64,
                    removed: removed.len() as u64,
                    ..Default::default()
                };
                for b in v.backends.values() {
                    match b.health {
                        HealthView::Up => counts.up += 1,
                        HealthView::Down => counts.down += 1,
                        HealthView::Unchecked => counts.unchecked += 1,
                    }
                    match b.state {
                        BackendState::Active => {}
                        BackendState::Drain => counts.drain += 1,
                        BackendState::Disabled => counts.disabled += 1,
                    }
                    counts.active_flows += flows_of(b.id);
                    counts.weight += u64::from(b.weight);
                }
                counts.active_flows += removed.iter().map(|(_, id)| flows_of(*id)).sum::<u64>();
                let backends = if !list {
                    Vec::new()
                } else {
                    v.backends
                        .values()
                        .map(|b| {
                            let bs = stats_of(b.id);
                            let probe = self.last_probe(b);
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
                                last_probe: probe.map(|p| p.detail.clone()),
                                latency_ms: probe.map(|p| p.latency_ms),
                                active_flows: flows_of(b.id),
                                connections: connections(b.id),
                                packets: bs.packets,
                                bytes: bs.bytes,
                                new_flows: bs.new_flows,
                                syn_retransmits: bs.syn_retransmits,
                                handshake_ms: b.handshake_ms,
                                refused: bs.refused,
                                new_flows_per_s: rates.backend.observe(b.id, bs.new_flows, now),
                            }
                        })
                        .chain(removed.iter().map(|&(addr, id)| {
                            let bs = stats_of(id);
                            BackendStatus {
                                address: addr.to_string(),
                                weight: 0,
                                state: "removed".into(),
                                health: "-".into(),
                                last_probe: None,
                                latency_ms: None,
                                active_flows: flows_of(id),
                                connections: connections(id),
                                packets: bs.packets,
                                bytes: bs.bytes,
                                new_flows: bs.new_flows,
                                syn_retransmits: bs.syn_retransmits,
                                handshake_ms: None,
                                refused: bs.refused,
                                new_flows_per_s: 0.0,
                            }
                        }))
                        .collect()
                };
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
                    new_flows_per_s: rates.vip.observe(v.id, s.new_flows, now),
                    drops: s.drops,
                    counts,
                    listed: list,
                    backends,
                    table_slots: v.table.as_ref().map_or(0, |t| t.len() as u32),
                }
            })
            .collect();
        Status {
            instance: self.pool.instance.clone(),
            config: self.config_path.display().to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            flows_age_s: flows_at.map(|t| t.elapsed().as_secs()),
            flow_table: counted.table,
            vips,
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_measured_since_the_last_reading_a_second_old_or_more() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(r.observe(1, 100, t0), 0.0, "first reading");
        assert_eq!(r.observe(1, 150, at(500)), 0.0, "too soon: kept");
        assert_eq!(r.observe(1, 300, at(2000)), 100.0, "(300 - 100) / 2 s");
        assert_eq!(r.observe(1, 400, at(2500)), 100.0, "too soon: kept");
        assert_eq!(r.observe(1, 400, at(4000)), 50.0, "(400 - 300) / 2 s");
        assert_eq!(r.observe(2, 7, at(4000)), 0.0, "another id: its own");
    }
}
