//! The one writer of the maps: turns the pool file, health verdicts and
//! drains into VIPs, backend slots and Maglev tables, and writes only what
//! changed. Pure logic over the [`DataPlane`] trait.
use crate::config::{BackendState, Forwarding, Pool, Protocol, Vip};
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::health::{Health, ProbeOutcome, ProbeSpec};
use crate::maglev::{self, MaglevBackend};
use lb_common::{
    AddrKey, Backend, BackendLimit, Config, VipInfo, VipKey, ADDR_F_ANY_PORT, ADDR_F_VIP,
    BACKEND_F_DOWN, BACKEND_F_DSR_L2, BACKEND_F_GUE, BACKEND_F_NAT, BACKEND_F_UNHEALTHY,
    BACKEND_F_USED, CONFIG_F_ANY_PORT, CONFIG_F_GATEWAY_MAC, CONFIG_F_SRC_V4, CONFIG_F_SRC_V6,
    VIP_F_COUNT,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A buffer that packets stopped reading is rewritten no sooner than this,
/// so a packet that read the old `active_ring` just before the flip never
/// sees its table change under it.
pub const FLIP_GRACE: Duration = Duration::from_millis(5);

/// Identifies a backend of a VIP: (VIP, backend address).
pub type BackendRef = (VipKey, IpAddr);

mod chains;
mod kernel_config;
mod report;
mod slots;
mod tables;
mod verdicts;
mod weights;
pub use kernel_config::kernel_config;
pub use report::ApplyReport;
pub use tables::maglev_key;
use tables::TableKind;
pub use weights::{effective_weight, response_time_factor};

#[derive(Clone, Debug)]
pub struct RunningBackend {
    pub id: u32,
    pub address: IpAddr,
    pub weight: u32,
    pub state: BackendState,
    pub health: HealthView,
    pub last_probe: Option<ProbeView>,
    pub probe: Option<ProbeSpec>,
    /// The flags last written to its slot (`kernel_flags` then).
    flags_written: u8,
    /// When it came up (added to a running VIP, or recovered), while its
    /// VIP's `slow_start` ramps its weight.
    pub up_since: Option<Instant>,
    /// Smoothed round-trip time of its passing probes, in ms (EWMA, 1/4
    /// for each new one), for `least_response_time`.
    pub rtt_ms: Option<f64>,
    /// Its `max_connections` (its own, or its VIP's).
    pub max_connections: Option<u32>,
    /// Its VIP's forwarding mode, as slot flags (`BACKEND_F_DSR_L2`,
    /// `BACKEND_F_GUE`, `BACKEND_F_NAT`).
    mode_flags: u8,
    /// NAT: its port, when not the VIP's.
    pub port: Option<u16>,
    /// NAT: smoothed time from a client's SYN to the backend's SYN-ACK,
    /// in ms (EWMA, 1/4 for each second's average).
    pub handshake_ms: Option<f64>,
    /// What its `LIMITS` entry holds, as last written by this daemon.
    limit_written: Option<BackendLimit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthView {
    Up,
    Down,
    /// No health check configured.
    Unchecked,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeView {
    pub ok: bool,
    pub detail: String,
    pub latency_ms: f64,
}

#[derive(Clone, Debug)]
pub struct RunningVip {
    pub id: u32,
    pub conf: Vip,
    pub active_ring: u8,
    /// What the active buffer holds (None until first written by us).
    pub table: Option<Vec<u32>>,
    /// The Maglev input `table` was built from: a table is rebuilt only
    /// when its input changes.
    table_input: Vec<MaglevBackend>,
    /// Too few backends pass their checks: every active one takes new
    /// flows (see `Vip::panic_threshold`).
    pub panic: bool,
    /// What `VIPS` holds for this VIP, as last written by this daemon.
    info_written: Option<VipInfo>,
    /// The NAT source addresses last written (`NAT_ADDRS`).
    nat_written: Option<Vec<IpAddr>>,
    /// What the table holds: a Maglev table, or a sequence of `seq_len`
    /// slots (round robin's, or every backend once for exact least
    /// connections).
    table_kind: TableKind,
    seq_len: u32,
    /// A stateless VIP's table of previous backends (`CHAINS`).
    chain: Option<chains::Chains>,
    pub last_flip: Option<Instant>,
    pub backends: BTreeMap<IpAddr, RunningBackend>,
}

impl RunningVip {
    /// Whether the data path counts this VIP's active connections (least
    /// connections, or a backend with `max_connections`).
    pub fn counts_connections(&self) -> bool {
        self.conf.scheduler.counts() || self.backends.values().any(|b| b.max_connections.is_some())
    }

    pub fn key(&self) -> VipKey {
        vip_key(&self.conf)
    }

    /// Backends that take new flows.
    pub fn serving(&self) -> usize {
        self.backends
            .values()
            .filter(|b| takes_new_flows(b, self.panic))
            .count()
    }

    /// Whether fewer than `panic_threshold` percent of the active backends
    /// pass their checks (then every active backend takes new flows).
    fn below_panic_threshold(&self) -> bool {
        let threshold = self.conf.panic_threshold as usize;
        let active = self
            .backends
            .values()
            .filter(|b| b.state == BackendState::Active);
        let (n, healthy) = active.fold((0, 0), |(n, h), b| {
            (n + 1, h + usize::from(b.health != HealthView::Down))
        });
        threshold > 0 && n > 0 && healthy * 100 < threshold * n
    }
}

/// Whether a backend takes new flows; in panic mode its health is ignored.
fn takes_new_flows(b: &RunningBackend, panic: bool) -> bool {
    b.state == BackendState::Active && (panic || b.health != HealthView::Down)
}

/// The slot flags of a forwarding mode.
fn mode_flags(f: Forwarding) -> u8 {
    match f {
        Forwarding::Encap => 0,
        Forwarding::DsrL2 => BACKEND_F_DSR_L2,
        Forwarding::Gue => BACKEND_F_GUE,
        Forwarding::Nat => BACKEND_F_NAT,
    }
}

/// `Backend::flags` of a slot in use. In panic mode no backend is marked
/// unhealthy: the data path sends new flows (and keeps UDP flows) as if
/// every check passed.
fn kernel_flags(b: &RunningBackend, panic: bool) -> u8 {
    let mut f = BACKEND_F_USED | b.mode_flags;
    if b.state == BackendState::Disabled {
        f |= BACKEND_F_DOWN;
    }
    if b.health == HealthView::Down && !panic {
        f |= BACKEND_F_UNHEALTHY;
    }
    f
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error("no free {what} slot: the maps hold {max}; raise `tables.{field}` and restart with `lb stop` first")]
    Full {
        what: &'static str,
        field: &'static str,
        max: u32,
    },
}

pub struct Controller<D: DataPlane> {
    pub dp: D,
    ring_size: u32,
    max_vips: u32,
    max_backends: u32,
    /// Stateless VIPs `CHAINS` has room for.
    stateless_vips: u32,
    /// `tables.stateless_window` of the pool applied, in seconds.
    chain_window_s: u32,
    pub vips: BTreeMap<VipKey, RunningVip>,
    /// Ids found in the kernel at start (adopted), not yet claimed by the pool.
    adopted_vips: BTreeMap<VipKey, (u32, u8)>,
    /// Backend slots found in the kernel at start: (VIP id, address) → (slot, flags).
    adopted_backends: BTreeMap<(u16, IpAddr), (u32, u8)>,
    /// Slots of backends removed from the pool file, kept as they were so
    /// the connections they hold carry on (as with IPVS or Katran). The same
    /// backend added again gets its slot back; a retired slot is reused for
    /// another backend only when no slot is free.
    retired: BTreeMap<(u16, IpAddr), u32>,
    /// Free backend slots while an `apply` runs (see `alloc_backend_id`).
    free_backend_ids: Option<BTreeSet<u32>>,
    /// VIPs with health verdicts not yet written (see `flush`).
    dirty: BTreeSet<VipKey>,
    /// Maglev tables by their input, shared by VIPs behind the same backends.
    tables_built: maglev::Memo,
    /// What VIP_ADDRS holds, as far as we know: address → flags (None:
    /// present, flags unknown, e.g. an adopted VIP's address).
    known_addrs: BTreeMap<AddrKey, Option<u32>>,
    /// `Backend::gen` of every slot ever used (0 when absent).
    slot_gen: BTreeMap<u32, u32>,
}

pub use lb_common::{addr_words, words_addr};

pub fn vip_key(v: &Vip) -> VipKey {
    let (addr, family) = addr_words(v.address);
    VipKey {
        addr,
        port: v.port.to_be(),
        proto: match v.protocol {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        },
        family,
    }
}

fn addr_key(v: &VipKey) -> AddrKey {
    AddrKey {
        addr: v.addr,
        family: v.family,
        _pad: [0; 3],
    }
}

impl<D: DataPlane> Controller<D> {
    /// Starts from what the kernel already holds (after a restart) so ids,
    /// active buffers and flows carry over.
    pub fn adopt(
        dp: D,
        ring_size: u32,
        max_vips: u32,
        max_backends: u32,
    ) -> Result<Self, ControlError> {
        let adopted_vips: BTreeMap<VipKey, (u32, u8)> = dp
            .vips()?
            .into_iter()
            .map(|(k, i)| (k, (i.vip_id, i.active_ring)))
            .collect();
        let slots = dp.backends()?;
        let slot_gen = slots.iter().map(|(id, b)| (*id, b.gen)).collect();
        let adopted_backends = slots
            .into_iter()
            .filter(|(_, b)| b.flags & BACKEND_F_USED != 0)
            .map(|(id, b)| ((b.vip_id, words_addr(b.addr, b.family)), (id, b.flags)))
            .collect();
        let known_addrs = adopted_vips.keys().map(|k| (addr_key(k), None)).collect();
        Ok(Controller {
            dp,
            ring_size,
            max_vips,
            max_backends,
            stateless_vips: 1,
            chain_window_s: crate::config::DEFAULT_STATELESS_WINDOW.as_secs() as u32,
            vips: BTreeMap::new(),
            adopted_vips,
            adopted_backends,
            retired: BTreeMap::new(),
            free_backend_ids: None,
            dirty: BTreeSet::new(),
            tables_built: maglev::Memo::default(),
            known_addrs,
            slot_gen,
        })
    }

    /// The stateless VIPs the data plane has room for (`CHAINS`; 1 unless set).
    pub fn with_stateless_vips(mut self, n: u32) -> Self {
        self.stateless_vips = n.max(1);
        self
    }

    /// Brings the kernel to `pool`: adds, changes and removes VIPs and
    /// backends, rebuilding only the tables whose inputs changed. Flows are
    /// left alone.
    pub fn apply(&mut self, pool: &Pool) -> Result<ApplyReport, ControlError> {
        let report = ApplyReport::default();
        self.free_backend_ids = None;
        self.chain_window_s = pool.tables.stateless_window.as_secs() as u32;
        // Verdicts recorded before the new pool: their flags and tables first
        // (the table rebuilds below would otherwise run ahead of the flags).
        while let Some(wait) = self.flush()? {
            std::thread::sleep(wait);
        }
        // Runs of slot writes in batches, in the same order.
        self.dp.defer_writes(true)?;
        let applied = self.apply_pool(pool, report);
        let written = self.dp.defer_writes(false);
        let report = applied?;
        written?;
        Ok(report)
    }

    /// `apply` once the verdicts before it are written.
    fn apply_pool(
        &mut self,
        pool: &Pool,
        mut report: ApplyReport,
    ) -> Result<ApplyReport, ControlError> {
        let wanted: BTreeMap<VipKey, &Vip> = pool.vips.iter().map(|v| (vip_key(v), v)).collect();

        // Removed VIPs: stop matching packets first, then release slots.
        let gone: Vec<VipKey> = self
            .vips
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            let v = self.vips.remove(&k).expect("present");
            self.dp.remove_vip(&k)?;
            for b in v.backends.values() {
                self.release_backend(b.id)?;
            }
            let vid = v.id as u16;
            let retired: Vec<((u16, IpAddr), u32)> = self
                .retired
                .iter()
                .filter(|((id, _), _)| *id == vid)
                .map(|(k, id)| (*k, *id))
                .collect();
            for (rk, id) in retired {
                self.retired.remove(&rk);
                self.release_backend(id)?;
            }
            report.vips_removed.push(v.conf.name.clone());
        }
        // Adopted VIPs the pool no longer has (their addresses are in
        // `known_addrs`, so VIP_ADDRS loses them below unless still used).
        let stale: Vec<VipKey> = self
            .adopted_vips
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            self.adopted_vips.remove(&k);
            self.dp.remove_vip(&k)?;
        }
        // Adopted slots the pool does not claim (their VIP is gone, or the
        // backend was removed while we were down) are released before any
        // slot is handed out, so a full BACKENDS array can take replacements.
        let claimable: BTreeSet<(u16, IpAddr)> = wanted
            .iter()
            .filter_map(|(k, conf)| {
                let id = self
                    .vips
                    .get(k)
                    .map(|v| v.id)
                    .or_else(|| self.adopted_vips.get(k).map(|(id, _)| *id))?;
                Some(conf.backends.iter().map(move |b| (id as u16, b.address)))
            })
            .flatten()
            .collect();
        let unclaimed: Vec<(u16, IpAddr)> = self
            .adopted_backends
            .keys()
            .filter(|bk| !claimable.contains(bk))
            .copied()
            .collect();
        let live_vip_ids: BTreeSet<u16> = wanted
            .keys()
            .filter_map(|k| {
                self.vips
                    .get(k)
                    .map(|v| v.id)
                    .or_else(|| self.adopted_vips.get(k).map(|(id, _)| *id))
            })
            .map(|id| id as u16)
            .collect();
        for bk in unclaimed {
            let (id, flags) = self.adopted_backends.remove(&bk).expect("present");
            if live_vip_ids.contains(&bk.0) && flags & (BACKEND_F_DOWN | BACKEND_F_UNHEALTHY) == 0 {
                // Removed from the file while we were down: its flows carry on.
                self.retired.insert(bk, id);
            } else {
                self.release_backend(id)?;
            }
        }

        for (key, conf) in &wanted {
            if !self.vips.contains_key(key) {
                let (id, ring) = match self.adopted_vips.remove(key) {
                    Some(x) => x,
                    None => {
                        let id = Self::free_id(&self.used_vip_ids(), self.max_vips).ok_or(
                            ControlError::Full {
                                what: "VIP",
                                field: "max_vips",
                                max: self.max_vips,
                            },
                        )?;
                        report.vips_added.push(conf.name.clone());
                        self.dp.clear_stats(Some(id), None)?;
                        (id, 0)
                    }
                };
                self.vips.insert(
                    *key,
                    RunningVip {
                        id,
                        conf: (*conf).clone(),
                        active_ring: ring,
                        table: None,
                        table_input: Vec::new(),
                        panic: false,
                        info_written: None,
                        table_kind: TableKind::Maglev,
                        nat_written: None,
                        seq_len: 0,
                        chain: None,
                        last_flip: None,
                        backends: BTreeMap::new(),
                    },
                );
            }
            self.sync_backends(key, conf)?;
            // Disabled (or unhealthy): out of the table first, then its
            // flag; enabled: the flag first, then the table.
            if self.flush_vip(key)? {
                report.tables_written.push(conf.name.clone());
            }
        }
        self.sync_vip_addrs()?;
        Ok(report)
    }

    /// Reconciles one VIP's backends with its configuration. Flags that
    /// stop a backend (newly disabled) are left for `flush_vip` to write
    /// once the table without it is live.
    fn sync_backends(&mut self, key: &VipKey, conf: &Vip) -> Result<(), ControlError> {
        let vip_id = self.vips[key].id;
        // The VIP's first backends (no table yet) do not ramp: they share
        // the traffic from the start.
        let first = self.vips[key].table.is_none();
        let wanted: BTreeMap<IpAddr, _> = conf.backends.iter().map(|b| (b.address, b)).collect();
        let existing: Vec<IpAddr> = self.vips[key].backends.keys().copied().collect();
        for addr in existing {
            if !wanted.contains_key(&addr) {
                let b = self
                    .vips
                    .get_mut(key)
                    .unwrap()
                    .backends
                    .remove(&addr)
                    .unwrap();
                // Out of the table (rebuilt below); the slot stays as it is
                // so established connections carry on.
                self.retired.insert((vip_id as u16, addr), b.id);
            }
        }
        for (addr, bc) in wanted {
            let present = self.vips[key].backends.contains_key(&addr);
            if !present {
                let adopted = self.adopted_backends.remove(&(vip_id as u16, addr));
                let id = match (adopted, self.retired.remove(&(vip_id as u16, addr))) {
                    (Some((id, _)), _) => id,
                    (None, Some(id)) => id,
                    (None, None) => {
                        // A slot for another backend than before: a new
                        // generation, so flows made under the old one move.
                        let id = self.alloc_backend_id()?;
                        let g = self.slot_gen.entry(id).or_insert(0);
                        *g = g.wrapping_add(1);
                        id
                    }
                };
                let health = match (&bc.health, adopted) {
                    (None, _) => HealthView::Unchecked,
                    // Unhealthy before the restart: stays out of the table
                    // until its prober (started from this state) sees it rise.
                    (Some(_), Some((_, flags))) if flags & BACKEND_F_UNHEALTHY != 0 => {
                        HealthView::Down
                    }
                    (Some(_), _) => HealthView::Up,
                };
                self.vips.get_mut(key).unwrap().backends.insert(
                    addr,
                    RunningBackend {
                        id,
                        address: addr,
                        weight: bc.weight,
                        state: bc.state,
                        health,
                        last_probe: None,
                        probe: bc.health.clone(),
                        flags_written: 0,
                        // A new backend of a serving VIP ramps up (not one
                        // adopted after a restart, nor a new VIP's first).
                        up_since: (adopted.is_none() && !first && health != HealthView::Down)
                            .then(Instant::now),
                        rtt_ms: None,
                        max_connections: bc.max_connections,
                        limit_written: None,
                        mode_flags: mode_flags(conf.forwarding),
                        port: bc.port,
                        handshake_ms: None,
                    },
                );
                self.write_backend(key, addr)?;
            } else {
                let e = self
                    .vips
                    .get_mut(key)
                    .unwrap()
                    .backends
                    .get_mut(&addr)
                    .unwrap();
                let flags_before = kernel_flags(e, false);
                e.weight = bc.weight;
                e.state = bc.state;
                e.max_connections = bc.max_connections;
                e.mode_flags = mode_flags(conf.forwarding);
                e.port = bc.port;
                if e.probe != bc.health {
                    e.probe = bc.health.clone();
                    if e.probe.is_none() {
                        e.health = HealthView::Unchecked;
                    } else if e.health == HealthView::Unchecked {
                        e.health = HealthView::Up;
                    }
                }
                // State, or health when the check was removed, may move the slot
                // in or out of DOWN.
                let flags = kernel_flags(e, false);
                if flags != flags_before && flags & !flags_before & BACKEND_F_DOWN == 0 {
                    self.write_backend(key, addr)?;
                }
            }
        }
        self.vips.get_mut(key).unwrap().conf = conf.clone();
        Ok(())
    }

    /// Backends removed from each VIP (by id) whose slots are kept for
    /// their established connections: (address, slot id). One pass for
    /// every VIP (a pass per VIP was VIPs × removed backends).
    pub fn removed_backends(&self) -> std::collections::HashMap<u32, Vec<(IpAddr, u32)>> {
        let mut out: std::collections::HashMap<u32, Vec<(IpAddr, u32)>> = Default::default();
        for ((vip, addr), id) in &self.retired {
            out.entry(u32::from(*vip)).or_default().push((*addr, *id));
        }
        out
    }

    /// Every backend that has a probe, with its spec (for the prober set).
    pub fn probes(&self) -> Vec<(BackendRef, ProbeSpec)> {
        self.vips
            .iter()
            .flat_map(|(k, v)| {
                v.backends
                    .values()
                    .filter_map(move |b| b.probe.clone().map(|p| ((*k, b.address), p)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
