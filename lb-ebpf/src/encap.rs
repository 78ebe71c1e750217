//! Forwarding: by encapsulation (IPIP, IP6IP6, IPv4-in-IPv6, each also
//! inside UDP for GUE): the outer source, the MTU check, the new headers in
//! front of the packet; or by L2 direct return (the frame to the backend's
//! MAC). Then the way out (XDP_TX or a redirect).
use aya_ebpf::{
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{
    chain_hlen, chain_len, counter, Backend, Config, GueChain, AF_INET, AF_INET6, BACKEND_F_DSR_L2,
    BACKEND_F_GUE, BACKEND_F_NAT, CHAIN_F_PREV, CHAIN_F_PREV2, CHAIN_KIND, CONFIG_F_SRC_V4,
    CONFIG_F_SRC_V6, NO_BACKEND, PROTO_IPIP, PROTO_IPV6, PROTO_UDP,
};

use crate::action::{count, dropped, verdict, Sent, XDP_TX};
use crate::csum;
use crate::maps::{icmp_allowed, BACKENDS};
use crate::nexthop::{next_hop, NextHopNeed};
use crate::packet::{
    ethertype, ptr_at, write_eth, Ipv4Hdr, Ipv6Hdr, Packet, Ports, UdpHdr, ETH_P_IP, ETH_P_IPV6,
    IPV4_LEN, IPV6_LEN, OUTER_TTL,
};
use crate::too_big;

/// Sends the packet to `backend` (slot `backend_id`, of VIP `vip_id`) as
/// its VIP's forwarding mode says (the slot's flags). `hash`: the flow
/// hash, or a NAT flow's `nat_info`; `tcp_flags` (0 for UDP and ICMP)
/// mark a NAT flow's end.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    backend_id: u32,
    backend: &Backend,
    vip_id: u32,
    hash: u32,
    now: u64,
    tcp_flags: u8,
) -> Sent {
    if backend.flags & BACKEND_F_DSR_L2 != 0 {
        return forward_l2(ctx, pkt, cfg, backend_id, backend, now);
    }
    if backend.flags & BACKEND_F_NAT != 0 {
        return crate::nat::forward_nat(
            ctx, pkt, cfg, backend_id, backend, vip_id, hash, now, tcp_flags,
        );
    }
    encapsulate(ctx, pkt, cfg, backend_id, backend, hash, now, None)
}

/// A stateless VIP's previous backends for the GUE header: their slots
/// (`NO_BACKEND`: none) and the seconds since the slot last changed.
#[derive(Clone, Copy)]
pub struct Chain {
    pub prev: u32,
    pub prev2: u32,
    pub age_s: u16,
}

/// Encapsulates the packet to `backend`: IPIP / IP6IP6 / 4in6, inside UDP
/// for GUE; with `chain` (a stateless VIP), always GUE, its header
/// naming the previous backend.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn encapsulate(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    backend_id: u32,
    backend: &Backend,
    hash: u32,
    now: u64,
    chain: Option<Chain>,
) -> Sent {
    let outer_v6 = backend.family == AF_INET6;
    let Some(src) = outer_source(pkt, cfg, outer_v6, hash) else {
        return dropped(counter::DROP_NO_SOURCE);
    };
    let gue = chain.is_some() || backend.flags & BACKEND_F_GUE != 0;
    let ip_len = if outer_v6 { IPV6_LEN } else { IPV4_LEN };
    let gue_len = match chain {
        Some(_) => chain_len(outer_v6),
        None => 0,
    };
    let hdr_len = ip_len + if gue { UDP_LEN + gue_len } else { 0 };
    let outer_len = pkt.ip_len + hdr_len;
    let need = NextHopNeed::Routed;
    let nh = match next_hop(ctx, pkt, cfg, backend_id, backend, &src, now, need) {
        Ok(nh) => nh,
        Err(reason) => return dropped(reason),
    };
    if outer_len > nh.mtu as usize {
        // Tell the client the largest packet that fits once encapsulated;
        // an IPv4 packet that may be fragmented cannot be (not in XDP).
        if pkt.family == AF_INET6 || pkt.df {
            if !icmp_allowed(now) {
                return dropped(counter::DROP_ICMP_RATE);
            }
            return match too_big::reply(ctx, pkt, nh.mtu - hdr_len as u32) {
                XDP_TX => Sent::Answered,
                _ => Sent::Dropped,
            };
        }
        return dropped(counter::DROP_TOO_BIG);
    }
    // `next_hop` checked (or set) the entry's ingress: this packet's.
    let (dmac, smac, egress, ingress) = (nh.dmac, nh.smac, nh.egress, nh.ingress);
    if unsafe { bpf_xdp_adjust_head(ctx.ctx as *mut _, -(hdr_len as i32)) } != 0 {
        return dropped(counter::DROP_ADJUST_HEAD);
    }
    // Every packet pointer is new after adjust_head.
    let ethertype = if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP };
    if write_eth(ctx, pkt, &dmac, &smac, ethertype).is_none() {
        return dropped(counter::DROP_ADJUST_HEAD);
    }
    let proto = if gue { PROTO_UDP } else { inner_proto(pkt) };
    let written = if outer_v6 {
        write_outer_v6(ctx, pkt, &src, backend, hash, proto, outer_len - IPV6_LEN)
    } else {
        write_outer_v4(ctx, pkt, src[0], backend, hash, proto, outer_len)
    };
    if written.is_none() || (gue && write_gue(ctx, pkt, ip_len, cfg, hash, gue_len).is_none()) {
        return dropped(counter::DROP_ADJUST_HEAD);
    }
    if let Some(c) = chain {
        if write_chain(ctx, pkt, ip_len + UDP_LEN, outer_v6, c).is_none() {
            return dropped(counter::DROP_ADJUST_HEAD);
        }
    }
    way_out(egress, ingress)
}

/// XDP_TX when the packet leaves where it came in, else a redirect.
#[inline(always)]
pub fn way_out(egress: u32, ingress: u32) -> Sent {
    if egress == ingress {
        Sent::Forwarded(verdict(counter::TX, XDP_TX))
    } else {
        count(counter::REDIRECT);
        Sent::Forwarded(unsafe { bpf_redirect(egress, 0) as u32 })
    }
}

/// L2 direct return: the frame, unchanged but for its MACs, to the
/// backend's on its directly connected network (the FIB's next hop must
/// be the backend itself; the daemon refuses other backends, and the data
/// path drops what it finds routed, counted).
#[inline(always)]
fn forward_l2(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    backend_id: u32,
    backend: &Backend,
    now: u64,
) -> Sent {
    let nh = match next_hop(
        ctx,
        pkt,
        cfg,
        backend_id,
        backend,
        &pkt.dst,
        now,
        NextHopNeed::OnLink,
    ) {
        Ok(nh) => nh,
        Err(reason) => return dropped(reason),
    };
    let (dmac, smac, egress, ingress) = (nh.dmac, nh.smac, nh.egress, nh.ingress);
    if write_eth(ctx, pkt, &dmac, &smac, ethertype(pkt)).is_none() {
        return dropped(counter::DROP_ADJUST_HEAD);
    }
    way_out(egress, ingress)
}

/// Bytes of the UDP header GUE adds.
const UDP_LEN: usize = core::mem::size_of::<UdpHdr>();

/// The UDP header of a GUE packet (variant 1: the tunnelled IP packet
/// right after it), after the outer IP header of `ip_len` bytes: the source
/// port from the flow hash (in 49152..=65535), so that backends' receive-side
/// scaling spreads the flows; checksum 0 (the inner packet has its own).
#[inline(always)]
fn write_gue(
    ctx: &XdpContext,
    pkt: &Packet,
    ip_len: usize,
    cfg: &Config,
    hash: u32,
    gue_len: usize,
) -> Option<()> {
    let udp = unsafe { &mut *ptr_at::<UdpHdr>(ctx, pkt.l2_len + ip_len)? };
    udp.ports = Ports {
        src: (0xc000 | (hash ^ (hash >> 16)) as u16 & 0x3fff).to_be(),
        dst: cfg.gue_port,
    };
    udp.len = ((pkt.ip_len + UDP_LEN + gue_len) as u16).to_be();
    udp.check = 0;
    Some(())
}

/// A stateless VIP's GUE header (`GueChain`, then the two previous
/// backends' addresses in the outer family, zero for none), `off` bytes
/// after the Ethernet header.
#[inline(always)]
fn write_chain(ctx: &XdpContext, pkt: &Packet, off: usize, outer_v6: bool, c: Chain) -> Option<()> {
    let off = pkt.l2_len + off;
    let h = unsafe { &mut *ptr_at::<GueChain>(ctx, off)? };
    h.ver_hlen = chain_hlen(outer_v6);
    h.proto = inner_proto(pkt);
    h.flags = 0;
    h.kind = CHAIN_KIND;
    h.age_s = c.age_s.to_be();
    let get = |id: u32| {
        if id == NO_BACKEND {
            None
        } else {
            BACKENDS.get(id)
        }
    };
    let (a, b) = (get(c.prev), get(c.prev2));
    h.chain_flags =
        if a.is_some() { CHAIN_F_PREV } else { 0 } | if b.is_some() { CHAIN_F_PREV2 } else { 0 };
    let (a, b) = (
        a.map_or([0u32; 4], |x| x.addr),
        b.map_or([0u32; 4], |x| x.addr),
    );
    let off = off + core::mem::size_of::<GueChain>();
    if outer_v6 {
        unsafe { *ptr_at::<[[u32; 4]; 2]>(ctx, off)? = [a, b] };
    } else {
        unsafe { *ptr_at::<[u32; 2]>(ctx, off)? = [a[0], b[0]] };
    }
    Some(())
}

/// The outer source: the configured address with its host bits from the
/// flow hash, so that backends' receive-side scaling spreads the flows.
/// `None`: no source of the backend's family is configured (or the packet
/// would need 6in4, which is not offered; the pool file rejects it).
#[inline(always)]
fn outer_source(pkt: &Packet, cfg: &Config, outer_v6: bool, hash: u32) -> Option<[u32; 4]> {
    if pkt.family == AF_INET6 && !outer_v6 {
        return None;
    }
    let need = if outer_v6 {
        CONFIG_F_SRC_V6
    } else {
        CONFIG_F_SRC_V4
    };
    if cfg.flags & need == 0 {
        return None;
    }
    Some(if outer_v6 {
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
    })
}

/// The protocol number of the packet inside the tunnel.
#[inline(always)]
fn inner_proto(pkt: &Packet) -> u8 {
    if pkt.family == AF_INET6 {
        PROTO_IPV6
    } else {
        PROTO_IPIP
    }
}

#[inline(always)]
fn write_outer_v6(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &[u32; 4],
    backend: &Backend,
    hash: u32,
    proto: u8,
    payload_len: usize,
) -> Option<()> {
    let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, pkt.l2_len)? };
    let first: u32 = (6 << 28) | ((pkt.tos as u32) << 20) | (hash & 0x000f_ffff);
    ip.vtc_flow = first.to_be();
    ip.payload_len = (payload_len as u16).to_be();
    ip.next_hdr = proto;
    ip.hop_limit = OUTER_TTL;
    ip.src = *src;
    ip.dst = backend.addr;
    Some(())
}

#[inline(always)]
fn write_outer_v4(
    ctx: &XdpContext,
    pkt: &Packet,
    src: u32,
    backend: &Backend,
    hash: u32,
    proto: u8,
    outer_len: usize,
) -> Option<()> {
    let ip = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, pkt.l2_len)? };
    // An atomic datagram (DF) needs no identification (RFC 6864);
    // otherwise the inner packet's is unique enough.
    let (id, frag_off): (u16, u16) = if pkt.df {
        (0, 0x4000u16.to_be())
    } else if pkt.family == AF_INET {
        (pkt.ip_id, 0)
    } else {
        ((hash as u16).to_be(), 0)
    };
    ip.vihl = 0x45;
    ip.tos = pkt.tos;
    ip.tot_len = (outer_len as u16).to_be();
    ip.id = id;
    ip.frag_off = frag_off;
    ip.ttl = OUTER_TTL;
    ip.proto = proto;
    ip.check = 0;
    ip.src = src;
    ip.dst = backend.addr[0];
    ip.check = unsafe { csum::ipv4_header(ip as *mut Ipv4Hdr as usize) };
    Some(())
}
