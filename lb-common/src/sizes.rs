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
        .map_max_entries(maps::FLOWS, s.flows)
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
