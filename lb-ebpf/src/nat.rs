//! Full NAT (`forwarding: nat`): a new flow gets one of its VIP's source
//! addresses and a free port (reserved by its entry in `NAT_REPLIES`);
//! its packets go to the backend from there, and the backend's replies,
//! found in `NAT_REPLIES`, go back to the client from the VIP. Addresses,
//! ports and checksums are rewritten in place; nothing is added.
// Keys and values are passed to the map helpers by reference on purpose:
// they live in per-CPU scratch space, and a copy would not fit the stack.
#![allow(clippy::needless_borrows_for_generic_args)]
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::XdpContext,
};
use lb_common::{
    counter, nat_closed, nat_info, nat_parts, vip_filter_bit, Backend, Config, FlowKey, NatKey,
    NatValue, AF_INET6, LAST_SEEN_GRANULARITY_NS, NAT_ADDRS_PER_FAMILY, NAT_F_FIN_BACKEND,
    NAT_F_FIN_CLIENT, NAT_F_RST, PROTO_TCP, PROTO_UDP,
};

use crate::action::{count, dropped, Sent};
use crate::csum;
use crate::encap::way_out;
use crate::maps::{
    NatScratch, BACKEND_STATS, LIMITS, NAT_ADDRS, NAT_FILTER, NAT_REPLIES, NAT_SCRATCH,
};
use crate::nexthop::{next_hop, NextHopNeed};
use crate::packet::{
    ethertype, ptr_at, write_eth, EthHdr, Packet, Ports, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// Source ports tried for a new flow before it is dropped.
const PORT_TRIES: u32 = 8;

/// The VIP's NAT settings a new flow needs (from `VipInfo`).
#[derive(Clone, Copy)]
pub struct NatRange {
    pub addrs: u8,
    pub lo: u16,
    pub hi: u16,
}

/// The backend's port: its own, or the VIP's (`vport`, network order).
#[inline(always)]
pub fn backend_port(backend_id: u32, vport: u16) -> u16 {
    match LIMITS.get(backend_id) {
        Some(l) if l.port != 0 => l.port,
        _ => vport,
    }
}

/// Source address `idx` of VIP `vip_id` for `family`.
#[inline(always)]
pub fn source_addr(vip_id: u32, family: u8, idx: u32) -> Option<[u32; 4]> {
    let fam = if family == AF_INET6 {
        NAT_ADDRS_PER_FAMILY
    } else {
        0
    };
    NAT_ADDRS
        .get(vip_id * 2 * NAT_ADDRS_PER_FAMILY + fam + idx)
        .copied()
}

/// Reserves a source address and port for a new flow of `key` to
/// `backend` (slot `backend_id`): an entry in `NAT_REPLIES` made with
/// BPF_NOEXIST, or taken over from a flow that ended. `Ok`: the flow's
/// `nat_info`. `Err`: the counter of the drop.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn allocate(
    ctx: &XdpContext,
    pkt: &Packet,
    key: &FlowKey,
    vip_id: u32,
    range: NatRange,
    backend_id: u32,
    backend: &Backend,
    cfg: &Config,
    now: u64,
    syn: bool,
) -> Result<u32, u32> {
    let count_here = if key.family == AF_INET6 {
        (range.addrs >> 4) as u32
    } else {
        (range.addrs & 0x0f) as u32
    };
    if count_here == 0 || count_here > NAT_ADDRS_PER_FAMILY || range.hi < range.lo {
        return Err(counter::DROP_NO_SOURCE);
    }
    let s: &mut NatScratch =
        unsafe { &mut *NAT_SCRATCH.get_ptr_mut(0).ok_or(counter::DROP_NO_SOURCE)? };
    s.key.backend = backend.addr;
    s.key.bport = backend_port(backend_id, key.dport);
    s.key.proto = key.proto;
    s.key.family = key.family;
    s.key._pad = [0; 2];
    s.value.client = *key;
    let eth = unsafe { &*ptr_at::<EthHdr>(ctx, 0).ok_or(counter::DROP_ADJUST_HEAD)? };
    s.value.client_mac = eth.src;
    s.value.our_mac = pkt.our_mac;
    s.value.ifindex = ctx.ingress_ifindex() as u32;
    s.value.flags = 0;
    s.value.last_seen_ns = now;
    s.value.backend_id = backend_id;
    s.value._pad = 0;
    s.value.syn_ns = if syn {
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    let span = (range.hi - range.lo) as u32 + 1;
    let mut i = 0;
    while i < PORT_TRIES {
        let r = unsafe { bpf_get_prandom_u32() };
        let idx = r % count_here;
        let port = range.lo + ((r >> 8) % span) as u16;
        let Some(addr) = source_addr(vip_id, key.family, idx) else {
            return Err(counter::DROP_NO_SOURCE);
        };
        s.key.snat = addr;
        s.key.port = port.to_be();
        if NAT_REPLIES
            .insert(&s.key, &s.value, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Ok(nat_info(idx, port));
        }
        if ended(&s.key, cfg, now)
            && NAT_REPLIES
                .insert(&s.key, &s.value, u64::from(BPF_ANY))
                .is_ok()
        {
            count(counter::NAT_PORT_REUSED);
            return Ok(nat_info(idx, port));
        }
        i += 1;
    }
    Err(counter::DROP_NAT_NO_PORT)
}

/// Whether the flow holding `key` ended (closed and past the closed
/// timeout, or idle past its protocol's); if so its flow-table entry goes
/// too, so a late packet of it cannot use the port's next flow.
#[inline(always)]
fn ended(key: &NatKey, cfg: &Config, now: u64) -> bool {
    let Some(v) = (unsafe { NAT_REPLIES.get(key) }) else {
        return false;
    };
    let idle = now.saturating_sub(v.last_seen_ns);
    let limit = if nat_closed(v.flags) {
        cfg.nat_closed_timeout_ns
    } else if key.proto == PROTO_UDP {
        cfg.udp_idle_timeout_ns
    } else {
        cfg.nat_tcp_timeout_ns
    };
    if idle <= limit + LAST_SEEN_GRANULARITY_NS {
        return false;
    }
    crate::flowtab::remove(&v.client, cfg);
    true
}

/// Sends a NAT flow's packet to its backend: from the VIP's source address
/// and the flow's port (`info`) to the backend's address and port.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn forward_nat(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    backend_id: u32,
    backend: &Backend,
    vip_id: u32,
    info: u32,
    now: u64,
    flags: u8,
) -> Sent {
    let (idx, port) = nat_parts(info);
    let Some(snat) = source_addr(vip_id, pkt.family, idx) else {
        return dropped(counter::DROP_NO_SOURCE);
    };
    let Some(ports) = ptr_at::<Ports>(ctx, pkt.l4_off) else {
        return dropped(counter::DROP_ADJUST_HEAD);
    };
    let bport = backend_port(backend_id, unsafe { (*ports).dst });
    if flags & (TCP_FIN | TCP_RST) != 0 {
        if let Some(v) = record(
            &backend.addr,
            &snat,
            bport,
            port.to_be(),
            pkt.proto,
            pkt.family,
        ) {
            v.flags |= if flags & TCP_RST != 0 {
                NAT_F_RST
            } else {
                NAT_F_FIN_CLIENT
            };
        }
    }
    let nh = match next_hop(
        ctx,
        pkt,
        cfg,
        backend_id,
        backend,
        &snat,
        now,
        NextHopNeed::Routed,
    ) {
        Ok(nh) => nh,
        Err(reason) => return dropped(reason),
    };
    let (dmac, smac, egress, ingress) = (nh.dmac, nh.smac, nh.egress, nh.ingress);
    if rewrite(ctx, pkt, &snat, &backend.addr, port.to_be(), bport).is_none()
        || write_eth(ctx, pkt, &dmac, &smac, ethertype(pkt)).is_none()
    {
        return dropped(counter::DROP_ADJUST_HEAD);
    }
    way_out(egress, ingress)
}

/// A NAT flow's record (`NAT_REPLIES`) for a new connection on its
/// 4-tuple: no longer ended, its handshake timed from now.
#[inline(always)]
pub fn reopen(
    ctx: &XdpContext,
    pkt: &Packet,
    backend_id: u32,
    backend: &Backend,
    vip_id: u32,
    info: u32,
    now: u64,
) {
    let (idx, port) = nat_parts(info);
    let Some(snat) = source_addr(vip_id, pkt.family, idx) else {
        return;
    };
    let Some(ports) = ptr_at::<Ports>(ctx, pkt.l4_off) else {
        return;
    };
    let bport = backend_port(backend_id, unsafe { (*ports).dst });
    if let Some(v) = record(
        &backend.addr,
        &snat,
        bport,
        port.to_be(),
        pkt.proto,
        pkt.family,
    ) {
        v.flags = 0;
        v.last_seen_ns = now;
        v.syn_ns = unsafe { bpf_ktime_get_ns() };
    }
}

/// The `NAT_REPLIES` record of a NAT flow, found by its reply's addresses,
/// ports (network order), protocol and family.
#[inline(always)]
pub fn record(
    backend: &[u32; 4],
    snat: &[u32; 4],
    bport: u16,
    port: u16,
    proto: u8,
    family: u8,
) -> Option<&'static mut NatValue> {
    let s = unsafe { &mut *NAT_SCRATCH.get_ptr_mut(0)? };
    s.key = NatKey {
        backend: *backend,
        snat: *snat,
        bport,
        port,
        proto,
        family,
        _pad: [0; 2],
    };
    NAT_REPLIES.get_ptr_mut(&s.key).map(|v| unsafe { &mut *v })
}

/// Whether `addr` is a NAT source address for `proto` (`NAT_FILTER`: one
/// load and a bit, for the host's other traffic).
#[inline(always)]
pub fn is_source(addr: [u32; 4], proto: u8, family: u8) -> bool {
    let bit = vip_filter_bit(addr, 0, proto, family);
    NAT_FILTER
        .get(bit / 64)
        .is_some_and(|w| *w & (1u64 << (bit % 64)) != 0)
}

/// A backend's reply to a NAT flow: back to the client, from the VIP.
/// `None`: no NAT flow has these addresses and ports (not ours: passed).
#[inline(always)]
pub fn reply(ctx: &XdpContext, pkt: &Packet, ports: &Ports, flags: u8, now: u64) -> Option<u32> {
    if pkt.proto != PROTO_TCP && pkt.proto != PROTO_UDP {
        return None;
    }
    if !is_source(pkt.dst, pkt.proto, pkt.family) {
        return None;
    }
    let v = record(
        &pkt.src, &pkt.dst, ports.src, ports.dst, pkt.proto, pkt.family,
    )?;
    if flags & TCP_RST != 0 {
        v.flags |= NAT_F_RST;
    } else if flags & TCP_FIN != 0 {
        v.flags |= NAT_F_FIN_BACKEND;
    }
    // The backend's answer to the client's SYN: the handshake's time, or
    // a refusal, for its statistics (least response time, passive health).
    if v.syn_ns != 0 && flags & (TCP_SYN | TCP_RST) != 0 {
        if let Some(st) = BACKEND_STATS.get_ptr_mut(v.backend_id) {
            let st = unsafe { &mut *st };
            if flags & TCP_RST != 0 {
                st.refused += 1;
            } else if flags & TCP_ACK != 0 {
                st.handshakes += 1;
                st.handshake_ns += unsafe { bpf_ktime_get_ns() }.saturating_sub(v.syn_ns);
            }
        }
        v.syn_ns = 0;
    }
    if now.saturating_sub(v.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        v.last_seen_ns = now;
    }
    let c = &v.client;
    let (dmac, smac, egress) = (v.client_mac, v.our_mac, v.ifindex);
    if rewrite(ctx, pkt, &c.dst, &c.src, c.dport, c.sport).is_none()
        || write_eth(ctx, pkt, &dmac, &smac, ethertype(pkt)).is_none()
    {
        return Some(crate::action::verdict(
            counter::DROP_ADJUST_HEAD,
            crate::action::XDP_DROP,
        ));
    }
    count(counter::NAT_REPLY);
    Some(match way_out(egress, ctx.ingress_ifindex() as u32) {
        Sent::Forwarded(action) => action,
        _ => crate::action::XDP_DROP,
    })
}

/// Rewrites the packet's addresses and ports (network order) to these,
/// with the IPv4 header checksum and the TCP or UDP checksum updated
/// incrementally (a UDP checksum of 0, "none", stays 0).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &[u32; 4],
    dst: &[u32; 4],
    sport: u16,
    dport: u16,
) -> Option<()> {
    let ports = unsafe { &mut *ptr_at::<Ports>(ctx, pkt.l4_off)? };
    // The sum of the changes to the pseudo-header's addresses.
    let mut addrs: u32 = 0;
    let words = if pkt.family == AF_INET6 { 4 } else { 1 };
    let mut i = 0;
    while i < 4 {
        if i < words {
            addrs += csum::halves(!pkt.src[i]) + csum::halves(src[i]);
            addrs += csum::halves(!pkt.dst[i]) + csum::halves(dst[i]);
        }
        i += 1;
    }
    let l4 = addrs
        + (!ports.src as u32 & 0xffff)
        + sport as u32
        + (!ports.dst as u32 & 0xffff)
        + dport as u32;
    let check_off = if pkt.proto == PROTO_TCP { 16 } else { 6 };
    let check = unsafe { &mut *ptr_at::<u16>(ctx, pkt.l4_off + check_off)? };
    if !(pkt.proto == PROTO_UDP && *check == 0) {
        let c = csum::update(*check, l4);
        *check = if pkt.proto == PROTO_UDP && c == 0 {
            0xffff
        } else {
            c
        };
    }
    ports.src = sport;
    ports.dst = dport;
    if pkt.family == AF_INET6 {
        // Source at 8, destination at 24 bytes into the IPv6 header.
        let a = unsafe { &mut *ptr_at::<[[u32; 4]; 2]>(ctx, pkt.l2_len + 8)? };
        a[0] = *src;
        a[1] = *dst;
    } else {
        // Checksum at 10, source at 12, destination at 16.
        let h = unsafe { &mut *ptr_at::<[u16; 10]>(ctx, pkt.l2_len)? };
        let ip_sum = csum::halves(!pkt.src[0])
            + csum::halves(src[0])
            + csum::halves(!pkt.dst[0])
            + csum::halves(dst[0]);
        h[5] = csum::update(h[5], ip_sum);
        let a = unsafe { &mut *ptr_at::<[u32; 2]>(ctx, pkt.l2_len + 12)? };
        a[0] = src[0];
        a[1] = dst[0];
    }
    Some(())
}
