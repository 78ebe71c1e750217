//! The XDP programs: `lb_xdp` balances VIP traffic to backends over IPIP /
//! IP6IP6 / 4in6 tunnels, `lb_decap` strips those tunnels on backends, and
//! `lb_pass` is the trivial program used as a benchmark floor and on veth peers;
//! `lb_gen` and `lb_drop` are the live-frames bench's two ends.
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
//!
//! The stages, one file each: `parse`, `schedule` (VIP lookup and the
//! schedulers), `flow` (the flow table), `encap` with `nexthop` and
//! `too_big`, `icmp`; `maps` holds every map, `packet` the header layouts,
//! `action` the verdicts and counters. This file only wires them.
#![no_std]
#![no_main]
// Atomic adds on the shared connection counts: the BPF target has no
// compare-and-swap, so `core::sync::atomic`'s read-modify-write methods are
// missing there, while LLVM lowers the intrinsic to one BPF atomic add.
#![feature(core_intrinsics)]
// An empty `asm` keeps a bound LLVM would drop (`flowtab`).
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod action;
mod csum;
mod decap;
mod decap_chain;
mod encap;
mod flow;
mod flowtab;
mod gen;
mod icmp;
mod load;
mod maps;
mod nat;
mod nat_icmp;
mod nexthop;
mod packet;
mod parse;
mod schedule;
mod stateless;
mod too_big;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    counter, AF_INET, AF_INET6, CONFIG_F_NAT, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::action::{verdict, XDP_PASS};
use crate::packet::{ptr_at, Packet};
use crate::schedule::is_vip_addr;

#[xdp]
#[inline(always)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    balance(&ctx)
}

/// A stateless VIP's packets, tail-called from `lb_xdp` (`stateless`).
#[xdp]
#[inline(always)]
pub fn lb_stateless(ctx: XdpContext) -> u32 {
    stateless::entry(&ctx)
}

/// XDP_PASS and nothing else: the benchmark floor, and what a veth peer needs
/// so that XDP_TX frames are not lost.
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The live-frames generator (`gen`): a bench's, on no packet path.
#[xdp]
pub fn lb_gen(ctx: XdpContext) -> u32 {
    gen::run(&ctx)
}

/// Drops every frame: the receiving end of the live-frames bench.
#[xdp]
pub fn lb_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
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

/// Sets a flow's stamp to a new value if it still holds the old one, for
/// the daemon's census (`flowtab::swap_stamp`): its input is a
/// `lb_common::FlowSwap`. XDP_PASS: swapped; XDP_DROP: not.
#[xdp]
pub fn lb_flow_swap(ctx: XdpContext) -> u32 {
    flowtab::swap_stamp(&ctx)
}

/// Moves one set's flows to their sets in a grown table, for the daemon
/// (`flowtab::move_set`): its input is a `lb_common::FlowMove`.
/// XDP_PASS: all moved; XDP_DROP: run it again.
#[xdp]
pub fn lb_flow_move(ctx: XdpContext) -> u32 {
    flowtab::move_set(&ctx)
}

/// Parse, then by protocol: TCP and UDP go by (address, port, protocol)
/// through the VIP filter, the flow table and the scheduler (`flow`); ICMP
/// to a VIP address is answered or steered (`icmp`); the rest passes.
#[inline(always)]
fn balance(ctx: &XdpContext) -> u32 {
    let pkt = match parse::parse(ctx) {
        Ok(p) => p,
        Err(action) => return action,
    };
    if pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP {
        return flow::balance_l4(ctx, &pkt);
    }
    if !is_vip_addr(pkt.dst, pkt.family) {
        if let Some(action) = nat_icmp_error(ctx, &pkt) {
            return action;
        }
        return verdict(counter::PASS_NOT_VIP, XDP_PASS);
    }
    match (pkt.family, pkt.proto) {
        (AF_INET, PROTO_ICMP) | (AF_INET6, PROTO_ICMPV6) => icmp::icmp(ctx, &pkt),
        _ => verdict(counter::PASS_VIP_OTHER_PROTO, XDP_PASS),
    }
}

/// An ICMP error to no VIP address: one about a NAT flow (from the
/// backend's side) when NAT is on, translated to its client.
#[inline(always)]
fn nat_icmp_error(ctx: &XdpContext, pkt: &Packet) -> Option<u32> {
    let cfg = maps::CONFIG.get(0)?;
    if cfg.flags & CONFIG_F_NAT == 0 {
        return None;
    }
    let icmp = ptr_at::<packet::IcmpHdr>(ctx, pkt.l4_off)?;
    let ty = unsafe { (*icmp).ty };
    // Destination unreachable (and "too big"), time exceeded.
    let error = match (pkt.family, pkt.proto) {
        (AF_INET, PROTO_ICMP) => ty == 3 || ty == 11,
        (AF_INET6, PROTO_ICMPV6) => (1..=3).contains(&ty),
        _ => false,
    };
    if !error {
        return None;
    }
    nat_icmp::from_backend(ctx, pkt)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
