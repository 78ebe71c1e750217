//! The one writer of the maps: turns the pool file, health verdicts and
//! drains into VIPs, backend slots and Maglev tables, and writes only what
//! changed. Pure logic over the [`DataPlane`] trait.
use crate::config::{BackendState, Pool, Protocol, Vip};
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::health::{Health, ProbeOutcome, ProbeSpec};
use crate::maglev::{self, MaglevBackend};
use lb_common::{
    AddrKey, Backend, Config, VipInfo, VipKey, ADDR_F_ANY_PORT, ADDR_F_VIP, AF_INET, AF_INET6,
    BACKEND_F_DOWN, BACKEND_F_USED, CONFIG_F_ANY_PORT, CONFIG_F_GATEWAY_MAC, CONFIG_F_SRC_V4,
    CONFIG_F_SRC_V6,
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

#[derive(Clone, Debug)]
pub struct BackendEntry {
    pub id: u32,
    pub address: IpAddr,
    pub weight: u32,
    pub state: BackendState,
    pub health: HealthView,
    pub last_probe: Option<ProbeView>,
    pub probe: Option<ProbeSpec>,
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
pub struct VipEntry {
    pub id: u32,
    pub conf: Vip,
    pub active_ring: u8,
    /// What the active buffer holds (None until first written by us).
    pub table: Option<Vec<u32>>,
    pub last_flip: Option<Instant>,
    pub backends: BTreeMap<IpAddr, BackendEntry>,
}

impl VipEntry {
    pub fn key(&self) -> VipKey {
        vip_key(&self.conf)
    }

    /// Backends that take new flows.
    pub fn serving(&self) -> usize {
        self.backends
            .values()
            .filter(|b| takes_new_flows(b))
            .count()
    }
}

fn takes_new_flows(b: &BackendEntry) -> bool {
    b.state == BackendState::Active && b.health != HealthView::Down
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

/// What one `apply` changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub vips_added: Vec<String>,
    pub vips_removed: Vec<String>,
    pub tables_written: Vec<String>,
}

pub struct Controller<D: DataPlane> {
    pub dp: D,
    ring_size: u32,
    max_vips: u32,
    max_backends: u32,
    pub vips: BTreeMap<VipKey, VipEntry>,
    /// Ids found in the kernel at start (adopted), not yet claimed by the pool.
    adopted_vips: BTreeMap<VipKey, (u32, u8)>,
    adopted_backends: BTreeMap<(u16, IpAddr), u32>,
    /// Addresses written to VIP_ADDRS.
    known_addrs: BTreeSet<AddrKey>,
}

pub fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(a) => {
            let o = a.octets();
            let mut w = [0u32; 4];
            for (i, c) in o.chunks(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            (w, AF_INET6)
        }
    }
}

pub fn words_addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == AF_INET {
        IpAddr::from(words[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

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

/// The backend's stable identity for Maglev: from its address alone, so
/// every node that shares the pool file builds the same table.
pub fn maglev_key(addr: IpAddr) -> u64 {
    let bytes: Vec<u8> = match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    // FNV-1a 64: fixed forever (tables must match across nodes and versions).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The kernel's global settings from the pool file and the hash secret.
pub fn kernel_config(pool: &Pool, hash_key: [u64; 2]) -> Config {
    let e = &pool.encapsulation;
    let mut cfg = Config {
        hash_key,
        ring_size: pool.tables.maglev_size,
        udp_idle_timeout_ns: pool.tables.udp_idle_timeout.as_nanos() as u64,
        mtu: e.mtu,
        ..Config::default()
    };
    if let Some((addr, prefix)) = e.source_v4 {
        cfg.flags |= CONFIG_F_SRC_V4;
        cfg.src_v4 = u32::from_ne_bytes(addr.octets());
        let host: u32 = if prefix >= 32 { 0 } else { u32::MAX >> prefix };
        cfg.src_v4_mask = u32::from_ne_bytes(host.to_be_bytes());
    }
    if let Some((addr, prefix)) = e.source_v6 {
        cfg.flags |= CONFIG_F_SRC_V6;
        cfg.src_v6 = addr_words(IpAddr::V6(addr)).0;
        let bits = 128u32.saturating_sub(prefix as u32).min(32);
        let host: u32 = if bits == 0 {
            0
        } else {
            u32::MAX >> (32 - bits)
        };
        cfg.src_v6_mask = u32::from_ne_bytes(host.to_be_bytes());
    }
    if let Some(mac) = e.gateway_mac {
        cfg.flags |= CONFIG_F_GATEWAY_MAC;
        cfg.gateway_mac = mac;
    }
    if pool.vips.iter().any(|v| v.port == 0) {
        cfg.flags |= CONFIG_F_ANY_PORT;
    }
    cfg
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
        let adopted_vips = dp
            .vips()?
            .into_iter()
            .map(|(k, i)| (k, (i.vip_id, i.active_ring)))
            .collect();
        let adopted_backends = dp
            .backends()?
            .into_iter()
            .map(|(id, b)| ((b.vip_id, words_addr(b.addr, b.family)), id))
            .collect();
        Ok(Controller {
            dp,
            ring_size,
            max_vips,
            max_backends,
            vips: BTreeMap::new(),
            adopted_vips,
            adopted_backends,
            known_addrs: BTreeSet::new(),
        })
    }

    fn used_vip_ids(&self) -> BTreeSet<u32> {
        self.vips
            .values()
            .map(|v| v.id)
            .chain(self.adopted_vips.values().map(|(id, _)| *id))
            .collect()
    }

    fn used_backend_ids(&self) -> BTreeSet<u32> {
        self.vips
            .values()
            .flat_map(|v| v.backends.values().map(|b| b.id))
            .chain(self.adopted_backends.values().copied())
            .collect()
    }

    fn free_id(used: &BTreeSet<u32>, max: u32) -> Option<u32> {
        (0..max).find(|i| !used.contains(i))
    }

    /// Brings the kernel to `pool`: adds, changes and removes VIPs and
    /// backends, rebuilding only the tables whose inputs changed. Flows are
    /// left alone.
    pub fn apply(&mut self, pool: &Pool) -> Result<ApplyReport, ControlError> {
        let mut report = ApplyReport::default();
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
                self.dp.set_backend(b.id, &Backend::default())?;
            }
            report.vips_removed.push(v.conf.name.clone());
        }
        // Adopted VIPs the pool no longer has.
        let stale: Vec<VipKey> = self
            .adopted_vips
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            let (id, _) = self.adopted_vips.remove(&k).expect("present");
            self.dp.remove_vip(&k)?;
            let slots: Vec<((u16, IpAddr), u32)> = self
                .adopted_backends
                .iter()
                .filter(|((vid, _), _)| *vid as u32 == id)
                .map(|(k, v)| (*k, *v))
                .collect();
            for (bk, bid) in slots {
                self.adopted_backends.remove(&bk);
                self.dp.set_backend(bid, &Backend::default())?;
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
                        (id, 0)
                    }
                };
                self.vips.insert(
                    *key,
                    VipEntry {
                        id,
                        conf: (*conf).clone(),
                        active_ring: ring,
                        table: None,
                        last_flip: None,
                        backends: BTreeMap::new(),
                    },
                );
            }
            self.sync_backends(key, conf)?;
            if self.rebuild(key)? {
                report.tables_written.push(conf.name.clone());
            }
        }
        self.sync_vip_addrs()?;
        Ok(report)
    }

    /// Reconciles one VIP's backends with its configuration.
    fn sync_backends(&mut self, key: &VipKey, conf: &Vip) -> Result<(), ControlError> {
        let vip_id = self.vips[key].id;
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
                // Flows still pointing here are rescheduled (DOWN), and the
                // slot is free for reuse.
                self.dp.set_backend(
                    b.id,
                    &Backend {
                        flags: BACKEND_F_DOWN,
                        ..Backend::default()
                    },
                )?;
            }
        }
        for (addr, bc) in wanted {
            let present = self.vips[key].backends.contains_key(&addr);
            if !present {
                let id = match self.adopted_backends.remove(&(vip_id as u16, addr)) {
                    Some(id) => id,
                    None => Self::free_id(&self.used_backend_ids(), self.max_backends).ok_or(
                        ControlError::Full {
                            what: "backend",
                            field: "max_backends",
                            max: self.max_backends,
                        },
                    )?,
                };
                let health = if bc.health.is_some() {
                    HealthView::Up
                } else {
                    HealthView::Unchecked
                };
                self.vips.get_mut(key).unwrap().backends.insert(
                    addr,
                    BackendEntry {
                        id,
                        address: addr,
                        weight: bc.weight,
                        state: bc.state,
                        health,
                        last_probe: None,
                        probe: bc.health.clone(),
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
                let flags_change = e.state != bc.state;
                e.weight = bc.weight;
                e.state = bc.state;
                if e.probe != bc.health {
                    e.probe = bc.health.clone();
                    if e.probe.is_none() {
                        e.health = HealthView::Unchecked;
                    } else if e.health == HealthView::Unchecked {
                        e.health = HealthView::Up;
                    }
                }
                if flags_change {
                    self.write_backend(key, addr)?;
                }
            }
        }
        self.vips.get_mut(key).unwrap().conf = conf.clone();
        Ok(())
    }

    fn write_backend(&mut self, key: &VipKey, addr: IpAddr) -> Result<(), ControlError> {
        let v = &self.vips[key];
        let b = &v.backends[&addr];
        let (words, family) = addr_words(addr);
        let mut flags = BACKEND_F_USED;
        if b.state == BackendState::Disabled || b.health == HealthView::Down {
            flags |= BACKEND_F_DOWN;
        }
        let kb = Backend {
            addr: words,
            family,
            flags,
            vip_id: v.id as u16,
        };
        let id = b.id;
        self.dp.set_backend(id, &kb)?;
        Ok(())
    }

    /// Builds the VIP's Maglev table from the backends that take new flows;
    /// if it differs from the one in place, writes the idle buffer and flips.
    /// Returns whether a table was written.
    pub fn rebuild(&mut self, key: &VipKey) -> Result<bool, ControlError> {
        let ring_size = self.ring_size;
        let v = self.vips.get_mut(key).expect("known VIP");
        let input: Vec<MaglevBackend> = v
            .backends
            .values()
            .filter(|b| takes_new_flows(b))
            .map(|b| MaglevBackend {
                key: maglev_key(b.address),
                slot: b.id,
                weight: b.weight,
            })
            .collect();
        let table = maglev::build(&input, ring_size);
        let info_now = VipInfo {
            vip_id: v.id,
            active_ring: v.active_ring,
            ..VipInfo::default()
        };
        if v.table.as_ref() == Some(&table) {
            return Ok(false);
        }
        // Rewrite the buffer packets are not reading, then flip to it.
        if let Some(t) = v.last_flip {
            let since = t.elapsed();
            if since < FLIP_GRACE {
                std::thread::sleep(FLIP_GRACE - since);
            }
        }
        // A new VIP is not in the VIP map yet, and an adopted one's idle
        // buffer is as idle as ever: the same rule serves all three cases.
        let idle = v.active_ring ^ 1;
        self.dp.write_ring(v.id, idle, &table)?;
        let info = VipInfo {
            active_ring: idle,
            ..info_now
        };
        self.dp.set_vip(key, &info)?;
        v.active_ring = idle;
        v.table = Some(table);
        v.last_flip = Some(Instant::now());
        Ok(true)
    }

    /// Keeps VIP_ADDRS in step with the VIPs (flags per address).
    fn sync_vip_addrs(&mut self) -> Result<(), ControlError> {
        let mut want: BTreeMap<AddrKey, u32> = BTreeMap::new();
        for k in self.vips.keys() {
            let f = want.entry(addr_key(k)).or_insert(ADDR_F_VIP);
            if k.port == 0 {
                *f |= ADDR_F_ANY_PORT;
            }
        }
        for (k, f) in &want {
            self.dp.set_vip_addr(k, *f)?;
        }
        // Addresses no VIP uses any more.
        let mut have: BTreeSet<AddrKey> = BTreeSet::new();
        for k in self.adopted_vips.keys() {
            have.insert(addr_key(k));
        }
        for k in self.known_addrs.iter() {
            have.insert(*k);
        }
        for k in have {
            if !want.contains_key(&k) {
                self.dp.remove_vip_addr(&k)?;
            }
        }
        self.known_addrs = want.keys().copied().collect();
        Ok(())
    }

    /// Records a probe result; on a health change, rewrites the backend's
    /// flags and its VIP's table. Returns whether the health changed.
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
        b.health = new;
        self.write_backend(key, *addr)?;
        self.rebuild(key)?;
        Ok(true)
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
