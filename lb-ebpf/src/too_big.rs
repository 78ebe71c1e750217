//! Answers a client whose packet would exceed the MTU once encapsulated:
//! ICMP "fragmentation needed" (IPv4, DF set) or ICMPv6 "packet too big",
//! built in place from the packet itself and sent back with XDP_TX, so the
//! client lowers its path MTU instead of timing out.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{counter, AF_INET, PROTO_ICMP, PROTO_ICMPV6};

use crate::action::{verdict, XDP_DROP, XDP_TX};
use crate::csum;
use crate::packet::{
    ptr_at, write_eth, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, Packet, ETH_P_IP, ETH_P_IPV6, IPV4_LEN,
    IPV6_LEN, OUTER_TTL,
};

/// Bytes of the offending packet quoted in the error: an IPv4 header with
/// the most options (60 bytes) and the 8 bytes of transport header RFC 792
/// asks for, so the client can always match the error to its socket.
pub const QUOTE: usize = 68;
const ICMP_LEN: usize = 8;
/// IPv6 links carry at least this (RFC 8200); a smaller value is not sent.
const IPV6_MIN_MTU: u32 = 1280;

/// Replies to `pkt` with "too big, use `mtu`" and returns the XDP action.
#[inline(always)]
pub fn reply(ctx: &XdpContext, pkt: &Packet, mtu: u32) -> u32 {
    let v4 = pkt.family == AF_INET;
    let l2 = pkt.l2_len;
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return verdict(counter::DROP_TOO_BIG, XDP_DROP);
    };
    // The peer that sent us the packet (client or router) gets the answer.
    let peer = unsafe { (*eth).src };

    // Keep the Ethernet header and QUOTE bytes of the packet, then make room
    // for the new IP and ICMP headers in front of them.
    let len = ctx.data_end() - ctx.data();
    let keep = l2 + QUOTE;
    if len < keep {
        return verdict(counter::DROP_TOO_BIG, XDP_DROP);
    }
    let shrink = (len - keep) as i32;
    if shrink > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx as *mut _, -shrink) } != 0 {
        return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
    }
    let hdr = if v4 { IPV4_LEN } else { IPV6_LEN } + ICMP_LEN;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx as *mut _, -(hdr as i32)) } != 0 {
        return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
    }
    // Ethernet: back to the peer, from us.
    let ethertype = if v4 { ETH_P_IP } else { ETH_P_IPV6 };
    if write_eth(ctx, pkt, &peer, &pkt.our_mac, ethertype).is_none() {
        return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
    }

    let written = if v4 {
        write_v4(ctx, pkt, l2, mtu)
    } else {
        write_v6(ctx, pkt, l2, mtu)
    };
    if written.is_none() {
        return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
    }
    verdict(counter::ICMP_TOO_BIG_SENT, XDP_TX)
}

/// IPv4 and ICMP "fragmentation needed" headers in front of the quote.
#[inline(always)]
fn write_v4(ctx: &XdpContext, pkt: &Packet, l2: usize, mtu: u32) -> Option<()> {
    let ip = ptr_at::<[u8; IPV4_LEN + ICMP_LEN + QUOTE]>(ctx, l2)?;
    let (ip, icmp) = (ip as *mut Ipv4Hdr, ip as usize + IPV4_LEN);
    let ip = unsafe { &mut *ip };
    ip.vihl = 0x45;
    ip.tos = 0;
    ip.tot_len = ((IPV4_LEN + ICMP_LEN + QUOTE) as u16).to_be();
    ip.id = 0;
    ip.frag_off = 0;
    ip.ttl = OUTER_TTL;
    ip.proto = PROTO_ICMP;
    ip.check = 0;
    // From the VIP the client talked to.
    ip.src = pkt.dst[0];
    ip.dst = pkt.src[0];
    ip.check = unsafe { csum::ipv4_header(ip as *mut Ipv4Hdr as usize) };
    // Type 3 (unreachable), code 4 (fragmentation needed), next-hop MTU.
    let h = unsafe { &mut *(icmp as *mut IcmpHdr) };
    h.ty = 3;
    h.code = 4;
    h.check = 0;
    h.rest = (mtu & 0xffff).to_be();
    let sum = unsafe { csum::sum_words::<{ (ICMP_LEN + QUOTE) / 2 }>(icmp, 0) };
    h.check = csum::finish(sum);
    Some(())
}

/// IPv6 and ICMPv6 "packet too big" headers in front of the quote.
#[inline(always)]
fn write_v6(ctx: &XdpContext, pkt: &Packet, l2: usize, mtu: u32) -> Option<()> {
    let ip = ptr_at::<[u8; IPV6_LEN + ICMP_LEN + QUOTE]>(ctx, l2)?;
    let (ip, icmp) = (ip as *mut Ipv6Hdr, ip as usize + IPV6_LEN);
    let ip = unsafe { &mut *ip };
    let payload = (ICMP_LEN + QUOTE) as u32;
    ip.vtc_flow = (6u32 << 28).to_be();
    ip.payload_len = (payload as u16).to_be();
    ip.next_hdr = PROTO_ICMPV6;
    ip.hop_limit = OUTER_TTL;
    ip.src = pkt.dst;
    ip.dst = pkt.src;
    // Type 2 (packet too big), code 0, MTU.
    let h = unsafe { &mut *(icmp as *mut IcmpHdr) };
    h.ty = 2;
    h.code = 0;
    h.check = 0;
    h.rest = mtu.max(IPV6_MIN_MTU).to_be();
    // Pseudo-header: addresses, upper-layer length, next header.
    let mut pseudo: u32 = 0;
    let mut i = 0;
    while i < 4 {
        pseudo += csum::halves(pkt.src[i]) + csum::halves(pkt.dst[i]);
        i += 1;
    }
    pseudo += csum::halves(payload.to_be()) + csum::halves((PROTO_ICMPV6 as u32).to_be());
    let sum = unsafe { csum::sum_words::<{ (ICMP_LEN + QUOTE) / 2 }>(icmp, pseudo) };
    h.check = csum::finish(sum);
    Some(())
}
