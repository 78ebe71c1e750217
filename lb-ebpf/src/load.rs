//! Active connections per backend (least connections, `max_connections`)
//! and persistence: the parts of scheduling that keep state per backend or
//! per client.
use core::intrinsics::{atomic_xadd, atomic_xsub, AtomicOrdering};
use lb_common::{
    counter, Backend, FlowValue, PersistKey, PersistValue, VipInfo, BACKEND_F_DOWN,
    BACKEND_F_UNHEALTHY, BACKEND_F_USED, FLOW_OPEN,
};

use crate::action::count;
use crate::maps::{BACKENDS, LIMITS, LOADS, PERSIST};

/// A backend's active connections (as counted; the daemon takes off the
/// ones it finds lost, so a moment's count may be a little high).
#[inline(always)]
pub fn load(backend: u32) -> u64 {
    match LOADS.get(backend) {
        Some(v) => unsafe { core::ptr::read_volatile(v) },
        None => u64::MAX,
    }
}

/// Counts one more active connection on `backend`.
#[inline(always)]
pub fn open(backend: u32) {
    if let Some(p) = LOADS.get_ptr_mut(backend) {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

/// Ends a counted flow: off its backend's count, if the slot still serves
/// the backend the flow was counted on (a reused slot starts at 0).
#[inline(always)]
pub fn release(fv: &mut FlowValue) {
    if fv.last_seen_ns & FLOW_OPEN == 0 {
        return;
    }
    fv.last_seen_ns &= !FLOW_OPEN;
    let Some(be) = BACKENDS.get(fv.backend) else {
        return;
    };
    if be.gen != fv.gen {
        return;
    }
    if let Some(p) = LOADS.get_ptr_mut(fv.backend) {
        unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

/// A backend's weight for least connections (0: it takes no new flow),
/// and its active connections; `None` when it is at its limit.
#[inline(always)]
fn weight_and_load(backend: u32) -> Option<(u64, u64)> {
    let lim = LIMITS.get(backend)?;
    // Read as plain numbers: the verifier must never see arithmetic on a
    // value the compiler kept as a pointer select.
    let weight = unsafe { core::ptr::read_volatile(&lim.weight) } as u64;
    let max = unsafe { core::ptr::read_volatile(&lim.max_conns) } as u64;
    if weight == 0 {
        return None;
    }
    let l = load(backend);
    // A count below 0 (taken off twice in a race) reads as huge: treat it as 0.
    let l = if l > u64::MAX / 2 { 0 } else { l };
    if max != 0 && l >= max {
        return None;
    }
    Some((weight, l))
}

/// Whether `backend` takes one more connection: it takes new flows and is
/// below its `max_connections`.
#[inline(always)]
pub fn has_room(backend: u32) -> bool {
    weight_and_load(backend).is_some()
}

/// Of two backends, the one with fewer active connections per weight
/// (`a` on a tie); `None` when both are full or take no new flow.
#[inline(always)]
pub fn less_loaded(a: u32, b: u32) -> Option<u32> {
    match (weight_and_load(a), weight_and_load(b)) {
        (Some((wa, la)), Some((wb, lb))) => Some(if la * wb <= lb * wa { a } else { b }),
        (Some(_), None) => Some(a),
        (None, Some(_)) => Some(b),
        (None, None) => None,
    }
}

/// The backend of a least-connections scan: `best` so far (with its
/// load and weight) against `candidate`.
#[inline(always)]
pub fn scan_step(best: &mut (u32, u64, u64), candidate: u32) {
    if let Some((w, l)) = weight_and_load(candidate) {
        // l / w < best_l / best_w, without division.
        if best.0 == lb_common::NO_BACKEND || l * best.2 < best.1 * w {
            *best = (candidate, l, w);
        }
    }
}

/// The backend a client of a persistent VIP had, if it may still take a
/// new connection: seen within the VIP's timeout, the same slot
/// generation, up, healthy, taking new flows and below its limit. Its
/// time is renewed.
#[inline(always)]
pub fn persisted(key: &PersistKey, vip: &VipInfo, now: u64) -> Option<u32> {
    let pv = unsafe { &mut *PERSIST.get_ptr_mut(key)? };
    if now.saturating_sub(pv.last_ns) > vip.persist_s as u64 * 1_000_000_000 {
        return None;
    }
    let be: &Backend = BACKENDS.get(pv.backend)?;
    if be.flags & (BACKEND_F_DOWN | BACKEND_F_USED | BACKEND_F_UNHEALTHY) != BACKEND_F_USED
        || be.gen != pv.gen
        || be.vip_id as u32 != vip.vip_id
        || !has_room(pv.backend)
    {
        return None;
    }
    pv.last_ns = now;
    count(counter::PERSIST_HIT);
    Some(pv.backend)
}

/// Remembers the backend a client of a persistent VIP was given.
#[inline(always)]
pub fn persist(key: &PersistKey, backend: u32, now: u64) {
    let Some(be) = BACKENDS.get(backend) else {
        return;
    };
    let v = PersistValue {
        backend,
        gen: be.gen,
        last_ns: now,
    };
    let _ = PERSIST.insert(key, v, 0);
}
