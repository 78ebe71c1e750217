//! Types, map names and the flow hash shared by the XDP program and the daemon.
//!
//! Everything that crosses the kernel/user line is `#[repr(C)]` with explicit
//! padding and a size assertion, so both sides agree byte for byte. Addresses
//! are kept as the raw octets of the packet loaded into native `u32` words
//! (`[u32; 4]`, IPv4 in word 0, the rest zero) and ports in network byte order,
//! exactly as the data path reads them, so no byte swapping happens per packet.
#![no_std]

#[cfg(any(feature = "user", test))]
extern crate std;
#[cfg(any(feature = "user", test))]
use std::{format, string::String};

/// Map names, as the XDP object declares them and the daemon opens and pins them.
pub mod maps {
    /// `HashMap<VipKey, VipInfo>`: the services.
    pub const VIPS: &str = "VIPS";
    /// `HashMap<AddrKey, u32>`: every address that carries a VIP (flags `ADDR_F_*`).
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    /// `Array<Backend>`: backend slots, indexed by backend id.
    pub const BACKENDS: &str = "BACKENDS";
    /// `Array<u64>` (mmapable): the Maglev tables, two buffers per VIP (`pack_ring`).
    pub const RINGS: &str = "RINGS";
    /// `LruHashMap<FlowKey, FlowValue>`: the connection table.
    pub const FLOWS: &str = "FLOWS";
    /// `Array<Config>`, one entry: global settings.
    pub const CONFIG: &str = "CONFIG";
    /// `PerCpuArray<VipStats>` indexed by VIP id.
    pub const VIP_STATS: &str = "VIP_STATS";
    /// `PerCpuArray<BackendStats>` indexed by backend id.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// `PerCpuArray<u64>` indexed by `counter::*`.
    pub const COUNTERS: &str = "COUNTERS";
    /// Per-CPU next-hop cache of the data path, indexed by backend id (kernel side only).
    pub const NEXTHOPS: &str = "NEXTHOPS";
    /// `Array<u64>` of `VIP_FILTER_WORDS`: one bit per `vip_filter_bit` of
    /// every VIP. Derived from `VIPS` by the daemon at load and on every
    /// change, so it is not pinned.
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// `Array<VipEntry>` of `VIP_FILTER_BITS`: at a filter bit that exactly
    /// one VIP sets, that VIP (key and info), so a new flow finds its VIP
    /// with no hash-map lookup; elsewhere empty. Derived like `VIP_FILTER`.
    pub const VIP_INDEX: &str = "VIP_INDEX";
    /// `HashMap<AddrKey, u32>`: on backends, the VIPs the decapsulation program accepts.
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    /// `PerCpuArray<u64>` indexed by `decap_counter::*`.
    pub const DECAP_COUNTERS: &str = "DECAP_COUNTERS";
    /// `LpmTrie<DecapSource, u32>`: on backends, the outer sources (the
    /// balancers' encapsulation prefixes) tunnels are accepted from.
    pub const DECAP_SOURCES: &str = "DECAP_SOURCES";
}

/// Program names in the object file.
pub mod progs {
    pub const BALANCER: &str = "lb_xdp";
    pub const DECAP: &str = "lb_decap";
    pub const PASS: &str = "lb_pass";
    /// Writes `bpf_jiffies64()` and `bpf_ktime_get_ns()` (little-endian
    /// `u64`s) into the first 16 bytes of its input: run by `calibrate_clock`.
    pub const CLOCK: &str = "lb_clock";
}

/// Default sizes; the daemon overrides them at load time from the pool file.
pub mod defaults {
    pub const MAX_VIPS: u32 = 64;
    pub const MAX_BACKENDS: u32 = 4096;
    pub const RING_SIZE: u32 = 65537;
    pub const FLOW_TABLE_SIZE: u32 = 1 << 20;
    pub const UDP_IDLE_TIMEOUT_NS: u64 = 30_000_000_000;
    /// How long the data path reuses a next hop before asking the FIB again.
    pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;
    pub const MTU: u32 = 1500;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

/// A Maglev slot that holds no backend (every backend of the VIP is down).
pub const NO_BACKEND: u32 = u32::MAX;

/// Forwarding modes (`VipInfo::mode`).
pub mod mode {
    /// IPIP / IP6IP6 / 4in6 encapsulation, direct server return.
    pub const ENCAP: u8 = 0;
}

/// Schedulers (`VipInfo::scheduler`).
pub mod scheduler {
    pub const MAGLEV: u8 = 0;
}

/// `AddrKey` value flags (`VIP_ADDRS`).
pub const ADDR_F_VIP: u32 = 1;
/// At least one VIP on this address listens on every port (port 0).
pub const ADDR_F_ANY_PORT: u32 = 2;

/// `Backend::flags`: the backend must not receive traffic, even of existing
/// flows (disabled, or its slot released); flows that hit it are rescheduled.
pub const BACKEND_F_DOWN: u8 = 1;
/// `Backend::flags`: slot in use.
pub const BACKEND_F_USED: u8 = 2;
/// `Backend::flags`: failing its health checks. Out of the table; packets of
/// its UDP flows are rescheduled (a stateless service answers anywhere), its
/// established TCP connections stay (moving them to another backend can only
/// reset them; if the backend is really gone they are lost either way, and a
/// false alarm costs nothing).
pub const BACKEND_F_UNHEALTHY: u8 = 4;

/// A service address: (address, port, protocol). Port 0 means every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index of this VIP's tables and counters.
    pub vip_id: u32,
    /// Forwarding mode, `mode::*`.
    pub mode: u8,
    /// Scheduler, `scheduler::*`.
    pub scheduler: u8,
    /// Which of the VIP's two Maglev buffers packets read (0 or 1).
    pub active_ring: u8,
    pub _pad: u8,
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<VipInfo>() == 12);

/// An address alone (for ICMP and fragment policy, and the decapsulator).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    pub family: u8,
    /// `BACKEND_F_*`.
    pub flags: u8,
    /// The VIP this slot serves. A backend address behind two VIPs has two
    /// slots, because health and state are per VIP. Lets a restarted daemon
    /// rebuild its slot assignment from the pinned maps alone.
    pub vip_id: u16,
    /// Bumped each time the slot is given to another backend (of this or
    /// another VIP), and kept when it is released: a flow entry remembers the
    /// generation it was made under, so a reused slot (even one a removed
    /// VIP's successor took with the same VIP id) never inherits old flows.
    pub gen: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

/// A connection, as the client sent it. Addresses and ports as in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// What the flow table remembers of a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: u32,
    pub vip_id: u32,
    /// The data path's clock (CLOCK_MONOTONIC, see `Config::jiffy_ns`) at the
    /// last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// The flow hash, kept so a packet of a known flow need not compute it again.
    pub hash: u32,
    /// `Backend::gen` of the slot when the flow was made.
    pub gen: u32,
}
/// Small on purpose: an insert copies it into a cold table entry.
const _: () = assert!(core::mem::size_of::<FlowValue>() == 24);

/// Global settings, entry 0 of `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// SipHash key of the flow hash. Shared by every node behind one ECMP group.
    pub hash_key: [u64; 2],
    /// Slots in each Maglev table (a prime).
    pub ring_size: u32,
    /// `CONFIG_F_*`.
    pub flags: u32,
    pub udp_idle_timeout_ns: u64,
    /// Outer IPv4 source; host bits under `src_v4_mask` are taken from the flow hash.
    pub src_v4: u32,
    pub src_v4_mask: u32,
    /// Outer IPv6 source; host bits of the last word under `src_v6_mask` vary per flow.
    pub src_v6: [u32; 4],
    pub src_v6_mask: u32,
    /// Largest packet (IP header and payload) the egress link carries.
    pub mtu: u32,
    /// Next-hop MAC used when `bpf_fib_lookup` cannot resolve the backend.
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The data path's clock is `jiffies * jiffy_ns - clock_offset_ns`
    /// (jiffies are one load; a clock helper call costs about 30 ns a
    /// packet), which tracks CLOCK_MONOTONIC to within a tick. Set by
    /// `calibrate_clock`; 0 means "use `bpf_ktime_get_coarse_ns`".
    pub jiffy_ns: u64,
    pub clock_offset_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 88);

/// `Config::flags`: `gateway_mac` is set.
pub const CONFIG_F_GATEWAY_MAC: u32 = 1;
/// `Config::flags`: an IPv4 encapsulation source is set.
pub const CONFIG_F_SRC_V4: u32 = 2;
/// `Config::flags`: an IPv6 encapsulation source is set.
pub const CONFIG_F_SRC_V6: u32 = 4;
/// `Config::flags`: some VIP listens on every port (port 0), so a VIP miss
/// on the exact port must try port 0 too.
pub const CONFIG_F_ANY_PORT: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub _pad: u64,
}

/// Per-CPU copies of a statistics record add up to the total.
impl<'a> core::iter::Sum<&'a VipStats> for VipStats {
    fn sum<I: Iterator<Item = &'a VipStats>>(it: I) -> Self {
        it.fold(VipStats::default(), |a, s| VipStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
            drops: a.drops + s.drops,
        })
    }
}

impl<'a> core::iter::Sum<&'a BackendStats> for BackendStats {
    fn sum<I: Iterator<Item = &'a BackendStats>>(it: I) -> Self {
        it.fold(BackendStats::default(), |a, s| BackendStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
            _pad: 0,
        })
    }
}

/// Indices of the balancer's `COUNTERS` map.
pub mod counter {
    pub const FLOW_HIT: u32 = 0;
    pub const FLOW_MISS: u32 = 1;
    pub const NEW_FLOW: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
    pub const PASS_NOT_VIP: u32 = 5;
    pub const PASS_NOT_IP: u32 = 6;
    pub const PASS_MALFORMED: u32 = 7;
    pub const DROP_NO_BACKEND: u32 = 8;
    pub const DROP_FRAGMENT: u32 = 9;
    pub const DROP_IPV6_EXT: u32 = 10;
    pub const DROP_TOO_BIG: u32 = 11;
    pub const ICMP_TOO_BIG_SENT: u32 = 12;
    pub const ICMP_ECHO_REPLY: u32 = 13;
    pub const ICMP_STEERED: u32 = 14;
    pub const PASS_ICMP_NO_FLOW: u32 = 15;
    pub const DROP_ADJUST_HEAD: u32 = 16;
    pub const DROP_NO_SOURCE: u32 = 17;
    pub const FIB_FALLBACK: u32 = 18;
    pub const UDP_FLOW_EXPIRED: u32 = 19;
    pub const RESCHEDULED_DOWN: u32 = 20;
    pub const PASS_VIP_OTHER_PROTO: u32 = 21;
    pub const DROP_NO_ROUTE: u32 = 22;
    /// `bpf_fib_lookup` calls (next-hop cache misses).
    pub const FIB_LOOKUP: u32 = 23;
    pub const COUNT: u32 = 24;

    /// Names for `lb status` and metrics, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "flow_hit",
        "flow_miss",
        "new_flow",
        "tx",
        "redirect",
        "pass_not_vip",
        "pass_not_ip",
        "pass_malformed",
        "drop_no_backend",
        "drop_fragment",
        "drop_ipv6_ext",
        "drop_too_big",
        "icmp_too_big_sent",
        "icmp_echo_reply",
        "icmp_steered",
        "pass_icmp_no_flow",
        "drop_adjust_head",
        "drop_no_source",
        "fib_fallback",
        "udp_flow_expired",
        "rescheduled_down",
        "pass_vip_other_proto",
        "drop_no_route",
        "fib_lookup",
    ];
}

/// Indices of the decapsulator's `DECAP_COUNTERS` map.
pub mod decap_counter {
    pub const DECAPPED: u32 = 0;
    pub const PASS_NOT_TUNNEL: u32 = 1;
    pub const PASS_NOT_VIP: u32 = 2;
    pub const PASS_MALFORMED: u32 = 3;
    pub const DROP_ADJUST_HEAD: u32 = 4;
    /// A tunnel to a VIP from an outer source not in `DECAP_SOURCES`.
    pub const DROP_SOURCE: u32 = 5;
    pub const COUNT: u32 = 6;
    pub const NAMES: [&str; COUNT as usize] = [
        "decapsulated",
        "pass_not_tunnel",
        "pass_not_vip",
        "pass_malformed",
        "drop_adjust_head",
        "drop_source",
    ];
}

/// The data of a `DECAP_SOURCES` key: the family, then the address octets
/// (IPv4 in the first four). A prefix of `n` bits has `prefix_len` 32 + n.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapSource {
    pub family: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<DecapSource>() == 20);

impl DecapSource {
    /// The `DECAP_SOURCES` key (prefix length, data) of `addr/prefix`.
    pub fn key(addr: core::net::IpAddr, prefix: u8) -> (u32, DecapSource) {
        let mut d = DecapSource::default();
        let bits = match addr {
            core::net::IpAddr::V4(a) => {
                d.family = AF_INET as u32;
                d.addr[..4].copy_from_slice(&a.octets());
                prefix.min(32)
            }
            core::net::IpAddr::V6(a) => {
                d.family = AF_INET6 as u32;
                d.addr = a.octets();
                prefix.min(128)
            }
        };
        (32 + bits as u32, d)
    }
}

/// An address as the maps hold it: its octets loaded into native `u32`
/// words (IPv4 in word 0), and its family.
pub fn addr_words(ip: core::net::IpAddr) -> ([u32; 4], u8) {
    match ip {
        core::net::IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], AF_INET),
        core::net::IpAddr::V6(a) => {
            let o = a.octets();
            let mut w = [0u32; 4];
            let mut i = 0;
            while i < 4 {
                w[i] = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                i += 1;
            }
            (w, AF_INET6)
        }
    }
}

/// The address `addr_words` made.
pub fn words_addr(words: [u32; 4], family: u8) -> core::net::IpAddr {
    if family == AF_INET {
        core::net::IpAddr::from(words[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = words[i].to_ne_bytes();
            o[4 * i..4 * i + 4].copy_from_slice(&b);
            i += 1;
        }
        core::net::IpAddr::from(o)
    }
}

/// Bits of `VIP_FILTER` (and entries of `VIP_INDEX`).
pub const VIP_FILTER_BITS: u32 = 65536;
/// Words of `VIP_FILTER`: 65536 bits in 8 KB.
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;

/// A `VIP_INDEX` entry; all zero (family 0) when empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipEntry {
    pub key: VipKey,
    pub info: VipInfo,
}
const _: () = assert!(core::mem::size_of::<VipEntry>() == 32);

/// The `VIP_FILTER` bit of a service (address, port in network order,
/// protocol, family). A clear bit means "no VIP": TCP and UDP packets are
/// then passed with no hash-map lookup, and a set bit lets a packet of a
/// known flow skip the VIP lookup (the flow entry names its VIP). A set bit
/// may be another VIP's: those packets take the VIP lookup and pass.
#[inline(always)]
pub fn vip_filter_bit(addr: [u32; 4], port: u16, proto: u8, family: u8) -> u32 {
    let x = addr[0]
        ^ addr[1].rotate_left(8)
        ^ addr[2].rotate_left(16)
        ^ addr[3].rotate_left(24)
        ^ ((port as u32) << 16 | (proto as u32) << 8 | family as u32);
    // Multiplicative hashing: the top 16 bits depend on every input bit.
    x.wrapping_mul(0x9e37_79b1) >> 16
}

/// Maglev slots per `RINGS` element: four 16-bit slots in each 64-bit
/// element (slot 4k in the low bits), each holding a backend id plus one, 0
/// for none (so a buffer never written, all zero, sends nothing anywhere).
/// The kernel lays array elements out at 8-byte stride, and a new flow's
/// slot is a random one, so the table's cache footprint (128 KB for 65537
/// slots) is what a new flow pays.
pub const RING_SLOTS_PER_ELEM: u32 = 4;
/// The largest backend id a ring slot holds (`tables.max_backends` is at most one more).
pub const MAX_RING_BACKEND: u32 = 0xfffe;

/// `RINGS` elements per Maglev buffer.
#[inline(always)]
pub fn ring_elems(ring_size: u32) -> u32 {
    ring_size.div_ceil(RING_SLOTS_PER_ELEM)
}

/// Index of the first element of a VIP's Maglev buffer `ring` (0 or 1) in `RINGS`.
#[inline(always)]
pub fn ring_base(vip_id: u32, ring: u8, ring_size: u32) -> u32 {
    (vip_id * 2 + (ring as u32 & 1)) * ring_elems(ring_size)
}

/// Index, from the start of its buffer, of the element holding `slot`.
#[inline(always)]
pub fn ring_elem(slot: u32) -> u32 {
    slot / RING_SLOTS_PER_ELEM
}

/// Size of `RINGS` for `max_vips` VIPs.
pub fn rings_entries(max_vips: u32, ring_size: u32) -> u32 {
    max_vips * 2 * ring_elems(ring_size)
}

/// The backend id in slot `slot` given the element that holds it
/// (`NO_BACKEND` for an empty slot).
#[inline(always)]
pub fn ring_slot(elem: u64, slot: u32) -> u32 {
    let v = (elem >> ((slot % RING_SLOTS_PER_ELEM) * 16)) & 0xffff;
    if v == 0 {
        NO_BACKEND
    } else {
        v as u32 - 1
    }
}

/// Packs slots four to an element, as `RINGS` holds them. `NO_BACKEND`, and
/// any id above `MAX_RING_BACKEND` (which the pool file cannot produce),
/// becomes an empty slot.
pub fn pack_ring(slots: &[u32]) -> impl Iterator<Item = u64> + '_ {
    slots.chunks(RING_SLOTS_PER_ELEM as usize).map(|c| {
        let mut e = 0u64;
        for i in 0..RING_SLOTS_PER_ELEM as usize {
            let v = match c.get(i) {
                Some(&id) if id <= MAX_RING_BACKEND => id as u64 + 1,
                _ => 0,
            };
            e |= v << (16 * i);
        }
        e
    })
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-1-3 over `N` 64-bit words (8·N bytes), keyed by `key`.
#[inline(always)]
fn siphash13<const N: usize>(key: &[u64; 2], m: [u64; N]) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < N {
        v[3] ^= m[i];
        sip_round(&mut v);
        v[0] ^= m[i];
        i += 1;
    }
    // Length block.
    let b: u64 = ((8 * N) as u64) << 56;
    v[3] ^= b;
    sip_round(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The keyed flow hash: picks the Maglev slot and varies the outer source.
/// Both sides compute it, so the daemon and tests can tell where a flow goes,
/// and every node that shares the key picks the same backend. An IPv4 flow
/// hashes 16 bytes (its address words 1..3 are zero), an IPv6 flow 40.
#[inline(always)]
pub fn flow_hash(k: &FlowKey, key: &[u64; 2]) -> u64 {
    let w = |a: u32, b: u32| (a as u64) | ((b as u64) << 32);
    let tail = (k.sport as u64)
        | ((k.dport as u64) << 16)
        | ((k.proto as u64) << 32)
        | ((k.family as u64) << 40);
    if k.family == AF_INET {
        siphash13(key, [w(k.src[0], k.dst[0]), tail])
    } else {
        siphash13(
            key,
            [
                w(k.src[0], k.src[1]),
                w(k.src[2], k.src[3]),
                w(k.dst[0], k.dst[1]),
                w(k.dst[2], k.dst[3]),
                tail,
            ],
        )
    }
}

/// Map sizes chosen at load time (from the pool file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub max_vips: u32,
    pub max_backends: u32,
    pub ring_size: u32,
    pub flows: u32,
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
        .map_max_entries(maps::FLOWS, s.flows);
}

/// How the data path turns jiffies into CLOCK_MONOTONIC nanoseconds
/// (`Config::jiffy_ns`, `Config::clock_offset_ns`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataPathClock {
    pub jiffy_ns: u64,
    pub offset_ns: u64,
}

impl DataPathClock {
    /// From observed jiffy edges `(jiffies, ktime_ns)`, in order: the tick
    /// length is the kernel's `TICK_NSEC` of the usual `HZ` nearest to the
    /// one measured between the first and the last edge (jiffies advance by
    /// exactly one per `TICK_NSEC`, so the clock then does not drift from
    /// CLOCK_MONOTONIC). Each edge is seen at or after the moment the tick
    /// was due (a late timer interrupt, a sampling gap), never before, so
    /// the offset comes from the least late edge: the clock then reads each
    /// jiffy's due time, and never runs ahead of CLOCK_MONOTONIC. `None`
    /// when fewer than two edges span a tick or no usual `HZ` is within 2%
    /// of the measurement.
    pub fn fit(edges: &[(u64, u64)]) -> Option<Self> {
        let (first, last) = (edges.first()?, edges.last()?);
        let ticks = last.0.checked_sub(first.0).filter(|t| *t > 0)?;
        let measured = last.1.checked_sub(first.1)? / ticks;
        const HZ: [u64; 15] = [
            24, 32, 48, 64, 100, 128, 200, 250, 256, 300, 500, 512, 1000, 1024, 1200,
        ];
        let jiffy_ns = HZ
            .iter()
            .map(|hz| (1_000_000_000 + hz / 2) / hz)
            .min_by_key(|tick| measured.abs_diff(*tick) * 1000 / tick)
            .filter(|tick| measured.abs_diff(*tick) <= tick / 50)?;
        // Offsets in wrapping arithmetic (ktime may be below jiffies ×
        // tick), compared relative to the first edge's.
        let offset = |e: &(u64, u64)| e.0.wrapping_mul(jiffy_ns).wrapping_sub(e.1);
        let base = offset(first);
        let offset_ns = edges
            .iter()
            .map(offset)
            .max_by_key(|o| o.wrapping_sub(base) as i64)?;
        Some(DataPathClock {
            jiffy_ns,
            offset_ns,
        })
    }

    /// The clock's reading at `jiffies`, as the data path computes it.
    pub fn at(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.jiffy_ns)
            .wrapping_sub(self.offset_ns)
    }

    pub fn apply(&self, cfg: &mut Config) {
        cfg.jiffy_ns = self.jiffy_ns;
        cfg.clock_offset_ns = self.offset_ns;
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads, and the data
/// path's clock follows.
#[cfg(feature = "user")]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC_COARSE in ns: the kernel's tick clock, the one
/// `bpf_ktime_get_coarse_ns` reads. It lags CLOCK_MONOTONIC by up to a
/// tick, and by more while the host delays timer ticks (a busy VM does).
#[cfg(feature = "user")]
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Measures the kernel's tick with the `lb_clock` program (loaded): records
/// every jiffy edge it sees for at least 20 ms and fits them
/// ([`DataPathClock::fit`]). An edge counts only when the sample before it
/// is at most 50 µs older (else the thread was held up and the edge's time
/// is not known). Three tries; about 25 to 30 ms each. On error the data
/// path keeps the coarse clock.
#[cfg(feature = "user")]
pub fn calibrate_clock(prog: &aya::programs::Xdp) -> Result<DataPathClock, String> {
    use aya::programs::{TestRun, TestRunOptions};
    const GAP_NS: u64 = 50_000;
    let sample = || -> Result<(u64, u64), String> {
        let input = [0u8; 64];
        let mut out = [0u8; 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|e| format!("running lb_clock: {e}"))?;
        if r.return_value != 2 || (r.data_size_out as usize) < 16 {
            return Err(format!(
                "lb_clock returned action {} and {} bytes; XDP_PASS and 16 expected",
                r.return_value, r.data_size_out
            ));
        }
        let word = |i: usize| u64::from_le_bytes(out[i..i + 8].try_into().unwrap());
        Ok((word(0), word(8)))
    };
    // A sample right after jiffies moved, taken at or after `not_before_ns`.
    let edge = |not_before_ns: u64| -> Result<(u64, u64), String> {
        let start = std::time::Instant::now();
        let mut prev = sample()?;
        loop {
            let s = sample()?;
            if s.0 != prev.0 && s.1 >= not_before_ns && s.1.saturating_sub(prev.1) <= GAP_NS {
                return Ok(s);
            }
            prev = s;
            if start.elapsed() > std::time::Duration::from_secs(2) {
                return Err("no jiffy edge seen in 2 s".into());
            }
        }
    };
    let mut last_err = String::new();
    for _ in 0..3 {
        let mut edges = std::vec![edge(0)?];
        let end = edges[0].1 + 20_000_000;
        while edges.last().is_some_and(|e| e.1 < end) {
            let next = edges.last().map_or(0, |e| e.1 + 1);
            edges.push(edge(next)?);
        }
        match DataPathClock::fit(&edges) {
            Some(c) => return Ok(c),
            None => last_err = format!("no usual tick length fits the jiffy edges {edges:?}"),
        }
    }
    Err(last_err)
}

/// What `VIP_FILTER` and `VIP_INDEX` should hold for a set of VIPs: the
/// daemon (and the test harness) keep one and write what each change returns.
#[cfg(feature = "user")]
#[derive(Default)]
pub struct VipFilter {
    vips: std::collections::BTreeMap<VipKey, VipInfo>,
    /// The VIPs on each set bit.
    by_bit: std::collections::BTreeMap<u32, std::collections::BTreeSet<VipKey>>,
    words: std::vec::Vec<u64>,
}

/// What a change to `VipFilter` asks to be written, in order.
#[cfg(feature = "user")]
#[derive(Debug, Default, PartialEq)]
pub struct FilterWrites {
    /// `VIP_INDEX` entries, written one after the other.
    pub entries: std::vec::Vec<(u32, VipEntry)>,
    /// A `VIP_FILTER` word, written last.
    pub word: Option<(u32, u64)>,
}

/// `e` with a key no packet matches (family 0), the rest as is.
#[cfg(feature = "user")]
fn invalidated(e: VipEntry) -> VipEntry {
    VipEntry {
        key: VipKey { family: 0, ..e.key },
        ..e
    }
}

#[cfg(feature = "user")]
impl VipFilter {
    pub fn new() -> Self {
        VipFilter {
            words: std::vec![0; VIP_FILTER_WORDS as usize],
            ..Default::default()
        }
    }

    pub fn bit(key: &VipKey) -> u32 {
        vip_filter_bit(key.addr, key.port, key.proto, key.family)
    }

    /// The index entry at `bit`: its VIP when it is the only one there.
    fn entry(&self, bit: u32) -> VipEntry {
        match self.by_bit.get(&bit) {
            Some(keys) if keys.len() == 1 => {
                let key = *keys.first().expect("one key");
                VipEntry {
                    key,
                    info: self.vips[&key],
                }
            }
            _ => VipEntry::default(),
        }
    }

    /// The index writes that take `bit` from `old` to `new` such that a
    /// packet reading the entry meanwhile (the kernel copies it without a
    /// lock) matches the old VIP, the new one, or nothing: a key changes only
    /// while its family byte is 0, and the family byte alone turns a key on
    /// or off.
    fn moves(bit: u32, old: VipEntry, new: VipEntry) -> std::vec::Vec<(u32, VipEntry)> {
        let mut w = std::vec::Vec::new();
        if old == new {
            return w;
        }
        if old.key == new.key {
            // The same VIP, other info (a table flip changes one byte).
            w.push((bit, new));
            return w;
        }
        if old.key.family != 0 {
            w.push((bit, invalidated(old)));
        }
        if new.key.family != 0 {
            w.push((bit, invalidated(new)));
        }
        w.push((bit, new));
        w
    }

    /// Adds `key` or changes its info.
    pub fn set(&mut self, key: VipKey, info: VipInfo) -> FilterWrites {
        let bit = Self::bit(&key);
        let old = self.entry(bit);
        let new_vip = self.vips.insert(key, info).is_none();
        let keys = self.by_bit.entry(bit).or_default();
        keys.insert(key);
        let first = new_vip && keys.len() == 1;
        FilterWrites {
            entries: Self::moves(bit, old, self.entry(bit)),
            word: first.then(|| self.flip(bit, true)),
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &VipKey) -> FilterWrites {
        if !self.vips.contains_key(key) {
            return FilterWrites::default();
        }
        let bit = Self::bit(key);
        let old = self.entry(bit);
        self.vips.remove(key);
        let keys = self.by_bit.get_mut(&bit).expect("added with its bit");
        keys.remove(key);
        let last = keys.is_empty();
        if last {
            self.by_bit.remove(&bit);
        }
        FilterWrites {
            entries: Self::moves(bit, old, self.entry(bit)),
            word: last.then(|| self.flip(bit, false)),
        }
    }

    /// Everything, as `write_all` puts it in place: every filter word, and
    /// every index entry (empty ones too).
    pub fn all(&self) -> (std::vec::Vec<u64>, std::vec::Vec<VipEntry>) {
        let entries = (0..VIP_FILTER_BITS).map(|b| self.entry(b)).collect();
        (self.words.clone(), entries)
    }

    /// The filter as it should be, word by word.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn flip(&mut self, bit: u32, on: bool) -> (u32, u64) {
        let (w, m) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if on {
            self.words[w] |= m;
        } else {
            self.words[w] &= !m;
        }
        (w as u32, self.words[w])
    }
}

/// Writes what a `VipFilter` change returned: the index entries in order,
/// then the filter word (a set bit with no entry only sends packets to the
/// hash map).
#[cfg(feature = "user")]
pub fn write_vip_filter(ebpf: &mut aya::Ebpf, w: FilterWrites) -> Result<(), String> {
    for (bit, e) in w.entries {
        index_array(ebpf)?
            .set(bit, e, 0)
            .map_err(|e| format!("writing {}: {e}", maps::VIP_INDEX))?;
    }
    if let Some((i, word)) = w.word {
        filter_array(ebpf)?
            .set(i, word, 0)
            .map_err(|e| format!("writing {}: {e}", maps::VIP_FILTER))?;
    }
    Ok(())
}

/// Puts the whole of `f` in place (at load, and after a failed write):
/// every index entry (invalidated first where it changes, as in `set`),
/// then every filter word.
#[cfg(feature = "user")]
pub fn write_vip_filter_all(ebpf: &mut aya::Ebpf, f: &VipFilter) -> Result<(), String> {
    let (words, entries) = f.all();
    let mut index = index_array(ebpf)?;
    for (bit, new) in entries.into_iter().enumerate() {
        let bit = bit as u32;
        let old = index
            .get(&bit, 0)
            .map_err(|e| format!("reading {}: {e}", maps::VIP_INDEX))?;
        for (b, e) in VipFilter::moves(bit, old, new) {
            index
                .set(b, e, 0)
                .map_err(|e| format!("writing {}: {e}", maps::VIP_INDEX))?;
        }
    }
    let mut filter = filter_array(ebpf)?;
    for (i, w) in words.into_iter().enumerate() {
        filter
            .set(i as u32, w, 0)
            .map_err(|e| format!("writing {}: {e}", maps::VIP_FILTER))?;
    }
    Ok(())
}

#[cfg(feature = "user")]
fn index_array(
    ebpf: &mut aya::Ebpf,
) -> Result<aya::maps::Array<&mut aya::maps::MapData, VipEntry>, String> {
    let map = ebpf.map_mut(maps::VIP_INDEX).ok_or("no VIP_INDEX map")?;
    aya::maps::Array::try_from(map).map_err(|e| format!("{}: {e}", maps::VIP_INDEX))
}

#[cfg(feature = "user")]
fn filter_array(
    ebpf: &mut aya::Ebpf,
) -> Result<aya::maps::Array<&mut aya::maps::MapData, u64>, String> {
    let map = ebpf.map_mut(maps::VIP_FILTER).ok_or("no VIP_FILTER map")?;
    aya::maps::Array::try_from(map).map_err(|e| format!("{}: {e}", maps::VIP_FILTER))
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), plain old data, with explicit padding.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for VipEntry {}
    unsafe impl aya::Pod for DecapSource {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_depends_on_key_and_every_field() {
        let k = FlowKey {
            src: [0x0100_000a, 0, 0, 0],
            dst: [0x0a00_000a, 0, 0, 0],
            sport: 1234u16.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            family: AF_INET,
            _pad: [0; 2],
        };
        let h = flow_hash(&k, &[1, 2]);
        assert_eq!(h, flow_hash(&k, &[1, 2]));
        assert_ne!(h, flow_hash(&k, &[1, 3]));
        let mut k2 = k;
        k2.sport = 1235u16.to_be();
        assert_ne!(h, flow_hash(&k2, &[1, 2]));
        let mut k3 = k;
        k3.proto = PROTO_UDP;
        assert_ne!(h, flow_hash(&k3, &[1, 2]));
    }

    #[test]
    fn siphash13_matches_reference_implementation() {
        use core::hash::Hasher;
        for (key, m) in [
            ([0u64, 0], [0u64; 5]),
            ([0x0706050403020100, 0x0f0e0d0c0b0a0908], [1, 2, 3, 4, 5]),
            ([u64::MAX, 42], [u64::MAX, 7, 0, 9, 1 << 63]),
        ] {
            let mut r = siphasher::sip::SipHasher13::new_with_keys(key[0], key[1]);
            for w in m {
                r.write(&w.to_le_bytes());
            }
            assert_eq!(siphash13(&key, m), r.finish());
            let mut r = siphasher::sip::SipHasher13::new_with_keys(key[0], key[1]);
            r.write(&m[0].to_le_bytes());
            r.write(&m[1].to_le_bytes());
            assert_eq!(siphash13(&key, [m[0], m[1]]), r.finish());
        }
    }

    #[test]
    fn clock_fit_snaps_to_the_tick_and_tracks_ktime() {
        // HZ=250: 4 ms ticks; edges seen a few microseconds late.
        let first = (4_294_900_000, 1_000_003_000);
        let last = (first.0 + 6, first.1 + 6 * 4_000_000 + 2_500);
        let c = DataPathClock::fit(&[first, last]).unwrap();
        assert_eq!(c.jiffy_ns, 4_000_000);
        // The least late edge (the first, 2.5 µs less late) sets the offset.
        assert_eq!(c.at(first.0), first.1);
        assert_eq!(c.at(last.0), last.1 - 2_500);
        assert_eq!(c.at(first.0 + 250), first.1 + 1_000_000_000);
        // HZ=300: TICK_NSEC is 3333333.
        let c = DataPathClock::fit(&[(100, 0), (109, 9 * 3_333_400)]).unwrap();
        assert_eq!(c.jiffy_ns, 3_333_333);
        // HZ=1024 measured 0.35% high: 1024, not 1000 (2.4% off) though
        // both are within 2%.
        let c = DataPathClock::fit(&[(100, 0), (200, 100 * 980_957)]).unwrap();
        assert_eq!(c.jiffy_ns, 976_563);
        // A tick no kernel has, or none at all, is refused.
        assert_eq!(DataPathClock::fit(&[(100, 0), (110, 10 * 7_000_000)]), None);
        assert_eq!(DataPathClock::fit(&[(100, 0), (100, 5)]), None);
        assert_eq!(DataPathClock::fit(&[]), None);
    }

    #[test]
    fn clock_fit_never_runs_ahead_of_a_late_edge() {
        // HZ=250 with edges seen late by 0 to 3 ms (a delayed timer
        // interrupt): the clock reads each jiffy's due time, the earliest
        // observation, not the last one.
        let due = |j: u64| 7_000_000_000 + (j - 1000) * 4_000_000;
        let late = [20_000u64, 2_000_000, 3_000_000, 1_000, 500_000, 10_000];
        let edges: std::vec::Vec<(u64, u64)> = (0..6)
            .map(|i| (1000 + i, due(1000 + i) + late[i as usize]))
            .collect();
        let c = DataPathClock::fit(&edges).unwrap();
        assert_eq!(c.jiffy_ns, 4_000_000);
        for e in &edges {
            assert!(c.at(e.0) <= e.1, "{e:?} read as {}", c.at(e.0));
        }
        assert_eq!(c.at(1003), due(1003) + 1_000);
    }

    #[test]
    fn ring_base_separates_buffers() {
        assert_eq!(ring_base(0, 0, 7), 0);
        assert_eq!(ring_base(0, 1, 7), 2);
        assert_eq!(ring_base(3, 1, 7), 14);
        assert_eq!(rings_entries(4, 7), 16);
    }

    #[test]
    fn address_words_round_trip() {
        for a in ["10.1.2.3", "fd00::1:2", "2001:db8::ffff:1"] {
            let ip: core::net::IpAddr = a.parse().unwrap();
            let (w, f) = addr_words(ip);
            assert_eq!(words_addr(w, f), ip);
        }
        let (w, f) = addr_words("10.1.2.3".parse().unwrap());
        assert_eq!((w[0].to_ne_bytes(), w[1], f), ([10, 1, 2, 3], 0, AF_INET));
    }

    #[test]
    fn packed_slots_read_back() {
        let slots = [10u32, NO_BACKEND, MAX_RING_BACKEND, 0, 14];
        let mut elems = [0u64; 2];
        let mut n = 0;
        for (i, e) in pack_ring(&slots).enumerate() {
            elems[i] = e;
            n += 1;
        }
        assert_eq!(n, ring_elems(5));
        assert_eq!(ring_slot(elems[1], 5), NO_BACKEND, "padding is empty");
        assert_eq!(
            ring_slot(0, 2),
            NO_BACKEND,
            "a buffer never written is empty"
        );
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(ring_slot(elems[ring_elem(i as u32) as usize], i as u32), *s);
        }
    }
    #[cfg(feature = "user")]
    mod vip_filter {
        use super::super::*;

        fn key(host: u8, port: u16) -> VipKey {
            VipKey {
                addr: [u32::from_ne_bytes([10, 0, 0, host]), 0, 0, 0],
                port: port.to_be(),
                proto: PROTO_TCP,
                family: AF_INET,
            }
        }

        fn has(f: &VipFilter, k: &VipKey) -> bool {
            let bit = VipFilter::bit(k);
            f.words()[(bit / 64) as usize] & 1 << (bit % 64) != 0
        }

        fn info(id: u32) -> VipInfo {
            VipInfo {
                vip_id: id,
                ..VipInfo::default()
            }
        }

        /// Whether a reader that copies the entry while it goes from `s` to
        /// `t` (byte by byte, in any order) can only match `s`'s VIP,
        /// `t`'s, or nothing: a live key never changes except through a
        /// family byte of 0, and the family byte flips with all else equal.
        fn safe(s: VipEntry, t: VipEntry) -> bool {
            match (s.key.family != 0, t.key.family != 0) {
                (true, true) => s.key == t.key,
                (false, false) => true,
                _ => invalidated(s) == invalidated(t),
            }
        }

        /// Applies `w` to `index` (the entries the kernel holds), checking
        /// every step with `safe`.
        fn apply(index: &mut std::collections::BTreeMap<u32, VipEntry>, w: &FilterWrites) {
            for (bit, e) in &w.entries {
                let old = index.get(bit).copied().unwrap_or_default();
                assert!(safe(old, *e), "unsafe step {old:?} -> {e:?}");
                index.insert(*bit, *e);
            }
        }

        #[test]
        fn a_filter_bit_shared_by_two_vips_stays_until_both_are_gone() {
            // Two services whose bits collide (there are 65536 bits; the ports
            // of one address never do).
            let mut seen = std::collections::HashMap::new();
            let (a, b) = (1..=255u8)
                .flat_map(|h| (1..=64u16).map(move |p| key(h, p)))
                .find_map(|k| seen.insert(VipFilter::bit(&k), k).map(|old| (old, k)))
                .expect("a collision among 16320 services");
            let bit = VipFilter::bit(&a);
            let entry = |k: VipKey, i: VipInfo| VipEntry { key: k, info: i };
            let flipped = VipInfo {
                active_ring: 1,
                ..info(1)
            };
            let mut index = std::collections::BTreeMap::new();
            let mut f = VipFilter::new();

            let w = f.set(a, info(1));
            apply(&mut index, &w);
            assert_eq!(index[&bit], entry(a, info(1)), "a alone: indexed");
            assert!(w.word.is_some(), "the first VIP sets the bit");
            // A table flip changes the info: one write.
            let w = f.set(a, flipped);
            assert_eq!(w.entries, [(bit, entry(a, flipped))]);
            assert_eq!(w.word, None);
            apply(&mut index, &w);

            let w = f.set(b, info(2));
            apply(&mut index, &w);
            assert_eq!(index[&bit], VipEntry::default(), "shared: no entry");
            assert_eq!(w.word, None, "the bit is already set");
            assert_eq!(f.set(b, info(2)), FilterWrites::default());
            assert!(has(&f, &a) && has(&f, &b));

            let w = f.remove(&a);
            apply(&mut index, &w);
            assert_eq!(index[&bit], entry(b, info(2)), "b alone again");
            assert_eq!(w.word, None, "b still needs the bit");
            let w = f.remove(&b);
            apply(&mut index, &w);
            assert_eq!(index[&bit], VipEntry::default());
            let (i, word) = w.word.expect("the last VIP clears the bit");
            assert_eq!(word, f.words()[i as usize]);
            assert!(!has(&f, &b));
            assert_eq!(f.remove(&b), FilterWrites::default());
            assert!(f.words().iter().all(|w| *w == 0));
        }

        #[test]
        fn an_entry_that_changes_vip_goes_through_no_match() {
            // a leaves and b arrives on the same bit in one step each way.
            let (a, b) = (key(1, 80), key(1, 80));
            let (ea, eb) = (
                VipEntry {
                    key: a,
                    info: info(1),
                },
                VipEntry {
                    key: VipKey {
                        port: 81u16.to_be(),
                        ..b
                    },
                    info: info(2),
                },
            );
            let w = VipFilter::moves(7, ea, eb);
            let mut state = ea;
            for (_, e) in &w {
                assert!(safe(state, *e), "unsafe step {state:?} -> {e:?}");
                state = *e;
            }
            assert_eq!(state, eb);
            assert_eq!(w.len(), 3, "invalidate a, write b invalid, then b");
            assert!(!safe(ea, eb), "the direct write would not be safe");
        }
    }
}
