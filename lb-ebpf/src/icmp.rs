//! ICMP to a VIP address: echo requests answered here; "fragmentation
//! needed" and "packet too big" quoting a VIP flow sent to that flow's
//! backend (which sent the quoted packet, and must lower its path MTU).
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use lb_common::{
    counter, FlowKey, AF_INET, AF_INET6, BACKEND_F_DOWN, BACKEND_F_USED, PROTO_ICMP, PROTO_ICMPV6,
};

use crate::action::{malformed, verdict, Sent, XDP_DROP, XDP_PASS, XDP_TX};
use crate::csum;
use crate::encap::forward;
use crate::maps::{clock_ns, icmp_allowed, BACKENDS, CONFIG};
use crate::packet::{
    ptr_at, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, Packet, Ports, IPV4_LEN, OUTER_TTL,
};

/// ICMP and ICMPv6 to a VIP address.
#[inline(always)]
pub fn icmp(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, pkt.l4_off) else {
        return malformed();
    };
    let (ty, code) = unsafe { ((*icmp).ty, (*icmp).code) };
    let inner = pkt.l4_off + size_of::<IcmpHdr>();
    match (pkt.family, pkt.proto, ty, code) {
        (AF_INET, PROTO_ICMP, 8, 0) => limited_echo_reply(ctx, pkt, icmp, 0),
        (AF_INET6, PROTO_ICMPV6, 128, 0) => limited_echo_reply(ctx, pkt, icmp, 129),
        // Frag needed / packet too big: the quoted packet is one the
        // backend sent from the VIP to the client.
        (AF_INET, PROTO_ICMP, 3, 4) => match quoted_v4(ctx, inner) {
            Some(key) => steer(ctx, pkt, &key),
            None => malformed(),
        },
        (AF_INET6, PROTO_ICMPV6, 2, _) => match quoted_v6(ctx, inner) {
            Some(key) => steer(ctx, pkt, &key),
            None => malformed(),
        },
        _ => verdict(counter::PASS_VIP_OTHER_PROTO, XDP_PASS),
    }
}

/// The flow (as the client sent it) of a quoted backend-to-client packet.
#[inline(always)]
fn client_flow(src: [u32; 4], dst: [u32; 4], ports: &Ports, proto: u8, family: u8) -> FlowKey {
    FlowKey {
        src: dst,
        dst: src,
        sport: ports.dst,
        dport: ports.src,
        proto,
        family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn quoted_v4(ctx: &XdpContext, off: usize) -> Option<FlowKey> {
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, off)? };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < IPV4_LEN {
        return None;
    }
    let ports = unsafe { &*ptr_at::<Ports>(ctx, off + ihl)? };
    let (src, dst) = ([ip.src, 0, 0, 0], [ip.dst, 0, 0, 0]);
    Some(client_flow(src, dst, ports, ip.proto, AF_INET))
}

#[inline(always)]
fn quoted_v6(ctx: &XdpContext, off: usize) -> Option<FlowKey> {
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, off)? };
    let ports = unsafe { &*ptr_at::<Ports>(ctx, off + size_of::<Ipv6Hdr>())? };
    Some(client_flow(ip.src, ip.dst, ports, ip.next_hdr, AF_INET6))
}

/// Sends an ICMP error about flow `key` to the backend serving that flow.
#[inline(always)]
fn steer(ctx: &XdpContext, pkt: &Packet, key: &FlowKey) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return verdict(counter::PASS_ICMP_NO_FLOW, XDP_PASS);
    };
    let Some(e) = crate::flowtab::get(key, cfg) else {
        return verdict(counter::PASS_ICMP_NO_FLOW, XDP_PASS);
    };
    let fv = &e.value;
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
    let now = clock_ns(cfg);
    // A NAT flow's backend knows the flow by other addresses.
    if backend.flags & lb_common::BACKEND_F_NAT != 0 {
        return crate::nat_icmp::to_backend(ctx, pkt, cfg, fv, backend, now);
    }
    match forward(
        ctx, pkt, cfg, fv.backend, backend, fv.vip_id, fv.hash, now, 0,
    ) {
        Sent::Forwarded(action) => verdict(counter::ICMP_STEERED, action),
        Sent::Answered => XDP_TX,
        Sent::Dropped => XDP_DROP,
    }
}

/// An echo reply within the ICMP rate, else a counted drop.
#[inline(always)]
fn limited_echo_reply(ctx: &XdpContext, pkt: &Packet, icmp: *mut IcmpHdr, reply_type: u8) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return verdict(counter::DROP_ICMP_RATE, XDP_DROP);
    };
    if !icmp_allowed(clock_ns(cfg)) {
        return verdict(counter::DROP_ICMP_RATE, XDP_DROP);
    }
    echo_reply(ctx, pkt, icmp, reply_type)
}

/// Answers an echo request in place: swap MACs and addresses, set the
/// reply type (0 for ICMP, 129 for ICMPv6) and a fresh TTL.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, pkt: &Packet, icmp: *mut IcmpHdr, reply_type: u8) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return malformed();
    };
    // The reply is the request edited in place, checksums updated
    // incrementally: a request whose IPv4 header is corrupt (or has
    // options) would be answered with a corrupt one. The kernel drops such
    // a packet; so do we, by passing it on.
    if pkt.family == AF_INET && !ipv4_header_sound(ctx, pkt.l2_len) {
        return malformed();
    }
    unsafe {
        let eth = &mut *eth;
        core::mem::swap(&mut eth.dst, &mut eth.src);
        // The checksum covers the type (the code stays 0).
        let icmp = &mut *icmp;
        let old = *(icmp as *const IcmpHdr as *const u16);
        icmp.ty = reply_type;
        let new = *(icmp as *const IcmpHdr as *const u16);
        icmp.check = csum::replace16(icmp.check, old, new);
    }
    if pkt.family == AF_INET {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, pkt.l2_len) else {
            return malformed();
        };
        let ip = unsafe { &mut *ip };
        core::mem::swap(&mut ip.src, &mut ip.dst);
        let old = ttl_proto(ip);
        ip.ttl = OUTER_TTL;
        ip.check = csum::replace16(ip.check, old, ttl_proto(ip));
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, pkt.l2_len) else {
            return malformed();
        };
        // Swapping source and destination leaves the pseudo-header sum as it was.
        let ip = unsafe { &mut *ip };
        core::mem::swap(&mut ip.src, &mut ip.dst);
        ip.hop_limit = OUTER_TTL;
    }
    verdict(counter::ICMP_ECHO_REPLY, XDP_TX)
}

/// Whether the IPv4 header at `off` has no options and a right checksum.
#[inline(always)]
fn ipv4_header_sound(ctx: &XdpContext, off: usize) -> bool {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, off) else {
        return false;
    };
    unsafe { (*ip).vihl == 0x45 && csum::finish(csum::sum_words::<10>(ip as usize, 0)) == 0 }
}

/// The TTL and protocol bytes as the 16-bit word the checksum sums.
#[inline(always)]
fn ttl_proto(ip: &Ipv4Hdr) -> u16 {
    unsafe { *(&ip.ttl as *const u8 as *const u16) }
}
