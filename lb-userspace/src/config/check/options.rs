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

    /// A backend's `port`: only with `forwarding: nat` (otherwise the
    /// packet reaches the backend on the VIP's port).
    pub(super) fn backend_port(&self, f: &VipFile, port: &Field<Int<1, 65_535>>) -> Option<u16> {
        let p = port.get()?;
        if f.forwarding.get().map(|m| m.value) != Some(Forwarding::Nat) {
            let message = "a backend `port` needs `forwarding: nat`: in the other modes the \
                           packet reaches the backend unchanged, on the VIP's port"
                .to_string();
            self.report(&p.path, message);
        }
        Some(p.value.0 as u16)
    }

    /// A VIP's NAT settings: with `forwarding: nat`, its source addresses
    /// (one at least for each family of its backends, at most
    /// `NAT_ADDRS_PER_FAMILY` of each) and ports; without, neither.
    pub(super) fn nat(&self, f: &VipFile) -> Option<Nat> {
        let nat = f.forwarding.get().map(|m| m.value) == Some(Forwarding::Nat);
        if !nat {
            for (given, what) in [
                (
                    f.snat_addresses.get().map(|a| a.path.clone()),
                    "snat_addresses",
                ),
                (f.snat_ports.get().map(|a| a.path.clone()), "snat_ports"),
            ] {
                if let Some(path) = given {
                    self.report(&path, format!("`{what}` needs `forwarding: nat`"));
                }
            }
            return None;
        }
        let hint = "list the balancer's addresses NAT flows come from, e.g. \
                    `snat_addresses: [10.10.0.2]` (an address of this host the backends reach)";
        let list = self.req(
            f.forwarding
                .get()
                .map_or("", |m| m.path.as_str())
                .rsplit_once('.')
                .map_or("", |p| p.0),
            "snat_addresses",
            &f.snat_addresses,
            hint,
        );
        let addresses: Vec<IpAddr> = self.items(list).into_iter().map(|a| a.value.0).collect();
        let max = lb_common::NAT_ADDRS_PER_FAMILY as usize;
        for v6 in [false, true] {
            let n = addresses.iter().filter(|a| a.is_ipv6() == v6).count();
            if n > max {
                let message = format!(
                    "{n} IPv{} snat_addresses; at most {max} of each family",
                    if v6 { 6 } else { 4 }
                );
                self.report(list.map_or("", |l| l.path.as_str()), message);
            }
        }
        if let Some(list) = list.filter(|_| !addresses.is_empty()) {
            let backends = f
                .backends
                .get()
                .map(|b| self.items(Some(b)))
                .unwrap_or_default();
            for b in backends {
                let Some(a) = b.value.address.get() else {
                    continue;
                };
                if !addresses.iter().any(|s| s.is_ipv6() == a.value.0.is_ipv6()) {
                    let message = format!(
                        "backend {} is IPv{}, and snat_addresses has no address of that family",
                        a.value.0,
                        if a.value.0.is_ipv6() { 6 } else { 4 }
                    );
                    self.report(&list.path, message);
                }
            }
        }
        let ports = f
            .snat_ports
            .get()
            .map_or(lb_common::DEFAULT_NAT_PORTS, |p| (p.value.0, p.value.1));
        Some(Nat { addresses, ports })
    }

    /// No more stateless VIPs than `tables.max_stateless_vips`.
    pub(super) fn stateless_count(&self, vips: &[&At<VipFile>], max: u32) {
        let stateless: Vec<_> = vips
            .iter()
            .filter_map(|v| v.value.state.get())
            .filter(|s| s.value == VipState::Stateless)
            .collect();
        if let Some(s) = stateless.get(max as usize) {
            let message = format!(
                "{} VIPs are stateless, more than tables.max_stateless_vips ({max}); raise it \
                 (each takes 8 bytes per slot of tables.maglev_size)",
                stateless.len()
            );
            self.report(&s.path, message);
        }
    }

    /// A VIP's own `maglev_size`: within the room `tables.maglev_size`
    /// gives every VIP's table, and a slot for each of its backends.
    pub(super) fn table_sizes(&self, vips: &[&At<VipFile>], room: u32) {
        for v in vips {
            let backends = v.value.backends.get();
            let count = backends.map_or(0, |b| b.value.len());
            let Some(size) = v.value.maglev_size.get() else {
                // The VIP's table is the room's size.
                if let Some(b) = backends.filter(|_| count > room as usize) {
                    let message = format!(
                        "the VIP's {count} backends are more than the slots of its Maglev table \
                         (tables.maglev_size, {room}), and each needs a slot; raise \
                         tables.maglev_size (a restart: `lb stop`, then `lb run`)"
                    );
                    self.report(&b.path, message);
                }
                continue;
            };
            let n = size.value.0;
            if n > room {
                let message = format!(
                    "maglev_size {n} is larger than tables.maglev_size ({room}), the room every \
                     VIP's table has; give this VIP a smaller table, or raise \
                     tables.maglev_size (a restart: `lb stop`, then `lb run`)"
                );
                self.report(&size.path, message);
            }
            if (n as usize) < count {
                let message = format!(
                    "maglev_size {n} is smaller than the VIP's {count} backends, and each \
                     needs a slot; for an even spread give it about 100 slots per backend"
                );
                self.report(&size.path, message);
            }
        }
    }

    /// A VIP's `state`: stateless needs GUE (its header carries the
    /// previous backend), the Maglev scheduler (the same slot for every
    /// packet of a connection) and nothing that counts or remembers
    /// connections on the balancer.
    pub(super) fn stateless(&self, f: &VipFile) -> bool {
        let Some(s) = f.state.get().filter(|s| s.value == VipState::Stateless) else {
            return false;
        };
        let mode = f.forwarding.get().map(|m| m.value);
        if mode != Some(Forwarding::Gue) {
            let message = "state: stateless needs `forwarding: gue`: its GUE header carries the \
                           previous backend to the backend's `lb decap`"
                .to_string();
            self.report(&s.path, message);
        }
        let scheduler = f.scheduler.get().map(|m| m.value);
        if scheduler.is_some_and(|s| s != Scheduler::Maglev) {
            let message = "state: stateless takes only `scheduler: maglev`: every packet of a \
                           connection must hash to the same backend"
                .to_string();
            self.report(&s.path, message);
        }
        for (given, what) in [
            (f.persistence.get().map(|p| p.path.clone()), "persistence"),
            (
                f.max_connections.get().map(|p| p.path.clone()),
                "max_connections",
            ),
            (
                f.passive_health.get().map(|p| p.path.clone()),
                "passive_health",
            ),
        ] {
            if let Some(path) = given {
                let message = format!(
                    "`{what}` needs the balancer to keep connections; a stateless VIP keeps none"
                );
                self.report(&path, message);
            }
        }
        true
    }
}
