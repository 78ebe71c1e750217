//! Keeping the data path's connection counts (`LOADS`) true: the flows it
//! cannot see end (a client gone without a FIN, a UDP flow left idle) are
//! ended here, and what left the table uncounted is taken off.
use super::*;
use aya::programs::Xdp;
use lb_common::{BACKEND_F_USED, FLOW_OPEN, FLOW_UDP, LAST_SEEN_GRANULARITY_NS};
use std::collections::HashMap as Map;
use std::sync::atomic::{AtomicU64, Ordering};

/// What one pass over the flow table found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowCensus {
    /// Flows per backend id seen within the idle limit (for `lb status`).
    pub flows: Map<u32, u64>,
    /// Counted flows ended for being idle (UDP past its timeout, TCP past
    /// `TCP_COUNT_IDLE_NS`).
    pub ended: u64,
    /// Counted flows no longer in the table (evicted), taken off.
    pub lost: u64,
    /// Flows the table holds (any age).
    pub held: u64,
    /// Sets of the table in use (`Config::flow_sets`), after the growth.
    pub sets: u32,
    /// The table's growth the pass made (`grow`), if any.
    pub growth: Option<Growth>,
}

/// The pinned maps of instance `instance`, walked as [`census_of`] does;
/// then the flow table (of at most `max_sets` sets) grown if the flows
/// held call for it, or a growth left unfinished finished (`grow`).
pub fn flow_census(
    instance: &str,
    max_idle_ns: u64,
    udp_idle_ns: u64,
    limit: usize,
    max_sets: u32,
) -> Result<FlowCensus> {
    use aya::maps::Map;
    let open = |name: &'static str| pinned_map(instance, name);
    let maps = CensusMaps {
        swap: &pinned_xdp(instance, progs::FLOW_SWAP)?,
        flows: &Map::ArrayOfMaps(open(maps::FLOWS)?),
        config: &Map::Array(open(maps::CONFIG)?),
        backends: &Map::Array(open(maps::BACKENDS)?),
        stats: &Map::PerCpuArray(open(maps::BACKEND_STATS)?),
        loads: &Map::Array(open(maps::LOADS)?),
    };
    let mut out = census_of(&maps, max_idle_ns, udp_idle_ns, limit)?;
    out.growth = grow_pinned(instance, out.held, max_sets)?;
    if let Some(g) = out.growth {
        out.sets = g.to;
    }
    Ok(out)
}

impl BpfDataPlane {
    /// [`census_of`] over this program's maps (the packet tests').
    pub fn flow_census(&self, max_idle_ns: u64, udp_idle_ns: u64) -> Result<FlowCensus> {
        let maps = CensusMaps {
            swap: super::programs::xdp(&self.ebpf, progs::FLOW_SWAP)?,
            flows: self.map(maps::FLOWS),
            config: self.map(maps::CONFIG),
            backends: self.map(maps::BACKENDS),
            stats: self.map(maps::BACKEND_STATS),
            loads: self.map(maps::LOADS),
        };
        census_of(&maps, max_idle_ns, udp_idle_ns, usize::MAX)
    }
}

/// The maps a census reads.
struct CensusMaps<'a> {
    /// `lb_flow_swap`, loaded: ends a flow's count.
    swap: &'a Xdp,
    flows: &'a aya::maps::Map,
    config: &'a aya::maps::Map,
    backends: &'a aya::maps::Map,
    stats: &'a aya::maps::Map,
    loads: &'a aya::maps::Map,
}

/// One pass over the flow table (at most `limit` entries): flows per
/// backend, and the connection counts made true.
///
/// A counted flow (`FLOW_OPEN`) idle past its limit is ended here: its
/// mark cleared (only if the entry is as it was read) and its backend's
/// count lowered by one, exactly. Then each backend's count is set against
/// the counted flows found: what it holds beyond them and beyond every
/// new flow of the backend during the pass (which the pass may have missed)
/// is flows gone from the table uncounted (an entry two CPUs wrote at once
/// is dropped); that much is taken off. The bound makes the
/// correction safe under traffic (never below the truth), and it catches up
/// over passes.
fn census_of(
    m: &CensusMaps,
    max_idle_ns: u64,
    udp_idle_ns: u64,
    limit: usize,
) -> Result<FlowCensus> {
    let backends: Array<&MapData, Backend> =
        Array::try_from(m.backends).map_err(map_err(maps::BACKENDS))?;
    let slots = backends.len();
    let gens: Vec<Option<u32>> = (0..slots)
        .map(|i| {
            backends
                .get(&i, 0)
                .ok()
                .filter(|b| b.flags & BACKEND_F_USED != 0)
                .map(|b| b.gen)
        })
        .collect();
    let new_flows = |m: &CensusMaps| -> Result<Vec<u64>> {
        let a: PerCpuArray<&MapData, BackendStats> =
            PerCpuArray::try_from(m.stats).map_err(map_err(maps::BACKEND_STATS))?;
        Ok((0..slots)
            .map(|i| match gens[i as usize] {
                Some(_) => a
                    .get(&i, 0)
                    .map_or(0, |v| v.iter().map(|s| s.new_flows).sum()),
                None => 0,
            })
            .collect())
    };
    let data = |m| map_data(m).expect("an array");
    let loads = LoadsMmap::new(data(m.loads), slots as usize)?;
    // The sets in use only; ending a flow finds it by index.
    let cfg = super::grow::read_config(m.config)?;
    let flows = FlowTable::map(
        data(m.flows),
        (cfg.flow_sets != 0).then(|| FlowGeometry::of(&cfg)),
    )?;
    let opened_before = new_flows(m)?;
    let now = monotonic_ns();
    let mut out = FlowCensus {
        sets: cfg.flow_sets,
        ..FlowCensus::default()
    };
    let mut counted = vec![0u64; slots as usize];
    let mut to_end: Vec<(usize, FlowValue)> = Vec::new();
    flows.each(limit, |i, _, v| {
        out.held += 1;
        if seen_within(now, v, max_idle_ns) {
            *out.flows.entry(v.backend).or_insert(0) += 1;
        }
        let b = v.backend as usize;
        if v.last_seen_ns & FLOW_OPEN == 0 || gens.get(b).copied().flatten() != Some(v.gen) {
            return;
        }
        let idle_limit = if v.last_seen_ns & FLOW_UDP != 0 {
            udp_idle_ns
        } else {
            lb_common::TCP_COUNT_IDLE_NS
        };
        if now.saturating_sub(v.last_seen_ns) > idle_limit + LAST_SEEN_GRANULARITY_NS {
            to_end.push((i, *v));
        } else {
            counted[b] += 1;
        }
    })?;
    for (i, v) in to_end {
        // Only the entry as it was read: a packet since may have renewed
        // its stamp, or a new flow taken the entry. A packet that ends the
        // same flow (a FIN, or its UDP expiry) right after the swap, having
        // read the stamp before it, takes the count off twice: it stays one
        // low (passes only lower counts). Rare; the data path reads a count
        // below 0 as 0.
        if flows.swap_stamp(m.swap, i, v.last_seen_ns, v.last_seen_ns & !FLOW_OPEN)? {
            loads.sub(v.backend as usize, 1);
            out.ended += 1;
        }
    }
    let opened_after = new_flows(m)?;
    for b in 0..slots as usize {
        if gens[b].is_none() {
            continue;
        }
        let now_counted = loads.get(b);
        let during = opened_after[b].saturating_sub(opened_before[b]);
        // A count below 0 (taken off twice in a race) is left to the next pass.
        if now_counted > u64::MAX / 2 {
            continue;
        }
        let extra = now_counted.saturating_sub(counted[b] + during);
        if extra > 0 {
            loads.sub(b, extra);
            out.lost += extra;
        }
    }
    Ok(out)
}

/// `LOADS` mapped into our memory: its counts are changed with atomic
/// operations, as the data path's are.
struct LoadsMmap {
    ptr: *mut AtomicU64,
    len: usize,
}

impl LoadsMmap {
    fn new(map: &MapData, len: usize) -> Result<Self> {
        let ptr = super::ring::mmap_array(map, len * 8, maps::LOADS)?;
        Ok(LoadsMmap {
            ptr: ptr as *mut AtomicU64,
            len,
        })
    }

    fn get(&self, i: usize) -> u64 {
        assert!(i < self.len);
        // SAFETY: in bounds of the mapping, which lives as long as self.
        unsafe { &*self.ptr.add(i) }.load(Ordering::Relaxed)
    }

    fn sub(&self, i: usize, n: u64) {
        assert!(i < self.len);
        // SAFETY: as in `get`.
        unsafe { &*self.ptr.add(i) }.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for LoadsMmap {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr as *mut _, (self.len * 8).div_ceil(4096) * 4096) };
    }
}
