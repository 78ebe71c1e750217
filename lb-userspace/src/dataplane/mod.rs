//! The data plane: loads the XDP object, pins its maps and links under
//! `/sys/fs/bpf/<instance>/`, adopts them after a restart, and writes the maps.
//! This is the only module that touches aya; the control loop sees the
//! [`DataPlane`] trait, so it is tested against an in-memory fake.
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use lb_common::{
    maps, progs, AddrKey, Backend, BackendLimit, BackendStats, Config, FlowKey, FlowValue,
    VipFilter, VipInfo, VipKey, VipStats,
};
use std::collections::BTreeSet;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

mod attach;
mod batch;
mod decap;
mod deferred;
mod flows;
mod flowtab;
mod grow;
mod load;
pub use load::urandom;
mod loads;
mod nat;
mod pins;
mod programs;
mod ring;
pub use decap::*;
pub use flows::*;
pub use flowtab::{FlowGeometry, FlowTable};
pub use grow::{begin_growth_pinned, grow_pinned, new_flows_counted, Growth};
pub use loads::*;
pub use pins::*;
use ring::RingMmap;

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("{0}")]
    Setup(String),
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, DataPlaneError>;

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataPlaneError {
    move |source| DataPlaneError::Map { map, source }
}

/// What the control loop writes and reads. Ids are indices into the
/// kernel's arrays (VIP ids index rings and VIP stats, backend ids the
/// BACKENDS array).
pub trait DataPlane {
    fn set_config(&mut self, cfg: &Config) -> Result<()>;
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<()>;
    /// Writes buffer `ring` (0 or 1) of VIP `vip_id`.
    fn write_ring(&mut self, vip_id: u32, ring: u8, slots: &[u32]) -> Result<()>;
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    fn set_vip_addr(&mut self, key: &AddrKey, flags: u32) -> Result<()>;
    fn remove_vip_addr(&mut self, key: &AddrKey) -> Result<()>;
    /// Every VIP in the kernel (for adoption after a restart).
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>>;
    /// Every used backend slot (for adoption after a restart).
    /// Slots in use (`BACKEND_F_USED`), and released ones that were ever
    /// used (their generation counts on).
    fn backends(&self) -> Result<Vec<(u32, Backend)>>;
    fn vip_stats(&self, vip_id: u32) -> Result<VipStats>;
    fn backend_stats(&self, id: u32) -> Result<BackendStats>;
    /// Every backend slot's statistics, indexed by slot id (a slot past
    /// the end: all zero), read at once.
    fn all_backend_stats(&self) -> Result<Vec<BackendStats>>;
    /// Zeroes the statistics of a slot given to a new VIP or backend, so
    /// its counters start from 0 (and never go down for the one it
    /// serves); a backend slot's connection count starts from 0 too.
    fn clear_stats(&mut self, vip_id: Option<u32>, backend_id: Option<u32>) -> Result<()>;
    fn counters(&self) -> Result<Vec<u64>>;
    /// Writes a backend slot's weight and connection limit (`LIMITS`).
    fn set_limit(&mut self, id: u32, limit: &BackendLimit) -> Result<()>;
    /// A backend slot's active connections (`LOADS`; counted on VIPs
    /// that count them).
    fn load(&self, id: u32) -> Result<u64>;
    /// Writes VIP `vip_id`'s NAT source addresses (`NAT_ADDRS`: IPv4 ones
    /// first, then IPv6, at most `NAT_ADDRS_PER_FAMILY` of each).
    fn set_nat_addrs(&mut self, vip_id: u32, addrs: &[std::net::IpAddr]) -> Result<()>;
    /// Reads the first `size` slots of buffer `ring` of VIP `vip_id` (what
    /// an adopted stateless VIP's slots held).
    fn read_ring(&self, vip_id: u32, ring: u8, size: u32) -> Result<Vec<u32>>;
    /// Writes entries (slot, `chain_entry`) of stateless table `idx` (`CHAINS`).
    fn write_chains(&mut self, idx: u8, entries: &[(u32, u64)]) -> Result<()>;
    /// Stateless table `idx`, whole.
    fn read_chains(&self, idx: u8) -> Result<Vec<u64>>;
    /// On: slot records, limits and cleared backend statistics are held
    /// and made in batches, before any other write and when turned off
    /// (the kernel sees them in the same order). A pool of 512 000
    /// backends took 1.5 million system calls one by one.
    fn defer_writes(&mut self, on: bool) -> Result<()> {
        let _ = on;
        Ok(())
    }
}

/// The reader of the data path's aya-log records.
pub type DecisionLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Sizes of the maps, from the pool file.
pub type Sizes = lb_common::MapSizes;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Auto,
    Driver,
    Generic,
}

/// The loaded balancer and the one writer of its maps: the daemon's (maps
/// and links pinned), the packet tests' and the benches' (unpinned).
pub struct BpfDataPlane {
    ebpf: Ebpf,
    ring: RingMmap,
    /// `MEMBERS`: the backend ids each table buffer's slots index.
    members: RingMmap,
    chains: RingMmap,
    sizes: Sizes,
    /// Where maps and links are pinned; `None` for an unpinned load (the
    /// packet tests and benches), which cannot attach.
    dir: Option<PathBuf>,
    /// Links adopted from pins: this process holds them too, so detaching
    /// takes both the pin and this.
    adopted: std::collections::HashMap<String, aya::programs::xdp::XdpLinkId>,
    /// Written into every `Config` (`Config::jiffy_ns`).
    clock: lb_common::DataPathClock,
    filter: lb_common::VipFilter,
    /// A filter write failed: `filter` is ahead of the maps, and the next
    /// change writes all of it.
    filter_stale: bool,
    /// The data path's decision log, when asked for and not yet taken.
    log: Option<DecisionLog>,
    /// Writes held to be made in batches (`defer_writes`).
    deferred: deferred::Deferred,
    /// Possible CPUs: values per key of a per-CPU map.
    cpus: usize,
    /// `Config::flow_seed`: the flow table's hash key.
    flow_seed: [u64; 2],
}

/// `data`'s map (named `name`) opened again, with a handle of its own
/// (one a thread or a struct can own apart from the loaded object).
fn own_handle(data: &MapData, name: &'static str) -> Result<MapData> {
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataPlaneError::Io {
            what: format!("duplicating the descriptor of {name}"),
            source,
        })?;
    MapData::from_fd(fd).map_err(map_err(name))
}

/// The data of the maps this program pins.
fn map_data(m: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::ArrayOfMaps(d) => Some(d),
        _ => None,
    }
}

impl BpfDataPlane {
    /// The `lb_xdp` program of the loaded object.
    fn balancer(&mut self) -> Result<&mut Xdp> {
        programs::xdp_mut(&mut self.ebpf, progs::BALANCER)
    }

    /// Whether an earlier run left a pinned link on `iface` (which `attach`
    /// then adopts).
    pub fn link_pinned(&self, iface: &str) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|d| link_pin(d, iface).exists())
    }

    /// The pin directory; attaching needs one.
    fn pins(&self) -> Result<&Path> {
        self.dir.as_deref().ok_or_else(|| {
            DataPlaneError::Setup("the balancer was loaded unpinned; it cannot be attached".into())
        })
    }

    /// The data path's decision log (loaded with `log_decisions`), for the
    /// caller to drain: `flush` hands its records to the `log` crate.
    pub fn take_decision_log(&mut self) -> Option<DecisionLog> {
        self.log.take()
    }

    /// The loaded object, for running and reading its programs and maps.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The tick the data path's clock was calibrated with (written into
    /// every `Config`); the default means the coarse-clock fallback.
    pub fn clock(&self) -> lb_common::DataPathClock {
        self.clock
    }

    /// Replaces the clock written into the next `Config`s, as a failed
    /// calibration does (the default: the coarse clock).
    pub fn set_clock(&mut self, clock: lb_common::DataPathClock) {
        self.clock = clock;
    }

    fn map(&self, name: &'static str) -> &aya::maps::Map {
        self.ebpf.map(name).expect("map in the object")
    }

    fn map_mut(&mut self, name: &'static str) -> &mut aya::maps::Map {
        self.ebpf.map_mut(name).expect("map in the object")
    }

    pub fn sizes(&self) -> Sizes {
        self.sizes
    }
}

impl DataPlane for BpfDataPlane {
    fn set_config(&mut self, cfg: &Config) -> Result<()> {
        self.write_deferred()?;
        let mut cfg = *cfg;
        self.clock.apply(&mut cfg);
        // The stride of `MEMBERS`, as the maps were made.
        cfg.max_vip_backends = self.sizes.max_vip_backends.max(1);
        // The flow table's key, as the table was made, and its sets in
        // use, as the last growth left them (`grow`).
        cfg.flow_seed = self.flow_seed;
        let _w = grow::CONFIG_WRITE.lock().expect("config writer");
        let written = grow::read_config(self.map(maps::CONFIG))?;
        grow::keep_geometry(&mut cfg, &written, lb_common::flow_sets(self.sizes.flows));
        let mut a: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(maps::CONFIG)).map_err(map_err(maps::CONFIG))?;
        a.set(0, cfg, 0).map_err(map_err(maps::CONFIG))
    }

    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<()> {
        self.put_backend(id, b)
    }

    fn defer_writes(&mut self, on: bool) -> Result<()> {
        self.deferred.on = on;
        self.write_deferred()
    }

    /// The buffer's members (the distinct backend ids, plus one), then
    /// its slots as indices into them.
    fn write_ring(&mut self, vip_id: u32, ring: u8, slots: &[u32]) -> Result<()> {
        self.write_deferred()?;
        let room = self.sizes.ring_size as usize;
        if slots.len() > room {
            return Err(DataPlaneError::Setup(format!(
                "VIP {vip_id}'s table has {} slots, more than tables.maglev_size ({room})",
                slots.len()
            )));
        }
        let per_vip = self.sizes.max_vip_backends.max(1);
        let (indexed, members) = lb_common::index_table(slots, per_vip).ok_or_else(|| {
            DataPlaneError::Setup(format!(
                "VIP {vip_id}'s table names more than {per_vip} backends (tables.max_backends_per_vip)"
            ))
        })?;
        let first = lb_common::members_base(vip_id, ring, per_vip) as usize;
        for (i, id) in members.iter().enumerate() {
            self.members.set(first + i, u64::from(*id) + 1)?;
        }
        let base = lb_common::ring_base(vip_id, ring, self.sizes.ring_size) as usize;
        self.ring.write(base, &indexed)
    }

    fn read_ring(&self, vip_id: u32, ring: u8, size: u32) -> Result<Vec<u32>> {
        let size = size.min(self.sizes.ring_size);
        let per_vip = self.sizes.max_vip_backends.max(1);
        let base = lb_common::ring_base(vip_id, ring, self.sizes.ring_size) as usize;
        let members = self.members.read(
            lb_common::members_base(vip_id, ring, per_vip) as usize,
            per_vip as usize,
        )?;
        Ok(self
            .ring
            .read_slots(base, size)?
            .into_iter()
            .map(|i| match members.get(i as usize) {
                Some(&id) if id != 0 => id as u32 - 1,
                _ => lb_common::NO_BACKEND,
            })
            .collect())
    }

    fn write_chains(&mut self, idx: u8, entries: &[(u32, u64)]) -> Result<()> {
        self.write_deferred()?;
        let base = idx as usize * self.sizes.ring_size as usize;
        for &(slot, e) in entries {
            self.chains.set(base + slot as usize, e)?;
        }
        Ok(())
    }

    fn read_chains(&self, idx: u8) -> Result<Vec<u64>> {
        let size = self.sizes.ring_size as usize;
        self.chains.read(idx as usize * size, size)
    }

    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()> {
        self.write_deferred()?;
        // The members and slots of the buffer packets are to read.
        let room = self.sizes.ring_size;
        let info = &VipInfo {
            members: lb_common::members_base(
                info.vip_id,
                info.active_ring,
                self.sizes.max_vip_backends.max(1),
            ),
            ring: lb_common::ring_base(info.vip_id, info.active_ring, room),
            ring_size: match info.ring_size {
                0 => room,
                n => n.min(room),
            },
            ..*info
        };
        let mut m: HashMap<&mut MapData, VipKey, VipInfo> =
            HashMap::try_from(self.map_mut(maps::VIPS)).map_err(map_err(maps::VIPS))?;
        m.insert(key, info, 0).map_err(map_err(maps::VIPS))?;
        // After the VIP: a set bit without a VIP only costs a lookup.
        let w = self.filter.set(*key, *info);
        self.write_filter(w)?;
        self.write_stateless_word(VipFilter::bit(key) / 64)
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.write_deferred()?;
        let mut m: HashMap<&mut MapData, VipKey, VipInfo> =
            HashMap::try_from(self.map_mut(maps::VIPS)).map_err(map_err(maps::VIPS))?;
        m.remove(key).map_err(map_err(maps::VIPS))?;
        let w = self.filter.remove(key);
        self.write_filter(w)?;
        self.write_stateless_word(VipFilter::bit(key) / 64)
    }

    fn set_vip_addr(&mut self, key: &AddrKey, flags: u32) -> Result<()> {
        self.write_deferred()?;
        let mut m: HashMap<&mut MapData, AddrKey, u32> =
            HashMap::try_from(self.map_mut(maps::VIP_ADDRS)).map_err(map_err(maps::VIP_ADDRS))?;
        m.insert(key, flags, 0).map_err(map_err(maps::VIP_ADDRS))
    }

    fn remove_vip_addr(&mut self, key: &AddrKey) -> Result<()> {
        self.write_deferred()?;
        let mut m: HashMap<&mut MapData, AddrKey, u32> =
            HashMap::try_from(self.map_mut(maps::VIP_ADDRS)).map_err(map_err(maps::VIP_ADDRS))?;
        m.remove(key).map_err(map_err(maps::VIP_ADDRS))
    }

    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        let m: HashMap<&MapData, VipKey, VipInfo> =
            HashMap::try_from(self.map(maps::VIPS)).map_err(map_err(maps::VIPS))?;
        Ok(m.iter().filter_map(|r| r.ok()).collect())
    }

    /// Read in batches: a lookup per slot took half a second at 512 000.
    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        let mut out = Vec::new();
        self.read_batches::<Backend>(maps::BACKENDS, 1, |ids, values| {
            out.extend(
                ids.iter()
                    .zip(values)
                    .filter(|(_, b)| b.flags & lb_common::BACKEND_F_USED != 0 || b.gen != 0)
                    .map(|(i, b)| (*i, *b)),
            );
        })?;
        Ok(out)
    }

    fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        let a: PerCpuArray<&MapData, VipStats> =
            PerCpuArray::try_from(self.map(maps::VIP_STATS)).map_err(map_err(maps::VIP_STATS))?;
        let v = a.get(&vip_id, 0).map_err(map_err(maps::VIP_STATS))?;
        Ok(v.iter().sum())
    }

    fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        let a: PerCpuArray<&MapData, BackendStats> =
            PerCpuArray::try_from(self.map(maps::BACKEND_STATS))
                .map_err(map_err(maps::BACKEND_STATS))?;
        let v = a.get(&id, 0).map_err(map_err(maps::BACKEND_STATS))?;
        Ok(v.iter().sum())
    }

    /// One `BPF_MAP_LOOKUP_BATCH` per 4096 slots, where a lookup each
    /// took 110 ms for `lb status` at 65 024 slots.
    fn all_backend_stats(&self) -> Result<Vec<BackendStats>> {
        let cpus = self.cpus;
        let mut out = Vec::new();
        self.read_batches::<BackendStats>(maps::BACKEND_STATS, cpus, |ids, values| {
            for (id, per_cpu) in ids.iter().zip(values.chunks(cpus)) {
                let i = *id as usize;
                if out.len() <= i {
                    out.resize(i + 1, BackendStats::default());
                }
                out[i] = per_cpu.iter().sum();
            }
        })?;
        Ok(out)
    }

    fn clear_stats(&mut self, vip_id: Option<u32>, backend_id: Option<u32>) -> Result<()> {
        let cpus = self.cpus;
        if let Some(id) = vip_id {
            self.write_deferred()?;
            let mut a: PerCpuArray<&mut MapData, VipStats> =
                PerCpuArray::try_from(self.map_mut(maps::VIP_STATS))
                    .map_err(map_err(maps::VIP_STATS))?;
            let zero = aya::maps::PerCpuValues::try_from(vec![VipStats::default(); cpus])
                .map_err(|e| DataPlaneError::Setup(e.to_string()))?;
            a.set(id, zero, 0).map_err(map_err(maps::VIP_STATS))?;
        }
        if let Some(id) = backend_id {
            self.clear_backend(id)?;
        }
        Ok(())
    }

    fn set_limit(&mut self, id: u32, limit: &BackendLimit) -> Result<()> {
        self.put_limit(id, limit)
    }

    fn set_nat_addrs(&mut self, vip_id: u32, addrs: &[std::net::IpAddr]) -> Result<()> {
        self.write_deferred()?;
        self.write_nat_addrs(vip_id, addrs)
    }

    fn load(&self, id: u32) -> Result<u64> {
        let a: Array<&MapData, u64> =
            Array::try_from(self.map(maps::LOADS)).map_err(map_err(maps::LOADS))?;
        a.get(&id, 0).map_err(map_err(maps::LOADS))
    }

    fn counters(&self) -> Result<Vec<u64>> {
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(maps::COUNTERS)).map_err(map_err(maps::COUNTERS))?;
        (0..lb_common::counter::COUNT)
            .map(|i| {
                a.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(maps::COUNTERS))
            })
            .collect()
    }
}
