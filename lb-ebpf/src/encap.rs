//! Forwarding by encapsulation (IPIP, IP6IP6, IPv4-in-IPv6): the outer
//! source, the MTU check, the new headers in front of the packet, and the
//! way out (XDP_TX or a redirect).
use aya_ebpf::{
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{
    counter, Backend, Config, AF_INET, AF_INET6, CONFIG_F_SRC_V4, CONFIG_F_SRC_V6, PROTO_IPIP,
    PROTO_IPV6,
};

use crate::action::{count, dropped, verdict, Sent, XDP_TX};
use crate::csum;
use crate::maps::icmp_allowed;
use crate::nexthop::next_hop;
use crate::packet::{
    ptr_at, write_eth, Ipv4Hdr, Ipv6Hdr, Packet, ETH_P_IP, ETH_P_IPV6, IPV4_LEN, IPV6_LEN,
    OUTER_TTL,
};
use crate::too_big;

/// Encapsulates the packet towards `backend` (slot `backend_id`).
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    backend_id: u32,
    backend: &Backend,
    hash: u32,
    now: u64,
) -> Sent {
    let outer_v6 = backend.family == AF_INET6;
    let Some(src) = outer_source(pkt, cfg, outer_v6, hash) else {
        return dropped(counter::DROP_NO_SOURCE);
    };
    let hdr_len = if outer_v6 { IPV6_LEN } else { IPV4_LEN };
    let outer_len = pkt.ip_len + hdr_len;
    let nh = match next_hop(ctx, pkt, cfg, backend_id, backend, &src, now) {
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
    let written = if outer_v6 {
        write_outer_v6(ctx, pkt, &src, backend, hash)
    } else {
        write_outer_v4(ctx, pkt, src[0], backend, hash, outer_len)
    };
    if written.is_none() {
        return dropped(counter::DROP_ADJUST_HEAD);
    }
    if egress == ingress {
        Sent::Forwarded(verdict(counter::TX, XDP_TX))
    } else {
        count(counter::REDIRECT);
        Sent::Forwarded(unsafe { bpf_redirect(egress, 0) as u32 })
    }
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
) -> Option<()> {
    let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, pkt.l2_len)? };
    let first: u32 = (6 << 28) | ((pkt.tos as u32) << 20) | (hash & 0x000f_ffff);
    ip.vtc_flow = first.to_be();
    ip.payload_len = (pkt.ip_len as u16).to_be();
    ip.next_hdr = inner_proto(pkt);
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
    ip.proto = inner_proto(pkt);
    ip.check = 0;
    ip.src = src;
    ip.dst = backend.addr[0];
    ip.check = unsafe { csum::ipv4_header(ip as *mut Ipv4Hdr as usize) };
    Some(())
}
