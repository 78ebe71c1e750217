//! The flow table's growth. A table is made with room for the flows the
//! pool file names (`tables.flow_table_size`), but only part of it is in
//! use at first (`lb_common::flow_sets_start`): a cold flow's set then lies
//! in a few megabytes, not in all of the table, which costs it fewer TLB
//! and cache misses. When the census finds the flows held past a quarter
//! of the entries in use, the table grows (`lb_common::flow_sets_for`):
//!
//! 1. `Config` gets the new set count, with the one before in
//!    `flow_sets_old`. New flows are stored at their new set; a lookup
//!    tries the new set, then the old.
//! 2. `lb_flow_move` runs over every old set: each flow whose set changed
//!    is stored at its new set, then marked gone at its old one.
//! 3. `Config` gets `flow_sets_old` equal to `flow_sets`.
//!
//! No flow is missed in between, and none is lost: a daemon stopped in
//! the middle leaves step 1's `Config` pinned, and the next one's census
//! carries on from there. The table never shrinks.
use super::*;
use aya::maps::Map;
use lb_common::{FlowMove, CONFIG_F_FLOWS_WHOLE};

/// Held while `Config` is read and written back by the map writer
/// (`set_config`) or by a growth: each keeps the other's part.
pub(super) static CONFIG_WRITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How often a set is tried again when its move met another writer.
const MOVE_TRIES: usize = 16;

/// `xdp_action::XDP_PASS`: `lb_flow_move` moved every flow of the set.
const XDP_PASS: u32 = 2;

/// What a growth did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Growth {
    /// Sets in use before and after.
    pub from: u32,
    pub to: u32,
    /// Sets whose move kept meeting another writer: a flow of theirs is
    /// scheduled anew with its next packet (to the same backend, while the
    /// VIP's table is unchanged).
    pub sets_unmoved: u32,
}

/// `CONFIG`, as written last (the geometry of a table not yet configured
/// is all zero).
pub(super) fn read_config(config: &Map) -> Result<Config> {
    let a: Array<&MapData, Config> = Array::try_from(config).map_err(map_err(maps::CONFIG))?;
    a.get(&0, 0).map_err(map_err(maps::CONFIG))
}

fn write_config(config: &mut Map, cfg: Config) -> Result<()> {
    let mut a: Array<&mut MapData, Config> =
        Array::try_from(config).map_err(map_err(maps::CONFIG))?;
    a.set(0, cfg, 0).map_err(map_err(maps::CONFIG))
}

/// The table's geometry to write into `cfg` (`flow_sets`, `flow_sets_old`):
/// as `CONFIG` has it, or the start for a table of `max` sets never
/// configured (`flow_sets_start`; all of it with `CONFIG_F_FLOWS_WHOLE`).
/// Called with `CONFIG_WRITE` held.
pub(super) fn keep_geometry(cfg: &mut Config, written: &Config, max: u32) {
    if written.flow_sets == 0 || written.flow_sets > max {
        cfg.flow_sets = if cfg.flags & CONFIG_F_FLOWS_WHOLE != 0 {
            max
        } else {
            lb_common::flow_sets_start(max)
        };
        cfg.flow_sets_old = cfg.flow_sets;
    } else {
        cfg.flow_sets = written.flow_sets;
        cfg.flow_sets_old = written.flow_sets_old;
    }
}

/// Grows the table of at most `max` sets whose `CONFIG` is `config` if
/// `held` flows call for it (or finishes a growth an earlier daemon left),
/// moving flows with `mover()` (`lb_flow_move`, opened only for a growth:
/// the daemon asks ten times a second). `None`: no growth.
fn grow<M: std::borrow::Borrow<Xdp>>(
    config: &mut Map,
    held: u64,
    max: u32,
    mover: impl FnOnce() -> Result<M>,
) -> Result<Option<Growth>> {
    match begin(config, held, max)? {
        Some((from, to)) => finish(config, mover()?.borrow(), from, to).map(Some),
        None => Ok(None),
    }
}

/// Step 1 of a growth of the table of at most `max` sets whose `CONFIG`
/// is `config` (or none, if `held` flows do not call for one), or the
/// growth an earlier daemon left under way: its sets before and after.
fn begin(config: &mut Map, held: u64, max: u32) -> Result<Option<(u32, u32)>> {
    let _w = CONFIG_WRITE.lock().expect("config writer");
    let mut cfg = read_config(config)?;
    if cfg.flow_sets == 0 {
        // Not configured yet.
        return Ok(None);
    }
    if cfg.flow_sets_old == cfg.flow_sets {
        // All of it once a reload asks for the whole table.
        let to = if cfg.flags & CONFIG_F_FLOWS_WHOLE != 0 {
            max
        } else {
            lb_common::flow_sets_for(held, cfg.flow_sets, max)
        };
        if to == cfg.flow_sets {
            return Ok(None);
        }
        cfg.flow_sets_old = cfg.flow_sets;
        cfg.flow_sets = to;
        write_config(config, cfg)?;
    }
    Ok(Some((cfg.flow_sets_old, cfg.flow_sets)))
}

/// Steps 2 and 3 of a growth from `from` sets to `to`.
fn finish(config: &mut Map, mover: &Xdp, from: u32, to: u32) -> Result<Growth> {
    // A packet that read `Config` before it changed stores its flow at
    // the old size: let those finish before the old sets are walked.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut sets_unmoved = 0;
    for set in 0..from {
        if !move_set(mover, set, to)? {
            sets_unmoved += 1;
        }
    }
    let _w = CONFIG_WRITE.lock().expect("config writer");
    let mut cfg = read_config(config)?;
    cfg.flow_sets_old = cfg.flow_sets;
    write_config(config, cfg)?;
    Ok(Growth {
        from,
        to,
        sets_unmoved,
    })
}

/// Runs `lb_flow_move` on set `set` for a table of `sets` sets until every
/// flow of the set moved (at most `MOVE_TRIES` times); whether they did.
fn move_set(mover: &Xdp, set: u32, sets: u32) -> Result<bool> {
    let req = FlowMove { set, sets, _pad: 0 };
    for _ in 0..MOVE_TRIES {
        if super::programs::run_on(mover, progs::FLOW_MOVE, &req)? == XDP_PASS {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `CONFIG` opened with a handle of its own (`map`: this program's).
fn own_config(map: &aya::maps::Map) -> Result<Map> {
    Ok(Map::Array(own_handle(
        map_data(map).expect("an array"),
        maps::CONFIG,
    )?))
}

impl BpfDataPlane {
    /// Grows the flow table if `held` flows call for it (what the daemon's
    /// census does with the flows it finds): for the packet tests and
    /// benches.
    pub fn grow_flow_table(&self, held: u64) -> Result<Option<Growth>> {
        let mut config = own_config(self.map(maps::CONFIG))?;
        let max = lb_common::flow_sets(self.sizes.flows);
        grow(&mut config, held, max, || {
            super::programs::xdp(&self.ebpf, progs::FLOW_MOVE)
        })
    }

    /// Only the first step of the growth `held` flows call for (`Config`
    /// written, no flow moved), as a daemon stopped in the middle of one
    /// leaves it: for the packet tests. The sets before and after.
    pub fn begin_flow_growth(&self, held: u64) -> Result<Option<(u32, u32)>> {
        let mut config = own_config(self.map(maps::CONFIG))?;
        begin(&mut config, held, lb_common::flow_sets(self.sizes.flows))
    }

    /// The flow table's sets in use, and before a growth under way (else
    /// the same).
    pub fn flow_sets(&self) -> Result<(u32, u32)> {
        let cfg = read_config(self.map(maps::CONFIG))?;
        Ok((cfg.flow_sets, cfg.flow_sets_old))
    }
}

/// New flows the data path of instance `instance` has counted
/// (`counter::NEW_FLOW`, all CPUs): read between censuses, so that a burst
/// of new flows grows the table before the next one.
pub fn new_flows_counted(instance: &str) -> Result<u64> {
    let m = Map::PerCpuArray(pinned_map(instance, maps::COUNTERS)?);
    let a: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(&m).map_err(map_err(maps::COUNTERS))?;
    let v = a
        .get(&lb_common::counter::NEW_FLOW, 0)
        .map_err(map_err(maps::COUNTERS))?;
    Ok(v.iter().sum())
}

/// [`grow`] on the pinned maps of instance `instance` (a table of at most
/// `max` sets), for `held` flows.
pub fn grow_pinned(instance: &str, held: u64, max: u32) -> Result<Option<Growth>> {
    let mut config = Map::Array(pinned_map(instance, maps::CONFIG)?);
    grow(&mut config, held, max, || {
        pinned_xdp(instance, progs::FLOW_MOVE)
    })
}

/// Only the first step of the growth `held` flows call for, on the pinned
/// maps of instance `instance` (`Config` written, no flow moved), as a
/// daemon stopped in the middle of one leaves it: for the end-to-end
/// tests. The sets before and after.
pub fn begin_growth_pinned(instance: &str, held: u64, max: u32) -> Result<Option<(u32, u32)>> {
    begin(
        &mut Map::Array(pinned_map(instance, maps::CONFIG)?),
        held,
        max,
    )
}
