//! Which VIP a packet is for, and which backend a new flow goes to: the VIP
//! filter, the VIP lookup, and the schedulers (Maglev, weighted random,
//! source hash and least connections read the VIP's Maglev table; round
//! robin and exact least connections the sequence the daemon wrote there),
//! then persistence and connection limits.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use core::intrinsics::unlikely;
use core::mem::MaybeUninit;
use lb_common::{
    counter, flow_hash, ring_elem, ring_slot, scheduler, second_choice, vip_filter_bit, AddrKey,
    Config, FlowKey, PersistKey, VipInfo, VipKey, AF_INET6, CONFIG_F_ANY_PORT, MAX_EXACT_BACKENDS,
    NO_BACKEND, VIP_F_COUNT,
};

use crate::action::{verdict, XDP_DROP};
use crate::load::{has_room, less_loaded, persist, persisted, scan_step};
use crate::maps::{
    scratch_key, vip_drop, KEY_SOURCE, MEMBERS, PERSIST_SCRATCH, RINGS, RR_POS, VIPS, VIP_ADDRS,
    VIP_FILTER, VIP_INDEX,
};
use crate::nat::NatRange;
use crate::packet::{zeroed, Packet};

/// The VIP filter bits of a TCP/UDP packet: that of its port when set, and
/// that of port 0. `None`: no VIP serves it (passed with no map lookup).
#[derive(Clone, Copy)]
pub struct VipBits {
    pub exact: Option<u32>,
    pub any: u32,
}

/// Looks the packet's (address, port, protocol) up in the VIP filter.
#[inline(always)]
pub fn vip_bits(pkt: &Packet, dport: u16, cfg: &Config) -> Option<VipBits> {
    let bit = vip_filter_bit(pkt.dst, dport, pkt.proto, pkt.family);
    let any = vip_filter_bit(pkt.dst, 0, pkt.proto, pkt.family);
    let exact = vip_filter_has(bit);
    if !exact && !(cfg.flags & CONFIG_F_ANY_PORT != 0 && vip_filter_has(any)) {
        return None;
    }
    Some(VipBits {
        exact: exact.then_some(bit),
        any,
    })
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
fn find_vip(key: &VipKey, bit: u32) -> Option<&'static VipInfo> {
    if let Some(e) = VIP_INDEX.get(bit) {
        if e.key.addr == key.addr
            && e.key.port == key.port
            && e.key.proto == key.proto
            && e.key.family == key.family
        {
            return Some(&e.info);
        }
    }
    unsafe { VIPS.get(key) }
}

/// Whether some VIP uses this address (for traffic without ports).
#[inline(always)]
pub fn is_vip_addr(addr: [u32; 4], family: u8) -> bool {
    let mut k = MaybeUninit::uninit();
    let key: &mut AddrKey = zeroed(&mut k);
    key.addr = addr;
    key.family = family;
    unsafe { VIP_ADDRS.get(*key) }.is_some()
}

/// A new flow's VIP, flow hash and scheduled backend (`NO_BACKEND` when
/// the VIP has none).
#[derive(Clone, Copy)]
pub struct Pick {
    pub vip_id: u32,
    pub hash: u32,
    pub backend: u32,
    /// The VIP counts active connections (`VIP_F_COUNT`).
    pub counts: bool,
    /// The VIP's NAT source addresses and ports.
    pub nat: NatRange,
}

/// `Pick::backend` of a VIP whose scheduler has effects or reads shared
/// state (round robin, least connections, persistence, limits), picked
/// with `advance` false: nothing may move for a packet that may be of a
/// known flow.
pub const DEFERRED: u32 = NO_BACKEND - 1;
/// `Pick::backend` when every backend the new flow could go to is at its
/// `max_connections`.
pub const FULL: u32 = NO_BACKEND - 2;
/// Backends tried, beyond the scheduler's, for a new flow whose backend is
/// at its `max_connections`.
const FULL_RETRIES: u32 = 4;

/// The VIP of the flow `key`: the exact port first (it takes precedence
/// over an any-port VIP), then port 0. `None`: no VIP.
#[inline(always)]
pub fn vip_of(key: &FlowKey, cfg: &Config, bits: VipBits) -> Option<&'static VipInfo> {
    let mut vkey = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    match bits.exact.and_then(|b| find_vip(&vkey, b)) {
        Some(v) => Some(v),
        None => {
            if cfg.flags & CONFIG_F_ANY_PORT == 0 {
                return None;
            }
            vkey.port = 0;
            find_vip(&vkey, bits.any)
        }
    }
}

/// Finds the VIP of the flow `key` (exact port first: it takes precedence
/// over an any-port VIP) and picks its backend. `None`: no VIP. With
/// `advance` false (UDP's pick ahead of the flow-table lookup), a VIP
/// whose scheduler has effects answers `DEFERRED`.
#[inline(always)]
pub fn pick(key: &FlowKey, cfg: &Config, bits: VipBits, advance: bool, now: u64) -> Option<Pick> {
    let vip = vip_of(key, cfg, bits)?;
    let hash = flow_hash(key, &cfg.hash_key) as u32;
    let counts = vip.flags & VIP_F_COUNT != 0;
    let mut p = Pick {
        vip_id: vip.vip_id,
        hash,
        backend: DEFERRED,
        counts,
        nat: NatRange {
            addrs: vip.nat_addrs,
            lo: vip.nat_port_lo,
            hi: vip.nat_port_hi,
        },
    };
    let stateful = vip.scheduler >= scheduler::ROUND_ROBIN || counts || vip.persist_s != 0;
    if !advance && stateful {
        return Some(p);
    }
    // The stateful options' code is laid out away from the common path
    // (`unlikely`): where it sits in the program costs every packet.
    if !unlikely(vip.persist_s != 0) {
        p.backend = schedule(key, vip, cfg, hash, counts);
        return Some(p);
    }
    let client: &mut PersistKey = unsafe { &mut *PERSIST_SCRATCH.get_ptr_mut(0)? };
    client.addr = client_prefix(key, vip);
    client.vip_id = vip.vip_id;
    client.family = key.family;
    client._pad = [0; 3];
    p.backend = match persisted(client, vip, now) {
        Some(b) => b,
        None => {
            let b = schedule(key, vip, cfg, hash, counts);
            if b < FULL {
                persist(client, b, now);
            }
            b
        }
    };
    Some(p)
}

/// The scheduler's backend for a new flow of `vip`; with connections
/// counted, one below its limit (`FULL` when none is found).
#[inline(always)]
fn schedule(key: &FlowKey, vip: &VipInfo, cfg: &Config, hash: u32, counts: bool) -> u32 {
    // The map writer keeps it within the room (`Config::ring_size`).
    let size = vip.ring_size;
    if unlikely(vip.scheduler == scheduler::LEAST_CONN_EXACT) {
        return least_exact(vip, size);
    }
    // The slot of the VIP's Maglev table: the flow hash (Maglev), a random
    // one (weighted random: the table holds each backend in proportion to
    // its weight), or the hash of the client's address prefix.
    let b = match vip.scheduler {
        scheduler::RANDOM => maglev(vip, unsafe { bpf_get_prandom_u32() }, size),
        scheduler::SOURCE_HASH => maglev(vip, source_hash(key, vip, cfg), size),
        scheduler::ROUND_ROBIN => round_robin(vip, size),
        scheduler::LEAST_CONN => {
            // Two choices by weight: Maglev's slot for the flow hash, and
            // a neighbour of it (`second_choice`).
            if size == 0 {
                return NO_BACKEND;
            }
            let sa = hash % size;
            let a = slot_at(vip, sa);
            if a == NO_BACKEND {
                return NO_BACKEND;
            }
            // Both are checked for room here (`FULL`: neither has).
            let b = slot_at(vip, second_choice(sa, hash, size));
            less_loaded(a, b).unwrap_or(FULL)
        }
        _ => maglev(vip, hash, size),
    };
    let checked = vip.scheduler == scheduler::LEAST_CONN;
    if !unlikely(b == FULL || (counts && !checked && b != NO_BACKEND && !has_room(b))) {
        return b;
    }
    // At its limit: other backends, by weight: the sequence's next ones,
    // or the table's slots on from a random one (a Maglev table interleaves
    // its backends, so a few slots in a row reach several).
    let start = unsafe { bpf_get_prandom_u32() };
    let mut i = 0;
    while i < FULL_RETRIES {
        let c = if vip.scheduler == scheduler::ROUND_ROBIN {
            round_robin(vip, size)
        } else {
            maglev(vip, start.wrapping_add(i), size)
        };
        if c != NO_BACKEND && has_room(c) {
            return c;
        }
        i += 1;
    }
    FULL
}

/// Of every backend in the VIP's sequence, the one with the fewest active
/// connections per weight, below its limit: `FULL` when all are at it,
/// `NO_BACKEND` when there is none.
#[inline(always)]
fn least_exact(vip: &VipInfo, size: u32) -> u32 {
    let len = vip.seq_len;
    if len == 0 || len > size || len > MAX_EXACT_BACKENDS {
        return NO_BACKEND;
    }
    let base = vip.ring;
    let mut best = (NO_BACKEND, 0u64, 1u64);
    let mut slot = 0;
    while slot < MAX_EXACT_BACKENDS {
        if slot >= len {
            break;
        }
        if let Some(e) = RINGS.get(base + ring_elem(slot)) {
            let b = member(vip, ring_slot(*e, slot));
            if b != NO_BACKEND {
                scan_step(&mut best, b);
            }
        }
        slot += 1;
    }
    if best.0 == NO_BACKEND {
        FULL
    } else {
        best.0
    }
}

/// The next backend of a round-robin VIP's sequence on this CPU.
#[inline(always)]
fn round_robin(vip: &VipInfo, size: u32) -> u32 {
    let len = vip.seq_len;
    if len == 0 || len > size {
        return NO_BACKEND;
    }
    let Some(pos) = RR_POS.get_ptr_mut(vip.vip_id) else {
        return NO_BACKEND;
    };
    let pos = unsafe { &mut *pos };
    let slot = *pos % len;
    *pos = slot + 1;
    match RINGS.get(vip.ring + ring_elem(slot)) {
        Some(e) => member(vip, ring_slot(*e, slot)),
        None => NO_BACKEND,
    }
}

/// The hash of the client's address cut to the VIP's prefix, with the
/// flow hash's secret: the same on every node that shares the secret.
#[inline(always)]
fn source_hash(key: &FlowKey, vip: &VipInfo, cfg: &Config) -> u32 {
    let Some(src) = scratch_key(KEY_SOURCE) else {
        return 0;
    };
    src.family = key.family;
    src.src = client_prefix(key, vip);
    flow_hash(src, &cfg.hash_key) as u32
}

/// The client's address cut to the VIP's prefix (the bits of
/// `src_prefix_v4` or `src_prefix_v6`).
#[inline(always)]
fn client_prefix(key: &FlowKey, vip: &VipInfo) -> [u32; 4] {
    let bits = if key.family == AF_INET6 {
        vip.src_prefix_v6 as u32
    } else {
        vip.src_prefix_v4 as u32
    };
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        // Network byte order: the first `bits` bits of the address.
        let keep = bits.saturating_sub(i as u32 * 32).min(32);
        let mask = if keep == 0 {
            0
        } else {
            (u32::MAX << (32 - keep)).to_be()
        };
        out[i] = key.src[i] & mask;
        i += 1;
    }
    out
}

/// The backend in the VIP's active Maglev table at the flow's hash.
#[inline(always)]
fn maglev(vip: &VipInfo, hash: u32, size: u32) -> u32 {
    if size == 0 {
        return NO_BACKEND;
    }
    slot_at(vip, hash % size)
}

/// The backend at `slot` of the VIP's active table.
#[inline(always)]
pub fn slot_at(vip: &VipInfo, slot: u32) -> u32 {
    match RINGS.get(vip.ring + ring_elem(slot)) {
        Some(e) => member(vip, ring_slot(*e, slot)),
        None => NO_BACKEND,
    }
}

/// The backend id that member `index` of the VIP's active table is
/// (`NO_BACKEND` for none).
#[inline(always)]
fn member(vip: &VipInfo, index: u32) -> u32 {
    if index == NO_BACKEND {
        return NO_BACKEND;
    }
    match MEMBERS.get(vip.members + index) {
        Some(&id) if id != 0 => id as u32 - 1,
        _ => NO_BACKEND,
    }
}

/// Drops a new flow of a VIP that has no backend to take it (`full`:
/// every one it could go to is at its limit), counted.
#[inline(always)]
pub fn drop_no_backend(vip_id: u32, full: bool) -> u32 {
    vip_drop(vip_id);
    if full {
        verdict(counter::DROP_BACKENDS_FULL, XDP_DROP)
    } else {
        verdict(counter::DROP_NO_BACKEND, XDP_DROP)
    }
}
