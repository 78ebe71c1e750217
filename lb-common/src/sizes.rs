//! The balancer's map sizes, chosen at load time from the pool file.
#[cfg(feature = "user")]
use crate::{
    layout::maps,
    ring::{members_entries, rings_entries},
};

/// Map sizes chosen at load time (from the pool file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub max_vips: u32,
    pub max_backends: u32,
    pub ring_size: u32,
    pub flows: u32,
    /// Entries of `PERSIST`.
    pub persist: u32,
    /// Stateless VIPs `CHAINS` has room for.
    pub stateless_vips: u32,
    /// Backends one VIP's table can name (`MEMBERS` per VIP and buffer).
    pub max_vip_backends: u32,
}

/// Sets the balancer's map sizes on a loader.
#[cfg(feature = "user")]
pub fn size_maps(loader: &mut aya::EbpfLoader<'_>, s: MapSizes) {
    loader
        .map_max_entries(maps::VIPS, s.max_vips)
        .map_max_entries(maps::VIP_ADDRS, s.max_vips)
        .map_max_entries(maps::VIP_STATS, s.max_vips)
        .map_max_entries(maps::BACKENDS, s.max_backends)
        .map_max_entries(maps::BACKEND_STATS, s.max_backends)
        .map_max_entries(maps::NEXTHOPS, s.max_backends)
        .map_max_entries(maps::RINGS, rings_entries(s.max_vips, s.ring_size))
        .map_max_entries(
            maps::MEMBERS,
            members_entries(s.max_vips, s.max_vip_backends.max(1)),
        )
        .map_max_entries(maps::FLOWS, crate::flow_chunks(flow_sets(s.flows)))
        .map_max_entries(maps::RR_POS, s.max_vips)
        .map_max_entries(maps::LOADS, s.max_backends)
        .map_max_entries(maps::LIMITS, s.max_backends)
        .map_max_entries(maps::PERSIST, s.persist)
        .map_max_entries(maps::NAT_REPLIES, s.flows)
        .map_max_entries(maps::CHAINS, s.stateless_vips.max(1) * s.ring_size)
        .map_max_entries(
            maps::NAT_ADDRS,
            s.max_vips * 2 * crate::NAT_ADDRS_PER_FAMILY,
        );
}

/// Sets of the flow table made for `flows` flows: twice as many entries
/// (a power of two of sets), so that a set is seldom full before the table
/// holds `flows`. A new flow whose set is full takes the entry of a flow
/// seen in one packet, else of the flow seen longest ago. With `flows`
/// stored (spread at random over sets of 8 by the keyed hash), about 1
/// flow in 120 has pushed another out; with half, 1 in 7000; with a
/// quarter, 1 in a million.
pub const fn flow_sets(flows: u32) -> u32 {
    let entries = (flows as u64) * 2;
    let sets = entries.div_ceil(crate::flow::FLOW_WAYS as u64);
    (sets as u32).next_power_of_two()
}

/// Sets of a table of `max` sets (`flow_sets`) in use when it is made:
/// a quarter of them, at least 4096 (a megabyte), at most all. Flows up
/// to a sixteenth of what the table is made for fill at most a quarter
/// of that; the daemon grows it as more are held (`flow_sets_for`).
pub const fn flow_sets_start(max: u32) -> u32 {
    let s = max / 4;
    if s >= FLOW_SETS_FEWEST {
        s
    } else if max < FLOW_SETS_FEWEST {
        max
    } else {
        FLOW_SETS_FEWEST
    }
}

/// The fewest sets in use (`flow_sets_start`).
const FLOW_SETS_FEWEST: u32 = 4096;

/// Sets the table should use, at most `max`, with `held` flows in it and
/// `sets` in use: `sets` while the flows fill at most a quarter of its
/// entries, else the fewest (twice, four times...) they fill a quarter of.
/// Full to a quarter, about one new flow in 7000 takes the place of
/// another in its set (`flow_sets`); growing doubles the room at least.
pub const fn flow_sets_for(held: u64, sets: u32, max: u32) -> u32 {
    let mut s = sets;
    while s < max && held * 4 > s as u64 * crate::flow::FLOW_WAYS as u64 {
        s *= 2;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_starts_at_a_quarter_and_grows_to_keep_flows_within_a_quarter() {
        assert_eq!(flow_sets_start(1 << 18), 1 << 16);
        assert_eq!(flow_sets_start(1 << 14), 4096);
        assert_eq!(flow_sets_start(1 << 13), 4096);
        assert_eq!(flow_sets_start(256), 256);
        // 2^15 sets: 262 144 entries, a quarter is 65 536 flows.
        assert_eq!(flow_sets_for(65_536, 1 << 15, 1 << 18), 1 << 15);
        assert_eq!(flow_sets_for(65_537, 1 << 15, 1 << 18), 1 << 16);
        assert_eq!(flow_sets_for(100_000, 1 << 15, 1 << 18), 1 << 16);
        assert_eq!(flow_sets_for(300_000, 1 << 15, 1 << 18), 1 << 18);
        // Never past the table, never smaller.
        assert_eq!(flow_sets_for(10_000_000, 1 << 15, 1 << 18), 1 << 18);
        assert_eq!(flow_sets_for(0, 1 << 16, 1 << 18), 1 << 16);
    }

    #[test]
    fn the_flow_table_has_twice_the_entries_asked_in_a_power_of_two_of_sets() {
        assert_eq!(flow_sets(1 << 20), 1 << 18);
        assert_eq!(flow_sets(1000), 256);
        assert_eq!(flow_sets(8), 2);
        assert_eq!(flow_sets(1), 1);
        // The largest `tables.flow_table_size`.
        assert_eq!(flow_sets(64 << 20), 1 << 24);
    }

    #[test]
    fn a_set_is_found_in_its_chunk_by_a_multiply_as_by_a_division() {
        let sets = flow_sets(64 << 20);
        for set in (0..sets).step_by(7).chain(sets - 70..sets).chain([
            u32::MAX >> 1,
            u32::MAX - 1,
            u32::MAX,
        ]) {
            assert_eq!(
                crate::chunk_of(set),
                (set / crate::FLOW_CHUNK_SETS, set % crate::FLOW_CHUNK_SETS),
                "set {set}"
            );
        }
        assert_eq!(crate::flow_chunks(flow_sets(1 << 20)), 2081);
        assert_eq!(crate::flow_chunks(1), 1);
    }
}
