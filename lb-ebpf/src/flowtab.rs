//! The flow table: sets of `FLOW_WAYS` entries of half a line (`FLOWS`, in
//! chunks of `FLOW_CHUNK_SETS` sets), the set named by a keyed hash of the
//! flow (`Config::flow_seed`), the flow in it by a second one, its
//! identity (`lb_common::table_hash`). A flow is looked up in its set only,
//! its ways in order up to the first never used. A new flow takes the
//! first never-used way, else a gone one, else that of a flow seen in one
//! packet only, else that of the flow seen longest ago (its connection
//! count released): `lb_flow_place`. No lock and no list.
//!
//! Entries are written without a lock, so a second writer may meet one
//! half written. A writer marks the entry gone first, writes the value,
//! then the identity, and reads it all back (`lb_flow_seal`): an entry
//! another CPU wrote into at the same time is left gone (both flows are
//! scheduled anew with their next packet), so no identity stays paired
//! with another flow's backend. A reader that matched the identity a
//! moment before a writer took the entry may still read the new value:
//! that one packet goes where the new flow goes.
//!
//! The table grows while it serves (`Config::flow_sets`): the daemon
//! writes the larger set count with the one before (`flow_sets_old`),
//! then moves each flow whose set changed (`lb_flow_move`), then writes
//! the two equal. Meanwhile a flow is stored at its new set and looked up
//! there first, then at its old one, so no flow is missed while it moves.
//!
//! The scans over a set's ways are global BPF functions: the verifier
//! checks each once, not once per path of `lb_xdp` into it, and each has
//! a frame of its own (`lb_xdp`'s stack is nearly full). What follows a
//! scan sees one entry at a variable offset (`bounded_way`).
use core::intrinsics::{atomic_cxchg, AtomicOrdering};
use core::mem::size_of;
use lb_common::{
    ident_set, place_rank, Config, FlowEntry, FlowKey, FlowMove, FlowSet, FlowSwap, FLOW_CHUNK_PAD,
    FLOW_CHUNK_SETS, FLOW_FREE, FLOW_GONE, FLOW_WAYS,
};

use crate::load::release;
use crate::maps::FLOWS;
use core::ptr::{read_volatile, write_volatile};

/// Where a flow lives: its set's number, and its identity in the set;
/// while the table grows, also its set before (else the same).
/// Hashed once for a packet ([`place`]), then looked up ([`get_at`]) or
/// stored into ([`insert_at`]) with no second hash. Numbers, not a
/// pointer to the set: a map pointer held across the scheduler would
/// multiply the verifier's states past its budget.
#[derive(Clone, Copy)]
pub struct Place {
    set: u32,
    old: u32,
    ident: u64,
}

/// `key`'s place.
#[inline(always)]
pub fn place(key: &FlowKey, cfg: &Config) -> Place {
    let (set, ident) = lb_common::flow_place(key, &cfg.flow_seed, cfg.flow_sets);
    let old = ident_set(ident, cfg.flow_sets_old);
    Place { set, old, ident }
}

/// Set `i` of the table: set `i % 126` of chunk `i / 126`.
#[inline(always)]
fn set_at(i: u32) -> Option<*mut FlowSet> {
    let (c, s) = lb_common::chunk_of(i);
    // The verifier cannot bound `s` through the multiply: checked, on a
    // value LLVM cannot see through (it would drop a check it can prove).
    let s = opaque(s as u64);
    if s >= FLOW_CHUNK_SETS as u64 {
        return None;
    }
    let chunk = FLOWS.get_value_ptr_mut(c, &0)?;
    let set = unsafe { (chunk as *mut u8).add(FLOW_CHUNK_PAD + s as usize * size_of::<FlowSet>()) };
    Some(set as *mut FlowSet)
}

/// One more than the way of `set` that holds the flow of identity `ident`,
/// 0 for none. A global function, for the colder lookups (ICMP errors,
/// NAT, a SYN over the insert rate): the verifier checks it once, not once
/// per path of `lb_xdp` into it, and its frame is its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_flow_match(set: *const FlowSet, ident: u64) -> u64 {
    // The verifier checks a global function for any caller.
    if set.is_null() {
        return 0;
    }
    match_way(unsafe { &*set }, ident)
}

/// `lb_flow_match`'s scan, inlined into the lookup of every packet that
/// is not a SYN ([`find_at`]): a BPF-to-BPF call and its return cost that
/// packet about 20 ns on a kernel whose returns go through a return thunk
/// (the SRSO and retbleed mitigations), and the verifier walks this loop
/// on one path only.
#[inline(always)]
fn match_way(set: &FlowSet, ident: u64) -> u64 {
    let mut w = 0;
    while w < FLOW_WAYS as usize {
        let e = set.ways[w].ident;
        // Ways are taken in order and never freed (see `FLOW_FREE`): no
        // flow lies past a never-used one, whose lines are not read.
        if e == FLOW_FREE {
            return 0;
        }
        if e == ident {
            return w as u64 + 1;
        }
        w += 1;
    }
    0
}

/// Where the flow of identity `ident` goes in `set`: its own way with
/// `PLACE_FOUND` set, else a way no flow holds, else the flow seen in one
/// packet only (`FLOW_PENDING`: a SYN, a first datagram) seen longest ago,
/// else the flow seen longest ago. So a flood of single packets takes the
/// places of its own kind before those of live connections. One pass over
/// the ways (global, as `lb_flow_match`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_flow_place(set: *const FlowSet, ident: u64) -> u64 {
    if set.is_null() {
        return 0;
    }
    let set = unsafe { &*set };
    let mut best = u64::MAX;
    let mut at = 0;
    let mut w = 0;
    while w < FLOW_WAYS as usize {
        let e = &set.ways[w];
        if e.ident == FLOW_FREE {
            // Never used, nor any way past it: the flow is not in the set.
            return if best == 0 { at } else { w as u64 };
        } else if e.ident == FLOW_GONE {
            if best != 0 {
                best = 0;
                at = w as u64;
            }
        } else if e.ident == ident {
            return w as u64 | PLACE_FOUND;
        } else {
            let rank = place_rank(e);
            if rank < best {
                best = rank;
                at = w as u64;
            }
        }
        w += 1;
    }
    at
}

/// `lb_flow_place`: the way holds the flow's identity.
const PLACE_FOUND: u64 = 1 << 8;

/// Way `m - 1` (`m`: what `lb_flow_match` found, not 0), bounded for the
/// verifier.
#[inline(always)]
fn way(m: u64) -> usize {
    bounded_way(m - 1)
}

/// `w` masked to a way. LLVM knows the global functions' results are
/// below `FLOW_WAYS` and would drop the mask; the verifier does not, and
/// needs it.
#[inline(always)]
fn bounded_way(w: u64) -> usize {
    (opaque(w) & (FLOW_WAYS as u64 - 1)) as usize
}

/// `x`, hidden from LLVM by an empty `asm`: a bound check or mask on the
/// result stays in the program for the verifier, which knows less than
/// LLVM does.
#[inline(always)]
fn opaque(mut x: u64) -> u64 {
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) x) };
    x
}

/// `key`'s entry.
#[inline(always)]
pub fn get(key: &FlowKey, cfg: &Config) -> Option<&'static mut FlowEntry> {
    get_at(place(key, cfg))
}

/// The entry of the flow at `p`.
#[inline(always)]
pub fn get_at(p: Place) -> Option<&'static mut FlowEntry> {
    entry_at(p, |set, ident| lb_flow_match(set, ident))
}

/// [`get_at`] with the scan inlined: for the one lookup every packet but
/// a SYN makes.
#[inline(always)]
pub fn find_at(p: Place) -> Option<&'static mut FlowEntry> {
    entry_at(p, match_way)
}

/// The entry of the flow at `p`, as `scan` finds it in the set (one more
/// than its way, 0 for none); while the table grows, else in its set
/// before ([`moving`]).
#[inline(always)]
fn entry_at(p: Place, scan: impl FnOnce(&FlowSet, u64) -> u64) -> Option<&'static mut FlowEntry> {
    let set = set_at(p.set)?;
    let m = scan(unsafe { &*set }, p.ident);
    if m == 0 {
        return moving(p);
    }
    Some(unsafe { &mut (*set).ways[way(m)] })
}

/// While the table grows, the entry of the flow at `p` in its set before,
/// if it is not yet moved.
#[inline(always)]
fn moving(p: Place) -> Option<&'static mut FlowEntry> {
    if p.old == p.set {
        return None;
    }
    let set = set_at(p.old)?;
    let m = lb_flow_match(set, p.ident);
    if m == 0 {
        return None;
    }
    Some(unsafe { &mut (*set).ways[way(m)] })
}

/// The entry to store the flow at `p` in: its own entry, else the one
/// `lb_flow_place` gives up (its connection, if counted, is released). It
/// is marked gone; the caller writes its value, then [`lb_flow_seal`]
/// with `p`'s identity ([`ident`]). `only_new`: not where the flow is
/// stored already (while the table grows, also in its set before):
/// [`Taken::Known`], that entry untouched (the caller may [`retake`] it).
/// `None`: no such set (a table not yet made).
#[inline(always)]
pub fn insert_at(p: Place, only_new: bool) -> Option<Taken> {
    let set = set_at(p.set)?;
    let place = lb_flow_place(set, p.ident);
    let e = unsafe { &mut (*set).ways[bounded_way(place)] };
    if place & PLACE_FOUND != 0 {
        if only_new {
            return Some(Taken::Known(e));
        }
    } else {
        if only_new {
            if let Some(known) = moving(p) {
                return Some(Taken::Known(known));
            }
        }
        if e.holds_flow() {
            release(&mut e.value);
            crate::action::count(lb_common::counter::FLOW_PUSHED_OUT);
        }
    }
    Some(Taken::New(retake(e)))
}

/// What [`insert_at`] gives.
pub enum Taken {
    /// The entry to write the flow into, marked gone meanwhile.
    New(&'static mut FlowEntry),
    /// The flow's own entry, as it was (`only_new`).
    Known(&'static mut FlowEntry),
}

/// Entry `e` marked gone, to be written again (its count already
/// released): a reader misses it meanwhile.
#[inline(always)]
pub fn retake(e: &'static mut FlowEntry) -> &'static mut FlowEntry {
    unsafe { write_volatile(&mut e.ident, FLOW_GONE) };
    e
}

/// The identity of the flow at `p`, for [`lb_flow_seal`].
#[inline(always)]
pub fn ident(p: Place) -> u64 {
    p.ident
}

/// A digest of what a writer puts in an entry's value, but its stamp (a
/// reader may renew that): `lb_flow_seal` compares the entry with it.
#[inline(always)]
pub fn digest(backend: u32, vip_id: u32, hash: u32, gen: u32) -> u64 {
    let a = (backend as u64) | ((vip_id as u64) << 32);
    let b = (hash as u64) | ((gen as u64) << 32);
    (a ^ b.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b
}

/// Ends the write of entry `e` ([`insert`] marked it gone; the caller
/// wrote its value): writes the identity `ident`, one word, then reads the
/// entry back. 1: it holds `ident` and a value of digest `sum`; 0: another
/// CPU wrote into it at the same time, and it is left gone. Global: its
/// frame is its own, and the verifier checks it once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_flow_seal(e: *mut FlowEntry, ident: u64, sum: u64) -> u64 {
    if e.is_null() {
        return 0;
    }
    let e = unsafe { &mut *e };
    unsafe { write_volatile(&mut e.ident, ident) };
    let (now, v) = unsafe { (read_volatile(&e.ident), read_volatile(&e.value)) };
    if now != ident || digest(v.backend, v.vip_id, v.hash, v.gen) != sum {
        unsafe { write_volatile(&mut e.ident, FLOW_GONE) };
        return 0;
    }
    1
}

/// Forgets `key`'s entry (while the table grows, in its set before too).
#[inline(always)]
pub fn remove(key: &FlowKey, cfg: &Config) {
    let p = place(key, cfg);
    if let Some(e) = get_at(p) {
        e.ident = FLOW_GONE;
    }
    if let Some(e) = moving(p) {
        e.ident = FLOW_GONE;
    }
}

/// `lb_flow_swap`: the entry `FlowSwap::index` names gets stamp `new` if
/// its stamp is still `old`, in one atomic compare-and-swap: a packet that
/// renews the stamp at the same moment wins, and so does a new flow that
/// took the entry (its stamp is its own time).
#[inline(always)]
pub fn swap_stamp(ctx: &aya_ebpf::programs::XdpContext) -> u32 {
    use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};
    let Some(req) = crate::packet::ptr_at::<FlowSwap>(ctx, 0) else {
        return XDP_DROP;
    };
    let req = unsafe { &*req };
    let set = req.index / FLOW_WAYS as u64;
    if set > u32::MAX as u64 {
        return XDP_DROP;
    }
    let Some(set) = set_at(set as u32) else {
        return XDP_DROP;
    };
    let word = unsafe { &mut (*set).ways[bounded_way(req.index)].value.last_seen_ns as *mut u64 };
    let (_, swapped) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
            word, req.old, req.new,
        )
    };
    if swapped {
        XDP_PASS
    } else {
        XDP_DROP
    }
}

/// `lb_flow_move`: each flow of set `FlowMove::set` whose set in a table
/// of `FlowMove::sets` sets is another is moved there, as a new flow is
/// stored (the way `lb_flow_place` gives, written, sealed), then marked
/// gone where it was, if that entry still holds it. A flow already stored
/// at its new set (stored again while the table grew) is only marked
/// gone. Its connection count moves with it. XDP_PASS: every flow moved;
/// XDP_DROP: one met another writer (the daemon runs the set again).
#[inline(always)]
pub fn move_set(ctx: &aya_ebpf::programs::XdpContext) -> u32 {
    use aya_ebpf::bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS};
    let Some(req) = crate::packet::ptr_at::<FlowMove>(ctx, 0) else {
        return XDP_ABORTED;
    };
    let (from, sets) = unsafe { ((*req).set, (*req).sets) };
    let Some(src) = set_at(from) else {
        return XDP_ABORTED;
    };
    let mut failed = 0;
    let mut w = 0;
    while w < FLOW_WAYS as usize {
        failed += lb_flow_move_way(src, w as u64, from, sets);
        w += 1;
    }
    if failed == 0 {
        XDP_PASS
    } else {
        XDP_DROP
    }
}

/// `move_set` for way `w` of set `src` (number `from`): 1 if the flow
/// there could not be moved, else 0. Global: the verifier checks it once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lb_flow_move_way(src: *mut FlowSet, w: u64, from: u32, sets: u32) -> u64 {
    if src.is_null() {
        return 0;
    }
    let e = unsafe { &mut (*src).ways[bounded_way(w)] };
    let ident = unsafe { read_volatile(&e.ident) };
    if ident <= FLOW_GONE {
        return 0;
    }
    let to = ident_set(ident, sets);
    if to == from {
        return 0;
    }
    let Some(dst) = set_at(to) else {
        return 1;
    };
    let place = lb_flow_place(dst, ident);
    if place & PLACE_FOUND == 0 {
        let d = unsafe { &mut (*dst).ways[bounded_way(place)] };
        if d.holds_flow() {
            release(&mut d.value);
            crate::action::count(lb_common::counter::FLOW_PUSHED_OUT);
        }
        let d = retake(d);
        let v = unsafe { read_volatile(&e.value) };
        d.value = v;
        if lb_flow_seal(d, ident, digest(v.backend, v.vip_id, v.hash, v.gen)) == 0 {
            return 1;
        }
    }
    // Gone where it was, unless another writer took the entry meanwhile.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
            &mut e.ident,
            ident,
            FLOW_GONE,
        )
    };
    0
}
