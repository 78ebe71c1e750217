//! Stateless VIPs (`VIP_F_STATELESS`): no flow table. Every packet is
//! hashed to its slot of the VIP's Maglev table and encapsulated in GUE to
//! the slot's backend, naming the backend that held the slot before its
//! last change while that is recent (`Config::chain_window_s`); the
//! backend's `lb_decap` passes a packet of a connection it does not have
//! on to that previous backend (`decap_chain.rs`).
//!
//! Stateless packets run in a program of their own, `lb_stateless`,
//! tail-called from `lb_xdp` when the packet's VIP filter bit is a
//! stateless VIP's (`STATELESS_FILTER`): the verifier walks it on its own
//! budget, and `lb_xdp` carries no second path through the flow table. A
//! packet whose bit a stateless VIP shares with another VIP goes back to
//! `lb_xdp` (`STATELESS_SKIP`).
//!
//! A VIP none of whose slots changed within the window (`VipInfo::
//! chain_until`) does not read `CHAINS` at all: the steady state costs the
//! one table slot.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    chain_age_s, chain_prev, chain_prev2, counter, flow_hash, Config, FlowKey, BACKEND_F_DOWN,
    BACKEND_F_USED, CHAIN_UNTIL_SHIFT, NO_BACKEND, PROG_BALANCER, PROG_STATELESS, PROTO_TCP,
    PROTO_UDP, VIP_F_STATELESS,
};

use crate::action::{count, malformed, verdict, Sent, XDP_DROP, XDP_PASS, XDP_TX};
use crate::encap::{encapsulate, Chain};
use crate::flow::{packet_key, read_ports};
use crate::maps::{
    account, clock_ns, vip_drop, BACKENDS, CHAINS, CONFIG, PROGS, STATELESS_FILTER, STATELESS_SKIP,
};
use crate::packet::{Packet, TCP_ACK, TCP_SYN};
use crate::schedule::{drop_no_backend, slot_at, vip_bits, vip_of, VipBits};

/// In `lb_xdp`: a packet whose VIP filter bit is a stateless VIP's goes to
/// `lb_stateless` (unless that program just handed it back). `None`: not
/// one; `Some`: the tail call failed (no `lb_stateless` loaded), dropped.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, bits: VipBits) -> Option<u32> {
    let bit = bits.exact?;
    let word = STATELESS_FILTER.get(bit / 64)?;
    if *word & (1u64 << (bit % 64)) == 0 {
        return None;
    }
    let skip = STATELESS_SKIP.get_ptr_mut(0)?;
    if unsafe { *skip } != 0 {
        unsafe { *skip = 0 };
        return None;
    }
    unsafe { PROGS.tail_call(ctx, PROG_STATELESS) };
    Some(verdict(counter::DROP_NO_BACKEND, XDP_DROP))
}

/// `lb_stateless`: a packet `lb_xdp` handed over.
#[inline(always)]
pub fn entry(ctx: &XdpContext) -> u32 {
    let pkt = match crate::parse::parse(ctx) {
        Ok(p) => p,
        Err(action) => return action,
    };
    if pkt.proto != PROTO_TCP && pkt.proto != PROTO_UDP {
        return back(ctx);
    }
    let Ok((ports, tcp_flags)) = read_ports(ctx, &pkt) else {
        return malformed();
    };
    let Some(cfg) = CONFIG.get(0) else {
        return back(ctx);
    };
    let (Some(bits), Some(key)) = (vip_bits(&pkt, ports.dst, cfg), packet_key(&pkt, &ports)) else {
        return back(ctx);
    };
    let is_syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    match balance(ctx, &pkt, key, bits, cfg, clock_ns(cfg), is_syn) {
        Some(action) => action,
        None => back(ctx),
    }
}

/// Back to `lb_xdp`, which takes the packet this time.
#[inline(always)]
fn back(ctx: &XdpContext) -> u32 {
    let skip = STATELESS_SKIP.get_ptr_mut(0);
    if let Some(skip) = skip {
        unsafe { *skip = 1 };
    }
    unsafe { PROGS.tail_call(ctx, PROG_BALANCER) };
    // The tail call failed: the mark must not make `lb_xdp` keep the next
    // stateless packet on this CPU.
    if let Some(skip) = skip {
        unsafe { *skip = 0 };
    }
    verdict(counter::PASS_NOT_VIP, XDP_PASS)
}

/// The action for a packet of a stateless VIP; `None`: the packet's VIP
/// is not stateless (or it has none).
#[inline(always)]
fn balance(
    ctx: &XdpContext,
    pkt: &Packet,
    key: &FlowKey,
    bits: VipBits,
    cfg: &Config,
    now: u64,
    is_syn: bool,
) -> Option<u32> {
    let vip = vip_of(key, cfg, bits)?;
    if vip.flags & VIP_F_STATELESS == 0 {
        return None;
    }
    // Within the room: the map writer sees to it.
    let size = vip.ring_size;
    if size == 0 {
        return Some(drop_no_backend(vip.vip_id, false));
    }
    let hash = flow_hash(key, &cfg.hash_key) as u32;
    let slot = hash % size;
    let id = slot_at(vip, slot);
    let Some(backend) = BACKENDS.get(id) else {
        return Some(drop_no_backend(vip.vip_id, false));
    };
    if backend.flags & (BACKEND_F_USED | BACKEND_F_DOWN) != BACKEND_F_USED {
        return Some(drop_no_backend(vip.vip_id, false));
    }
    count(counter::STATELESS);
    let mut chain = Chain {
        prev: NO_BACKEND,
        prev2: NO_BACKEND,
        age_s: 0,
    };
    // No slot of the VIP changed within the window (the steady state): no
    // `CHAINS` read, which is a second cache miss.
    let recent = ((now >> CHAIN_UNTIL_SHIFT) as u32) < vip.chain_until;
    if let Some(e) = recent
        .then(|| CHAINS.get(vip.chain_idx as u32 * cfg.ring_size + slot))
        .flatten()
    {
        // Most slots never changed: no division for them.
        let age = match *e {
            0 => u32::MAX,
            e => chain_age_s(e, (now / 1_000_000_000) as u32),
        };
        if age < cfg.chain_window_s {
            // Each named backend still of this VIP, up, of the outer family,
            // and not the slot's own; the second moves up when the first is not.
            let usable = |b: u32| -> bool {
                b != id
                    && BACKENDS.get(b).is_some_and(|p| {
                        p.flags & (BACKEND_F_USED | BACKEND_F_DOWN) == BACKEND_F_USED
                            && p.family == backend.family
                            && p.vip_id as u32 == vip.vip_id
                    })
            };
            let (a, b) = (chain_prev(*e), chain_prev2(*e));
            let (a, b) = (usable(a).then_some(a), usable(b).then_some(b));
            let (first, second) = match (a, b) {
                (None, b) => (b, None),
                (a, b) => (a, b),
            };
            if let Some(first) = first {
                chain.prev = first;
                chain.prev2 = second.unwrap_or(NO_BACKEND);
                chain.age_s = age.min(u16::MAX as u32) as u16;
                count(counter::STATELESS_PREV);
            }
        }
    }
    Some(
        match encapsulate(ctx, pkt, cfg, id, backend, hash, now, Some(chain)) {
            Sent::Forwarded(action) => {
                account(vip.vip_id, id, pkt.ip_len as u64, is_syn);
                if is_syn {
                    count(counter::NEW_FLOW);
                }
                action
            }
            Sent::Answered => XDP_TX,
            Sent::Dropped => {
                vip_drop(vip.vip_id);
                XDP_DROP
            }
        },
    )
}
