//! Active flows per backend: the flow table read in batches
//! (`BPF_MAP_LOOKUP_BATCH`).
use super::*;

pub use lb_common::monotonic_ns;

/// Flows per backend id seen within `max_idle_ns` in the flow table
/// `flows`, scanning at most `limit` entries.
/// Reads the table in batches (`BPF_MAP_LOOKUP_BATCH`, 4096 entries a
/// call): a million flows take a few hundred calls, where a key-by-key walk
/// takes two million and starts over whenever its key is evicted.
pub fn count_flows_in(
    flows: &MapData,
    max_idle_ns: u64,
    limit: usize,
) -> Result<std::collections::HashMap<u32, u64>> {
    let now = monotonic_ns();
    let mut out = std::collections::HashMap::new();
    walk_flows(flows, limit, |_, v| {
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

/// Hands each entry of the flow table to `each`, up to `limit` of them.
pub(super) fn walk_flows(
    flows: &MapData,
    limit: usize,
    mut each: impl FnMut(&FlowKey, &FlowValue),
) -> Result<()> {
    let mut seen = 0;
    lookup_batches(flows, |keys, values| {
        for (k, v) in keys.iter().zip(values) {
            each(k, v);
        }
        seen += values.len();
        seen < limit
    })
    .map_err(|source| DataPlaneError::Io {
        what: format!("reading `{}` in batches", maps::FLOWS),
        source,
    })
}

/// Hands every entry of the flow table to `each`, a batch at a time, until
/// the table ends or `each` says stop.
fn lookup_batches(
    flows: &MapData,
    mut each: impl FnMut(&[FlowKey], &[FlowValue]) -> bool,
) -> std::io::Result<()> {
    super::batch::lookup_batches_of(flows, 1, |k, v| each(k, v))
}
