//! Answers a client whose packet would exceed the MTU once encapsulated:
//! ICMP "fragmentation needed" (IPv4, DF set) or ICMPv6 "packet too big",
//! built in place from the packet itself and sent back with XDP_TX, so the
//! client lowers its path MTU instead of timing out.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{counter, AF_INET, PROTO_ICMP, PROTO_ICMPV6};

use crate::{
    csum, ptr_at, rd16, rd32, verdict, wr16, wr32, Packet, ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPV4_LEN,
    IPV6_LEN, OUTER_TTL, VLAN_LEN,
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
    let Some(eth) = ptr_at::<[u8; ETH_LEN]>(ctx, 0) else {
        return verdict(counter::DROP_TOO_BIG, XDP_DROP);
    };
    // The peer that sent us the packet (client or router) gets the answer.
    let (peer0, peer1) = unsafe { (rd32(eth as usize + 6), rd16(eth as usize + 10)) };

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
    if l2 == ETH_LEN + VLAN_LEN {
        let Some(e) = ptr_at::<[u8; ETH_LEN + VLAN_LEN]>(ctx, 0) else {
            return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
        };
        let e = e as usize;
        unsafe {
            wr32(e + 12, pkt.vlan);
            wr16(e + 16, ethertype.to_be());
        }
    } else {
        let Some(e) = ptr_at::<[u8; ETH_LEN]>(ctx, 0) else {
            return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
        };
        unsafe { wr16(e as usize + 12, ethertype.to_be()) };
    }
    let Some(e) = ptr_at::<[u8; ETH_LEN]>(ctx, 0) else {
        return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
    };
    let e = e as usize;
    unsafe {
        wr32(e, peer0);
        wr16(e + 4, peer1);
        *((e + 6) as *mut [u8; 6]) = pkt.our_mac;
    }

    if v4 {
        let Some(ip) = ptr_at::<[u8; IPV4_LEN + ICMP_LEN + QUOTE]>(ctx, l2) else {
            return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
        };
        let ip = ip as usize;
        let icmp = ip + IPV4_LEN;
        unsafe {
            *(ip as *mut u8) = 0x45;
            *((ip + 1) as *mut u8) = 0;
            wr16(ip + 2, ((IPV4_LEN + ICMP_LEN + QUOTE) as u16).to_be());
            wr32(ip + 4, 0);
            *((ip + 8) as *mut u8) = OUTER_TTL;
            *((ip + 9) as *mut u8) = PROTO_ICMP;
            wr16(ip + 10, 0);
            // From the VIP the client talked to.
            wr32(ip + 12, pkt.dst[0]);
            wr32(ip + 16, pkt.src[0]);
            wr16(ip + 10, csum::ipv4_header(ip));
            // Type 3 (unreachable), code 4 (fragmentation needed), next-hop MTU.
            *(icmp as *mut u8) = 3;
            *((icmp + 1) as *mut u8) = 4;
            wr16(icmp + 2, 0);
            wr16(icmp + 4, 0);
            wr16(icmp + 6, (mtu as u16).to_be());
            let sum = csum::sum_words::<{ (ICMP_LEN + QUOTE) / 2 }>(icmp, 0);
            wr16(icmp + 2, csum::finish(sum));
        }
    } else {
        let Some(ip) = ptr_at::<[u8; IPV6_LEN + ICMP_LEN + QUOTE]>(ctx, l2) else {
            return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
        };
        let ip = ip as usize;
        let icmp = ip + IPV6_LEN;
        let payload = (ICMP_LEN + QUOTE) as u32;
        unsafe {
            wr32(ip, (6u32 << 28).to_be());
            wr16(ip + 4, (payload as u16).to_be());
            *((ip + 6) as *mut u8) = PROTO_ICMPV6;
            *((ip + 7) as *mut u8) = OUTER_TTL;
            let mut i = 0;
            while i < 4 {
                wr32(ip + 8 + i * 4, pkt.dst[i]);
                wr32(ip + 24 + i * 4, pkt.src[i]);
                i += 1;
            }
            // Type 2 (packet too big), code 0, MTU.
            *(icmp as *mut u8) = 2;
            *((icmp + 1) as *mut u8) = 0;
            wr16(icmp + 2, 0);
            wr32(icmp + 4, mtu.max(IPV6_MIN_MTU).to_be());
            // Pseudo-header: addresses, upper-layer length, next header.
            let mut pseudo: u32 = 0;
            let mut i = 0;
            while i < 4 {
                pseudo += csum::halves(pkt.src[i]) + csum::halves(pkt.dst[i]);
                i += 1;
            }
            pseudo += csum::halves(payload.to_be()) + csum::halves((PROTO_ICMPV6 as u32).to_be());
            let sum = csum::sum_words::<{ (ICMP_LEN + QUOTE) / 2 }>(icmp, pseudo);
            wr16(icmp + 2, csum::finish(sum));
        }
    }
    verdict(counter::ICMP_TOO_BIG_SENT, XDP_TX)
}
