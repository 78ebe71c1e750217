//! The XDP programs: `lb_xdp` balances VIP traffic to backends over IPIP /
//! IP6IP6 / 4in6 tunnels, `lb_decap` strips those tunnels on backends, and
//! `lb_pass` is the trivial program used as a benchmark floor and on veth peers.
//!
//! Packet policy (also in the README):
//! - Not IPv4/IPv6, or not addressed to a VIP address: passed untouched.
//! - Truncated or malformed headers: passed to the kernel (which drops them) and counted.
//! - IPv4 options on VIP traffic: honoured (the L4 header is found after them) and
//!   forwarded inside the tunnel unchanged.
//! - IPv4 fragments and IPv6 extension headers addressed to a VIP address:
//!   dropped and counted (a non-first fragment carries no ports, so it cannot
//!   be sent to the same backend as its first fragment without reassembly).
//! - ICMP echo to a VIP address: answered here. ICMP frag-needed / ICMPv6
//!   packet-too-big quoting a VIP flow: sent to that flow's backend.
//! - Packets that would exceed the MTU once encapsulated: answered with ICMP
//!   frag-needed / ICMPv6 packet-too-big (IPv4 without DF: dropped and counted).
#![no_std]
#![no_main]

mod csum;
mod decap;
mod too_big;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_F_MMAPABLE},
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns,
        bpf_redirect, bpf_xdp_adjust_head,
    },
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use core::mem::{size_of, MaybeUninit};
use lb_common::{
    counter, defaults, flow_hash, ring_base, ring_elem, ring_slot, vip_filter_bit, AddrKey,
    Backend, BackendStats, Config, FlowKey, FlowValue, VipEntry, VipInfo, VipKey, VipStats,
    AF_INET, AF_INET6, BACKEND_F_DOWN, BACKEND_F_UNHEALTHY, BACKEND_F_USED, CONFIG_F_ANY_PORT,
    CONFIG_F_GATEWAY_MAC, CONFIG_F_SRC_V4, CONFIG_F_SRC_V6, NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_IPIP, PROTO_IPV6, PROTO_TCP, PROTO_UDP,
};

// ---------------------------------------------------------------- maps --
// Sizes here are defaults; the daemon sets them from the pool file at load time.

#[map]
static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(defaults::MAX_VIPS, 0);
#[map]
static VIP_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(defaults::MAX_VIPS, 0);
/// Bits of `vip_filter_bit` of every VIP, kept by the daemon.
#[map]
static VIP_FILTER: Array<u64> = Array::with_max_entries(lb_common::VIP_FILTER_WORDS, 0);
/// The VIP at each filter bit that only one VIP sets, kept by the daemon.
#[map]
static VIP_INDEX: Array<VipEntry> = Array::with_max_entries(lb_common::VIP_FILTER_BITS, 0);
#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(defaults::MAX_BACKENDS, 0);
/// Two Maglev buffers per VIP; the daemon writes the idle one through mmap and
/// then flips `VipInfo::active_ring`, so a packet never sees a half-written table.
#[map]
static RINGS: Array<u64> =
    Array::with_max_entries(defaults::MAX_VIPS * 2 * defaults::RING_SIZE, BPF_F_MMAPABLE);
/// One LRU hash shared by all CPUs, with the common LRU list: a flow is found
/// whichever CPU its next packet lands on (RSS changes, generic XDP, several
/// queues), the daemon sees one table, and the capacity is not split per
/// CPU. Each CPU takes free entries from a local list of up to 128 and
/// touches the shared list (under its lock) once per batch, so up to 128
/// entries per CPU sit in local lists (the daemon warns when that is a large
/// part of the table).
/// Per-CPU lists (BPF_F_NO_COMMON_LRU) were measured slower here: they
/// rotate the list on every insert, about 60 ns more per new flow, and split
/// the capacity over all possible CPUs.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(defaults::FLOW_TABLE_SIZE, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(defaults::MAX_VIPS, 0);
#[map]
static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(defaults::MAX_BACKENDS, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// What `bpf_fib_lookup` (or the gateway-MAC fallback) said about a backend,
/// reused for `NEXTHOP_TTL_NS`: a FIB lookup costs more than the rest of an
/// established packet's path. Per CPU, so no writer contends. An entry counts
/// only for the same backend address and ingress interface.
#[map]
static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(defaults::MAX_BACKENDS, 0);

/// Room for the `bpf_fib_lookup` parameters: 64 bytes the 512-byte BPF
/// stack cannot spare.
#[map]
static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct NextHop {
    addr: [u32; 4],
    dmac: [u8; 6],
    smac: [u8; 6],
    ingress: u32,
    egress: u32,
    /// Largest outer packet the egress link takes.
    mtu: u32,
    expires_ns: u64,
}

// ----------------------------------------------------------- constants --

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const OUTER_TTL: u8 = 64;
/// How stale `FlowValue::last_seen_ns` may get before a packet refreshes it;
/// keeps the hot path from dirtying the entry's cache line on every packet.
const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

const XDP_PASS: u32 = xdp_action::XDP_PASS;
const XDP_DROP: u32 = xdp_action::XDP_DROP;
const XDP_TX: u32 = xdp_action::XDP_TX;
/// What `forward` did with a packet.
enum Sent {
    /// On its way to the backend, with this XDP action.
    Forwarded(u32),
    /// Not forwarded: the client was answered (ICMP too big) with XDP_TX.
    /// Not a packet of the flow for the statistics.
    Answered,
    /// Dropped, and counted by reason.
    Dropped,
}

#[inline(always)]
fn dropped(reason: u32) -> Sent {
    count(reason);
    Sent::Dropped
}

// ------------------------------------------------------------- helpers --

/// A bounds-checked pointer to a `T` at `off` bytes into the packet.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Zeroes `v` in place, one 32-bit word at a time, and hands it out. The BPF
/// backend turns a plain zero-initialisation (`[0; 3]`, `..Default::default()`,
/// `mem::zeroed()`, or a copy out of a partly written value) into a call to a
/// byte-at-a-time `memset`, hundreds of instructions on the per-packet path;
/// volatile word stores cannot be merged into one, and working in place
/// leaves nothing to copy. `T` must be 4-byte aligned, its size a multiple of
/// 4, and valid when all zero.
#[inline(always)]
fn zeroed<T>(v: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>().is_multiple_of(4) && core::mem::align_of::<T>() >= 4) };
    let p = v.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
    unsafe { v.assume_init_mut() }
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

/// Counts and returns `action`.
#[inline(always)]
fn verdict(idx: u32, action: u32) -> u32 {
    count(idx);
    action
}

#[inline(always)]
unsafe fn rd16(p: usize) -> u16 {
    *(p as *const u16)
}

#[inline(always)]
unsafe fn rd32(p: usize) -> u32 {
    *(p as *const u32)
}

#[inline(always)]
unsafe fn wr16(p: usize, v: u16) {
    *(p as *mut u16) = v;
}

#[inline(always)]
unsafe fn wr32(p: usize, v: u32) {
    *(p as *mut u32) = v;
}

// ------------------------------------------------------------- parsing --

/// What the balancer needs to know of a VIP-bound packet.
struct Packet {
    /// Length of the Ethernet header, with its VLAN tag if any (14 or 18).
    l2_len: usize,
    /// The VLAN tag (TPID and TCI, as in the packet) when `l2_len` is 18.
    vlan: u32,
    /// Destination MAC of the received frame: ours, used as source when we
    /// fall back to the configured gateway MAC.
    our_mac: [u8; 6],
    family: u8,
    proto: u8,
    l4_off: usize,
    /// Length of the IP packet according to its header.
    ip_len: usize,
    /// DSCP and ECN of the packet, copied to the outer header.
    tos: u8,
    /// IPv4 "don't fragment", copied to the outer header.
    df: bool,
    /// IPv4 identification, copied to the outer header when `df` is clear
    /// (so a router that fragments the tunnel packet reassembles it right).
    ip_id: u16,
    src: [u32; 4],
    dst: [u32; 4],
}

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    balance(&ctx)
}

/// XDP_PASS and nothing else: the benchmark floor, and what a veth peer needs
/// so that XDP_TX frames are not lost.
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Writes the two kernel clocks into the first 16 bytes of its input, for
/// the daemon's calibration of `clock_ns` (`lb_common::calibrate_clock`).
#[xdp]
pub fn lb_clock(ctx: XdpContext) -> u32 {
    let Some(p) = ptr_at::<[u8; 16]>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    unsafe {
        let (j, t) = (bpf_jiffies64(), bpf_ktime_get_ns());
        (p as *mut [u8; 8]).write_unaligned(j.to_le_bytes());
        ((p as usize + 8) as *mut [u8; 8]).write_unaligned(t.to_le_bytes());
    }
    XDP_PASS
}

/// The data path's clock, CLOCK_MONOTONIC nanoseconds to within a tick:
/// the verifier turns `bpf_jiffies64` into one load, where a clock helper
/// call costs about 30 ns a packet. Before the daemon has calibrated it,
/// the coarse clock.
#[inline(always)]
fn clock_ns(cfg: &Config) -> u64 {
    if cfg.jiffy_ns == 0 {
        return unsafe { bpf_ktime_get_coarse_ns() };
    }
    unsafe { bpf_jiffies64() }
        .wrapping_mul(cfg.jiffy_ns)
        .wrapping_sub(cfg.clock_offset_ns)
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> u32 {
    let Some(eth) = ptr_at::<[u8; ETH_LEN]>(ctx, 0) else {
        return verdict(counter::PASS_MALFORMED, XDP_PASS);
    };
    let eth = eth as usize;
    let mut l2_len = ETH_LEN;
    let mut vlan = 0u32;
    let mut ethertype = u16::from_be(unsafe { rd16(eth + 12) });
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = ptr_at::<[u8; VLAN_LEN]>(ctx, ETH_LEN) else {
            return verdict(counter::PASS_MALFORMED, XDP_PASS);
        };
        vlan = unsafe { rd32(eth + 12) };
        ethertype = u16::from_be(unsafe { rd16(tag as usize + 2) });
        l2_len = ETH_LEN + VLAN_LEN;
    }
    let mut our_mac = [0u8; 6];
    unsafe { core::ptr::copy_nonoverlapping(eth as *const u8, our_mac.as_mut_ptr(), 6) };

    let parsed = match ethertype {
        ETH_P_IP => parse_v4(ctx, l2_len),
        ETH_P_IPV6 => parse_v6(ctx, l2_len),
        _ => return verdict(counter::PASS_NOT_IP, XDP_PASS),
    };
    let mut pkt = match parsed {
        Ok(p) => p,
        Err(action) => return action,
    };
    pkt.vlan = vlan;
    pkt.our_mac = our_mac;

    // TCP and UDP go by (address, port, protocol): the VIP filter, the flow
    // table, the VIP index (see `balance_l4`); the rest first asks whether
    // the address is a VIP's at all.
    if pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP {
        return balance_l4(ctx, &pkt);
    }
    if !is_vip_addr(pkt.dst, pkt.family) {
        return verdict(counter::PASS_NOT_VIP, XDP_PASS);
    }
    match pkt.proto {
        PROTO_ICMP if pkt.family == AF_INET => icmp_v4(ctx, &pkt),
        PROTO_ICMPV6 if pkt.family == AF_INET6 => icmp_v6(ctx, &pkt),
        _ => verdict(counter::PASS_VIP_OTHER_PROTO, XDP_PASS),
    }
}

/// Whether `VIP_FILTER` has bit `bit`.
#[inline(always)]
fn vip_filter_has(bit: u32) -> bool {
    match VIP_FILTER.get(bit / 64) {
        Some(w) => *w & (1u64 << (bit % 64)) != 0,
        None => false,
    }
}

/// The VIP of exactly `key`, whose filter bit is `bit`: from `VIP_INDEX`
/// when that bit is the VIP's alone (two array reads), else from `VIPS`.
#[inline(always)]
fn find_vip(key: &VipKey, bit: u32) -> Option<VipInfo> {
    if let Some(e) = VIP_INDEX.get(bit) {
        if e.key.addr == key.addr
            && e.key.port == key.port
            && e.key.proto == key.proto
            && e.key.family == key.family
        {
            return Some(e.info);
        }
    }
    unsafe { VIPS.get(key) }.copied()
}

/// Whether some VIP uses this address (for traffic without ports).
#[inline(always)]
fn is_vip_addr(addr: [u32; 4], family: u8) -> bool {
    let mut k = MaybeUninit::uninit();
    let key: &mut AddrKey = zeroed(&mut k);
    key.addr = addr;
    key.family = family;
    unsafe { VIP_ADDRS.get(*key) }.is_some()
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l2_len: usize) -> Result<Packet, u32> {
    let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(ctx, l2_len) else {
        return Err(verdict(counter::PASS_MALFORMED, XDP_PASS));
    };
    let ip = ip as usize;
    let vihl = unsafe { *(ip as *const u8) };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_LEN {
        return Err(verdict(counter::PASS_MALFORMED, XDP_PASS));
    }
    let dst = unsafe { rd32(ip + 16) };
    let frag = unsafe { *((ip + 6) as *const [u8; 2]) };
    if frag[0] & 0x3f != 0 || frag[1] != 0 {
        // More-fragments set, or a non-zero offset.
        if is_vip_addr([dst, 0, 0, 0], AF_INET) {
            return Err(verdict(counter::DROP_FRAGMENT, XDP_DROP));
        }
        return Err(verdict(counter::PASS_NOT_VIP, XDP_PASS));
    }
    let tot_len = u16::from_be(unsafe { rd16(ip + 2) }) as usize;
    // A length beyond the frame would skew the MTU check and the counters.
    if tot_len < ihl || l2_len + tot_len > ctx.data_end() - ctx.data() {
        return Err(verdict(counter::PASS_MALFORMED, XDP_PASS));
    }
    Ok(Packet {
        l2_len,
        vlan: 0,
        our_mac: [0; 6],
        family: AF_INET,
        proto: unsafe { *((ip + 9) as *const u8) },
        l4_off: l2_len + ihl,
        ip_len: tot_len,
        tos: unsafe { *((ip + 1) as *const u8) },
        df: frag[0] & 0x40 != 0,
        ip_id: unsafe { rd16(ip + 4) },
        src: [unsafe { rd32(ip + 12) }, 0, 0, 0],
        dst: [dst, 0, 0, 0],
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l2_len: usize) -> Result<Packet, u32> {
    let Some(ip) = ptr_at::<[u8; IPV6_LEN]>(ctx, l2_len) else {
        return Err(verdict(counter::PASS_MALFORMED, XDP_PASS));
    };
    let ip = ip as usize;
    let vtc = unsafe { *((ip) as *const [u8; 2]) };
    if vtc[0] >> 4 != 6 {
        return Err(verdict(counter::PASS_MALFORMED, XDP_PASS));
    }
    let dst = unsafe { [rd32(ip + 24), rd32(ip + 28), rd32(ip + 32), rd32(ip + 36)] };
    let next = unsafe { *((ip + 6) as *const u8) };
    match next {
        // Hop-by-hop, routing, fragment, ESP, AH, destination options,
        // mobility, HIP, shim6: extension headers are not followed.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => {
            if is_vip_addr(dst, AF_INET6) {
                return Err(verdict(counter::DROP_IPV6_EXT, XDP_DROP));
            }
            return Err(verdict(counter::PASS_NOT_VIP, XDP_PASS));
        }
        _ => {}
    }
    let payload_len = u16::from_be(unsafe { rd16(ip + 4) }) as usize;
    if l2_len + IPV6_LEN + payload_len > ctx.data_end() - ctx.data() {
        return Err(verdict(counter::PASS_MALFORMED, XDP_PASS));
    }
    Ok(Packet {
        l2_len,
        vlan: 0,
        our_mac: [0; 6],
        family: AF_INET6,
        proto: next,
        l4_off: l2_len + IPV6_LEN,
        ip_len: IPV6_LEN + payload_len,
        tos: (vtc[0] << 4) | (vtc[1] >> 4),
        df: false,
        ip_id: 0,
        src: unsafe { [rd32(ip + 8), rd32(ip + 12), rd32(ip + 16), rd32(ip + 20)] },
        dst,
    })
}

// ----------------------------------------------------------- balancing --

#[inline(always)]
fn balance_l4(ctx: &XdpContext, pkt: &Packet) -> u32 {
    // Ports are the first four bytes of both TCP and UDP headers.
    let l4 = if pkt.proto == PROTO_TCP {
        match ptr_at::<[u8; 20]>(ctx, pkt.l4_off) {
            Some(p) => p as usize,
            None => return verdict(counter::PASS_MALFORMED, XDP_PASS),
        }
    } else {
        match ptr_at::<[u8; 8]>(ctx, pkt.l4_off) {
            Some(p) => p as usize,
            None => return verdict(counter::PASS_MALFORMED, XDP_PASS),
        }
    };
    let sport = unsafe { rd16(l4) };
    let dport = unsafe { rd16(l4 + 2) };
    let tcp_flags = if pkt.proto == PROTO_TCP {
        unsafe { *((l4 + 13) as *const u8) }
    } else {
        0
    };

    let Some(cfg) = CONFIG.get(0) else {
        return verdict(counter::PASS_NOT_VIP, XDP_PASS);
    };
    // No VIP on this (address, port, protocol): pass, with no map lookup.
    let bit = vip_filter_bit(pkt.dst, dport, pkt.proto, pkt.family);
    let any_bit = vip_filter_bit(pkt.dst, 0, pkt.proto, pkt.family);
    let exact = vip_filter_has(bit);
    if !exact && !(cfg.flags & CONFIG_F_ANY_PORT != 0 && vip_filter_has(any_bit)) {
        return verdict(counter::PASS_NOT_VIP, XDP_PASS);
    }

    let mut k = MaybeUninit::uninit();
    let key: &mut FlowKey = zeroed(&mut k);
    key.src = pkt.src;
    key.dst = pkt.dst;
    key.sport = sport;
    key.dport = dport;
    key.proto = pkt.proto;
    key.family = pkt.family;
    let key: &FlowKey = key;
    let is_syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let is_rst = tcp_flags & TCP_RST != 0;
    let now = clock_ns(cfg);

    // Flow table first: an established connection keeps its backend
    // whatever happened to the Maglev table since, and needs no VIP lookup:
    // the entry names its VIP, and the backend checks below catch a VIP
    // that is gone (its backends are released with it).
    // UDP has no SYN to tell a new flow: its Maglev pick is made before the
    // flow-table probe, so that the two cold reads (table slot, hash bucket)
    // overlap instead of following each other. A packet of a known UDP flow
    // pays the VIP lookup and the hash for nothing (about 25 ns).
    let early = if pkt.proto == PROTO_UDP {
        match pick(pkt, key, cfg, exact.then_some(bit), any_bit) {
            Some(p) => Some(p),
            None => return verdict(counter::PASS_NOT_VIP, XDP_PASS),
        }
    } else {
        None
    };

    let mut chosen: Option<(u32, &Backend, u32, u32)> = None;
    if !is_syn {
        if let Some(fv) = FLOWS.get_ptr_mut(key) {
            let fv = unsafe { &mut *fv };
            // Another CPU may have stored a slightly newer time.
            let idle = now.saturating_sub(fv.last_seen_ns);
            if pkt.proto == PROTO_UDP && idle > cfg.udp_idle_timeout_ns {
                count(counter::UDP_FLOW_EXPIRED);
            } else if let Some(be) = BACKENDS.get(fv.backend) {
                // Down (disabled, released), the slot handed to another
                // backend since (a new generation), or an unhealthy
                // backend's UDP flow: schedule anew.
                if be.flags & (BACKEND_F_DOWN | BACKEND_F_USED) != BACKEND_F_USED
                    || be.gen != fv.gen
                    || be.vip_id as u32 != fv.vip_id
                    || (pkt.proto == PROTO_UDP && be.flags & BACKEND_F_UNHEALTHY != 0)
                {
                    count(counter::RESCHEDULED_DOWN);
                } else {
                    if idle > LAST_SEEN_GRANULARITY_NS {
                        fv.last_seen_ns = now;
                    }
                    chosen = Some((fv.backend, be, fv.hash, fv.vip_id));
                    count(counter::FLOW_HIT);
                }
            }
        }
    }

    let mut new_flow = false;
    let (backend_id, backend, hash, vip_id) = match chosen {
        Some(c) => c,
        None => {
            let p = match early {
                Some(p) => p,
                None => match pick(pkt, key, cfg, exact.then_some(bit), any_bit) {
                    Some(p) => p,
                    None => return verdict(counter::PASS_NOT_VIP, XDP_PASS),
                },
            };
            count(counter::FLOW_MISS);
            if p.backend == NO_BACKEND {
                return drop_no_backend(p.vip_id);
            }
            let Some(be) = BACKENDS.get(p.backend) else {
                return drop_no_backend(p.vip_id);
            };
            if !is_rst {
                let mut v = MaybeUninit::uninit();
                let fv: &mut FlowValue = zeroed(&mut v);
                fv.backend = p.backend;
                fv.vip_id = p.vip_id;
                fv.last_seen_ns = now;
                fv.hash = p.hash;
                fv.gen = be.gen;
                let _ = FLOWS.insert(key, *fv, 0);
            }
            new_flow = true;
            (p.backend, be, p.hash, p.vip_id)
        }
    };

    let action = match forward(ctx, pkt, cfg, backend_id, backend, hash, now) {
        Sent::Forwarded(action) => action,
        Sent::Answered => return XDP_TX,
        Sent::Dropped => {
            if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
                unsafe { (*s).drops += 1 };
            }
            return XDP_DROP;
        }
    };
    let bytes = pkt.ip_len as u64;
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        if new_flow {
            s.new_flows += 1;
        }
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        if new_flow {
            s.new_flows += 1;
        }
    }
    if new_flow {
        count(counter::NEW_FLOW);
    }
    action
}

/// A new flow's VIP, flow hash and Maglev pick (`NO_BACKEND` when the
/// table is empty).
#[derive(Clone, Copy)]
struct Pick {
    vip_id: u32,
    hash: u32,
    backend: u32,
}

/// Finds the VIP of a TCP/UDP packet (`bit`: the filter bit of its port
/// when set, `any_bit`: that of port 0) and picks its backend from the
/// Maglev table. `None`: no VIP.
#[inline(always)]
fn pick(pkt: &Packet, key: &FlowKey, cfg: &Config, bit: Option<u32>, any_bit: u32) -> Option<Pick> {
    let mut vkey = VipKey {
        addr: pkt.dst,
        port: key.dport,
        proto: pkt.proto,
        family: pkt.family,
    };
    // The exact port first: it takes precedence over an any-port VIP.
    let vip = match bit.and_then(|b| find_vip(&vkey, b)) {
        Some(v) => v,
        None => {
            if cfg.flags & CONFIG_F_ANY_PORT == 0 {
                return None;
            }
            vkey.port = 0;
            find_vip(&vkey, any_bit)?
        }
    };
    let hash = flow_hash(key, &cfg.hash_key) as u32;
    let size = cfg.ring_size;
    let mut backend = NO_BACKEND;
    if size != 0 {
        let slot = hash % size;
        let idx = ring_base(vip.vip_id, vip.active_ring, size) + ring_elem(slot);
        if let Some(e) = RINGS.get(idx) {
            backend = ring_slot(*e, slot);
        }
    }
    Some(Pick {
        vip_id: vip.vip_id,
        hash,
        backend,
    })
}

#[inline(always)]
fn drop_no_backend(vip_id: u32) -> u32 {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        unsafe { (*s).drops += 1 };
    }
    verdict(counter::DROP_NO_BACKEND, XDP_DROP)
}

// ---------------------------------------------------------------- ICMP --

#[inline(always)]
fn icmp_v4(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let Some(icmp) = ptr_at::<[u8; 8]>(ctx, pkt.l4_off) else {
        return verdict(counter::PASS_MALFORMED, XDP_PASS);
    };
    let icmp = icmp as usize;
    let (ty, code) = unsafe { (*(icmp as *const u8), *((icmp + 1) as *const u8)) };
    match (ty, code) {
        (8, 0) => echo_reply(ctx, pkt, icmp, 0),
        (3, 4) => {
            // Frag needed: the quoted packet is one we (or rather the
            // backend) sent from the VIP to the client.
            let inner = pkt.l4_off + 8;
            let Some(iip) = ptr_at::<[u8; IPV4_LEN]>(ctx, inner) else {
                return verdict(counter::PASS_MALFORMED, XDP_PASS);
            };
            let iip = iip as usize;
            let ihl = ((unsafe { *(iip as *const u8) } & 0x0f) as usize) * 4;
            if ihl < IPV4_LEN {
                return verdict(counter::PASS_MALFORMED, XDP_PASS);
            }
            let Some(ports) = ptr_at::<[u8; 4]>(ctx, inner + ihl) else {
                return verdict(counter::PASS_MALFORMED, XDP_PASS);
            };
            let ports = ports as usize;
            let key = unsafe {
                FlowKey {
                    src: [rd32(iip + 16), 0, 0, 0],
                    dst: [rd32(iip + 12), 0, 0, 0],
                    sport: rd16(ports + 2),
                    dport: rd16(ports),
                    proto: *((iip + 9) as *const u8),
                    family: AF_INET,
                    _pad: [0; 2],
                }
            };
            steer_icmp(ctx, pkt, &key)
        }
        _ => verdict(counter::PASS_VIP_OTHER_PROTO, XDP_PASS),
    }
}

#[inline(always)]
fn icmp_v6(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let Some(icmp) = ptr_at::<[u8; 8]>(ctx, pkt.l4_off) else {
        return verdict(counter::PASS_MALFORMED, XDP_PASS);
    };
    let icmp = icmp as usize;
    let (ty, code) = unsafe { (*(icmp as *const u8), *((icmp + 1) as *const u8)) };
    match (ty, code) {
        (128, 0) => echo_reply(ctx, pkt, icmp, 129),
        (2, _) => {
            // Packet too big, quoting a VIP -> client packet.
            let inner = pkt.l4_off + 8;
            let Some(iip) = ptr_at::<[u8; IPV6_LEN + 4]>(ctx, inner) else {
                return verdict(counter::PASS_MALFORMED, XDP_PASS);
            };
            let iip = iip as usize;
            let key = unsafe {
                FlowKey {
                    src: [
                        rd32(iip + 24),
                        rd32(iip + 28),
                        rd32(iip + 32),
                        rd32(iip + 36),
                    ],
                    dst: [
                        rd32(iip + 8),
                        rd32(iip + 12),
                        rd32(iip + 16),
                        rd32(iip + 20),
                    ],
                    sport: rd16(iip + IPV6_LEN + 2),
                    dport: rd16(iip + IPV6_LEN),
                    proto: *((iip + 6) as *const u8),
                    family: AF_INET6,
                    _pad: [0; 2],
                }
            };
            steer_icmp(ctx, pkt, &key)
        }
        _ => verdict(counter::PASS_VIP_OTHER_PROTO, XDP_PASS),
    }
}

/// Sends an ICMP error about flow `key` to the backend serving that flow.
#[inline(always)]
fn steer_icmp(ctx: &XdpContext, pkt: &Packet, key: &FlowKey) -> u32 {
    let Some(fv) = (unsafe { FLOWS.get(key) }) else {
        return verdict(counter::PASS_ICMP_NO_FLOW, XDP_PASS);
    };
    let Some(backend) = BACKENDS.get(fv.backend) else {
        return verdict(counter::PASS_ICMP_NO_FLOW, XDP_PASS);
    };
    // The flow's backend must still be the one that sent the quoted packet.
    if backend.flags & (BACKEND_F_DOWN | BACKEND_F_USED) != BACKEND_F_USED
        || backend.gen != fv.gen
        || backend.vip_id as u32 != fv.vip_id
    {
        return verdict(counter::PASS_ICMP_NO_FLOW, XDP_PASS);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return verdict(counter::PASS_ICMP_NO_FLOW, XDP_PASS);
    };
    let now = clock_ns(cfg);
    match forward(ctx, pkt, cfg, fv.backend, backend, fv.hash, now) {
        Sent::Forwarded(action) => verdict(counter::ICMP_STEERED, action),
        Sent::Answered => XDP_TX,
        Sent::Dropped => XDP_DROP,
    }
}

/// Answers an echo request in place: swap addresses, set the reply type.
/// `reply_type` is 0 for ICMP, 129 for ICMPv6.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, pkt: &Packet, icmp: usize, reply_type: u8) -> u32 {
    let Some(eth) = ptr_at::<[u8; ETH_LEN]>(ctx, 0) else {
        return verdict(counter::PASS_MALFORMED, XDP_PASS);
    };
    let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(ctx, pkt.l2_len) else {
        return verdict(counter::PASS_MALFORMED, XDP_PASS);
    };
    let (eth, ip) = (eth as usize, ip as usize);
    unsafe {
        // Ethernet: back where it came from (word loads, not a byte memmove).
        let (d0, d1) = (rd32(eth), rd16(eth + 4));
        let (s0, s1) = (rd32(eth + 6), rd16(eth + 10));
        wr32(eth, s0);
        wr16(eth + 4, s1);
        wr32(eth + 6, d0);
        wr16(eth + 10, d1);

        // ICMP type (the checksum covers it; code stays 0).
        let old = rd16(icmp);
        *(icmp as *mut u8) = reply_type;
        let new = rd16(icmp);
        wr16(icmp + 2, csum::replace16(rd16(icmp + 2), old, new));

        if pkt.family == AF_INET {
            let s = rd32(ip + 12);
            wr32(ip + 12, rd32(ip + 16));
            wr32(ip + 16, s);
            let old = rd16(ip + 8);
            *((ip + 8) as *mut u8) = OUTER_TTL;
            let new = rd16(ip + 8);
            wr16(ip + 10, csum::replace16(rd16(ip + 10), old, new));
        } else {
            let Some(ip6) = ptr_at::<[u8; IPV6_LEN]>(ctx, pkt.l2_len) else {
                return verdict(counter::PASS_MALFORMED, XDP_PASS);
            };
            let ip6 = ip6 as usize;
            // Swapping source and destination leaves the pseudo-header sum as it was.
            let mut i = 0;
            while i < 16 {
                let a = rd32(ip6 + 8 + i);
                wr32(ip6 + 8 + i, rd32(ip6 + 24 + i));
                wr32(ip6 + 24 + i, a);
                i += 4;
            }
            *((ip6 + 7) as *mut u8) = OUTER_TTL;
        }
    }
    verdict(counter::ICMP_ECHO_REPLY, XDP_TX)
}

// ---------------------------------------------------------- forwarding --

/// Encapsulates the packet towards `backend` and returns the XDP action.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    backend_id: u32,
    backend: &Backend,
    hash: u32,
    now: u64,
) -> Sent {
    let outer_v6 = backend.family == AF_INET6;
    if pkt.family == AF_INET6 && !outer_v6 {
        // 6in4 is not offered; the pool file validation rejects it.
        return dropped(counter::DROP_NO_SOURCE);
    }
    let need = if outer_v6 {
        CONFIG_F_SRC_V6
    } else {
        CONFIG_F_SRC_V4
    };
    if cfg.flags & need == 0 {
        return dropped(counter::DROP_NO_SOURCE);
    }
    let hdr_len = if outer_v6 { IPV6_LEN } else { IPV4_LEN };
    let outer_len = pkt.ip_len + hdr_len;

    // Outer source: the configured address with its host bits from the flow
    // hash, so that backends' receive-side scaling spreads the flows.
    let src: [u32; 4] = if outer_v6 {
        let mut a = cfg.src_v6;
        a[3] = (a[3] & !cfg.src_v6_mask) | (hash & cfg.src_v6_mask);
        a
    } else {
        [
            (cfg.src_v4 & !cfg.src_v4_mask) | (hash & cfg.src_v4_mask),
            0,
            0,
            0,
        ]
    };

    // Route: next-hop MACs and egress interface from the kernel's FIB,
    // through the per-CPU cache.
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(nh) = NEXTHOPS.get_ptr_mut(backend_id) else {
        return dropped(counter::DROP_NO_ROUTE);
    };
    let nh = unsafe { &mut *nh };
    if nh.expires_ns <= now || nh.ingress != ingress || nh.addr != backend.addr {
        count(counter::FIB_LOOKUP);
        let Some(f) = FIB_SCRATCH.get_ptr_mut(0) else {
            return dropped(counter::DROP_NO_ROUTE);
        };
        let fib: &mut bpf_fib_lookup =
            zeroed(unsafe { &mut *(f as *mut MaybeUninit<bpf_fib_lookup>) });
        fib.ifindex = ingress;
        if outer_v6 {
            fib.family = AF_INET6;
            fib.__bindgen_anon_3.ipv6_src = src;
            fib.__bindgen_anon_4.ipv6_dst = backend.addr;
        } else {
            fib.family = AF_INET;
            fib.__bindgen_anon_3.ipv4_src = src[0];
            fib.__bindgen_anon_4.ipv4_dst = backend.addr[0];
        }
        // tot_len 0: no MTU verdict from the FIB; on success it reports the
        // route's MTU in mtu_result, which is cached and checked below.
        let rc = unsafe {
            fib_lookup(
                ctx.ctx as *mut _,
                fib,
                size_of::<bpf_fib_lookup>() as i32,
                0,
            )
        };
        if rc == 0 {
            nh.dmac = fib.dmac;
            nh.smac = fib.smac;
            nh.egress = fib.ifindex;
            nh.mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
            if nh.mtu == 0 {
                nh.mtu = cfg.mtu;
            }
        } else if cfg.flags & CONFIG_F_GATEWAY_MAC != 0 {
            count(counter::FIB_FALLBACK);
            nh.dmac = cfg.gateway_mac;
            nh.smac = pkt.our_mac;
            nh.egress = ingress;
            nh.mtu = cfg.mtu;
        } else {
            nh.expires_ns = 0;
            return dropped(counter::DROP_NO_ROUTE);
        }
        nh.addr = backend.addr;
        nh.ingress = ingress;
        nh.expires_ns = now + defaults::NEXTHOP_TTL_NS;
    }
    if outer_len > nh.mtu as usize {
        // Tell the client the largest packet that fits once encapsulated;
        // an IPv4 packet that may be fragmented cannot be (not in XDP).
        if pkt.family == AF_INET6 || pkt.df {
            return match too_big::reply(ctx, pkt, nh.mtu - hdr_len as u32) {
                XDP_TX => Sent::Answered,
                _ => Sent::Dropped,
            };
        }
        return dropped(counter::DROP_TOO_BIG);
    }
    let (dmac, smac, egress) = (nh.dmac, nh.smac, nh.egress);

    if unsafe { bpf_xdp_adjust_head(ctx.ctx as *mut _, -(hdr_len as i32)) } != 0 {
        return dropped(counter::DROP_ADJUST_HEAD);
    }
    // Every packet pointer is new after adjust_head.
    let l2_len = pkt.l2_len;
    let outer_proto = if pkt.family == AF_INET6 {
        PROTO_IPV6
    } else {
        PROTO_IPIP
    };
    let ethertype = if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP };
    if l2_len == ETH_LEN + VLAN_LEN {
        let Some(eth) = ptr_at::<[u8; ETH_LEN + VLAN_LEN]>(ctx, 0) else {
            return dropped(counter::DROP_ADJUST_HEAD);
        };
        let eth = eth as usize;
        unsafe {
            *(eth as *mut [u8; 6]) = dmac;
            *((eth + 6) as *mut [u8; 6]) = smac;
            wr32(eth + 12, pkt.vlan);
            wr16(eth + 16, ethertype.to_be());
        }
    } else {
        let Some(eth) = ptr_at::<[u8; ETH_LEN]>(ctx, 0) else {
            return dropped(counter::DROP_ADJUST_HEAD);
        };
        let eth = eth as usize;
        unsafe {
            *(eth as *mut [u8; 6]) = dmac;
            *((eth + 6) as *mut [u8; 6]) = smac;
            wr16(eth + 12, ethertype.to_be());
        }
    }

    if outer_v6 {
        let Some(ip) = ptr_at::<[u8; IPV6_LEN]>(ctx, l2_len) else {
            return dropped(counter::DROP_ADJUST_HEAD);
        };
        let ip = ip as usize;
        let first: u32 = (6 << 28) | ((pkt.tos as u32) << 20) | (hash & 0x000f_ffff);
        unsafe {
            wr32(ip, first.to_be());
            wr16(ip + 4, (pkt.ip_len as u16).to_be());
            *((ip + 6) as *mut u8) = outer_proto;
            *((ip + 7) as *mut u8) = OUTER_TTL;
            wr32(ip + 8, src[0]);
            wr32(ip + 12, src[1]);
            wr32(ip + 16, src[2]);
            wr32(ip + 20, src[3]);
            wr32(ip + 24, backend.addr[0]);
            wr32(ip + 28, backend.addr[1]);
            wr32(ip + 32, backend.addr[2]);
            wr32(ip + 36, backend.addr[3]);
        }
    } else {
        let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(ctx, l2_len) else {
            return dropped(counter::DROP_ADJUST_HEAD);
        };
        let ip = ip as usize;
        unsafe {
            *(ip as *mut u8) = 0x45;
            *((ip + 1) as *mut u8) = pkt.tos;
            wr16(ip + 2, (outer_len as u16).to_be());
            // An atomic datagram (DF) needs no identification (RFC 6864);
            // otherwise the inner packet's is unique enough.
            let (id, frag): (u16, u16) = if pkt.df {
                (0, 0x4000u16.to_be())
            } else if pkt.family == AF_INET {
                (pkt.ip_id, 0)
            } else {
                ((hash as u16).to_be(), 0)
            };
            wr16(ip + 4, id);
            wr16(ip + 6, frag);
            *((ip + 8) as *mut u8) = OUTER_TTL;
            *((ip + 9) as *mut u8) = outer_proto;
            wr16(ip + 10, 0);
            wr32(ip + 12, src[0]);
            wr32(ip + 16, backend.addr[0]);
            wr16(ip + 10, csum::ipv4_header(ip));
        }
    }

    if egress == ingress {
        Sent::Forwarded(verdict(counter::TX, XDP_TX))
    } else {
        count(counter::REDIRECT);
        Sent::Forwarded(unsafe { bpf_redirect(egress, 0) as u32 })
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
