//! Active flows per backend: the flow table read a chunk at a time
//! (`FlowTable`).
use super::*;

pub use lb_common::monotonic_ns;

/// Flows per backend id seen within `max_idle_ns` in the flow table
/// `flows`, scanning at most `limit` entries.
pub fn count_flows_in(
    flows: &MapData,
    max_idle_ns: u64,
    limit: usize,
) -> Result<std::collections::HashMap<u32, u64>> {
    let now = monotonic_ns();
    let mut out = std::collections::HashMap::new();
    // Counting needs no key's set: no seed.
    FlowTable::map(flows, None)?.each(limit, |_, _, v| {
        if seen_within(now, v, max_idle_ns) {
            *out.entry(v.backend).or_insert(0) += 1;
        }
    })?;
    Ok(out)
}

/// Whether flow `v` had a packet within `max_idle_ns` of `now` (its
/// last-seen time is refreshed at most once a second by the data path).
pub(super) fn seen_within(now: u64, v: &FlowValue, max_idle_ns: u64) -> bool {
    now.saturating_sub(v.last_seen_ns) <= max_idle_ns + lb_common::LAST_SEEN_GRANULARITY_NS
}

impl BpfDataPlane {
    /// The flow table, open (the packet tests and benches read and write
    /// it through this).
    pub fn flow_table(&self) -> Result<FlowTable> {
        let cfg = super::grow::read_config(self.map(maps::CONFIG))?;
        FlowTable::map(
            map_data(self.map(maps::FLOWS)).expect("an array of maps"),
            Some(FlowGeometry::of(&cfg)),
        )
    }
}

/// The flow table pinned by instance `instance`, open (with its size and
/// seed, from the pinned `CONFIG`).
pub fn pinned_flow_table(instance: &str) -> Result<FlowTable> {
    let config = aya::maps::Map::Array(pinned_map(instance, maps::CONFIG)?);
    let cfg = super::grow::read_config(&config)?;
    FlowTable::map(
        &pinned_map(instance, maps::FLOWS)?,
        Some(FlowGeometry::of(&cfg)),
    )
}
