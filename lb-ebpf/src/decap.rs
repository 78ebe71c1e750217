//! `lb_decap`, for backends: strips the IPIP / IP6IP6 / 4in6 header (and
//! the UDP header of GUE, variant 1, on the configured port) of packets
//! whose inner destination is a configured VIP (address, port, protocol) and
//! passes the inner packet to the stack, so backends need no tunnel kernel
//! module. A tunnel to a VIP address but another port or protocol (IPv6
//! extension headers included), or from an
//! outer source outside `DECAP_SOURCES` (the balancers' prefixes), is dropped
//! and counted. Everything else passes untouched.

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    chain_hlen, chain_len, decap_counter, AddrKey, DecapSource, GueChain, VipKey, AF_INET,
    AF_INET6, CHAIN_KIND, PROTO_IPIP, PROTO_IPV6, PROTO_TCP, PROTO_UDP,
};

use crate::packet::{
    ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, VlanHdr, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP,
    ETH_P_IPV6, IPV4_LEN, VLAN_LEN,
};

/// The addresses of the VIPs: a tunnel to another address is not ours.
#[map]
static DECAP_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(1024, 0);
/// The VIPs tunnels are accepted to, as (address, port, protocol); port 0:
/// every port. Each address also takes ICMP (errors about its flows, port 0).
#[map]
static DECAP_VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(4096, 0);
/// Where tunnels may come from: without this check anyone could reach a
/// backend's services past the balancer by sending it a tunnel packet.
#[map]
static DECAP_SOURCES: LpmTrie<DecapSource, u32> = LpmTrie::with_max_entries(64, 0);
#[map]
static DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(decap_counter::COUNT, 0);
/// The UDP port of GUE tunnels, network byte order; 0: none taken.
#[map]
static DECAP_GUE: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn pass(idx: u32) -> u32 {
    if let Some(p) = DECAP_COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
    XDP_PASS
}

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return pass(decap_counter::PASS_MALFORMED);
    };
    let mut l2_len = ETH_LEN;
    let mut ethertype = u16::from_be(unsafe { (*eth).proto });
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = ptr_at::<VlanHdr>(&ctx, ETH_LEN) else {
            return pass(decap_counter::PASS_MALFORMED);
        };
        ethertype = u16::from_be(unsafe { (*tag).proto });
        l2_len = ETH_LEN + VLAN_LEN;
    }
    let Some((src, outer_len, inner_proto, outer_ecn)) = outer(&ctx, l2_len, ethertype) else {
        return pass(decap_counter::PASS_MALFORMED);
    };
    if outer_len == 0 {
        return pass(decap_counter::PASS_NOT_TUNNEL);
    }
    // GUE: UDP to the configured port, the IP packet right after the UDP
    // header (variant 1: its version nibble says which), or after a GUE
    // header (variant 0: a stateless VIP's, naming the previous backend).
    let ip_len = outer_len;
    let (outer_len, inner_proto, chained) = if inner_proto == PROTO_UDP {
        let outer_v6 = ethertype == ETH_P_IPV6;
        match gue_inner(&ctx, l2_len + outer_len, outer_v6) {
            Some((p, gue_len)) => (outer_len + size_of::<[u16; 4]>() + gue_len, p, gue_len != 0),
            None => return pass(decap_counter::PASS_NOT_TUNNEL),
        }
    } else {
        (outer_len, inner_proto, false)
    };
    // Inner destination must be one of our VIPs: its address (else the
    // tunnel is not ours: passed), then its port and protocol (else it
    // would reach another service past the balancer: dropped).
    let inner = l2_len + outer_len;
    let mut key = VipKey::default();
    let (l4_off, inner_ethertype) = match inner_proto {
        PROTO_IPIP => {
            let Some(ip) = ptr_at::<Ipv4Hdr>(&ctx, inner) else {
                return pass(decap_counter::PASS_MALFORMED);
            };
            let ip = unsafe { &*ip };
            key.addr[0] = ip.dst;
            key.family = AF_INET;
            key.proto = ip.proto;
            if u16::from_be(ip.frag_off) & 0x3fff != 0 {
                // The balancer sends no fragment to a VIP; a fragment has
                // no ports to check.
                key.proto = 0xff;
            }
            (inner + ((ip.vihl & 0x0f) as usize) * 4, ETH_P_IP)
        }
        PROTO_IPV6 => {
            let Some(ip) = ptr_at::<Ipv6Hdr>(&ctx, inner) else {
                return pass(decap_counter::PASS_MALFORMED);
            };
            let ip = unsafe { &*ip };
            key.addr = ip.dst;
            key.family = AF_INET6;
            key.proto = ip.next_hdr;
            (inner + size_of::<Ipv6Hdr>(), ETH_P_IPV6)
        }
        _ => return pass(decap_counter::PASS_NOT_TUNNEL),
    };
    let addr = AddrKey {
        addr: key.addr,
        family: key.family,
        _pad: [0; 3],
    };
    if unsafe { DECAP_ADDRS.get(addr) }.is_none() {
        return pass(decap_counter::PASS_NOT_VIP);
    }
    let proto = key.proto;
    if proto == PROTO_TCP || proto == PROTO_UDP {
        // Both protocols start with the source and destination ports.
        let Some(ports) = ptr_at::<[u16; 2]>(&ctx, l4_off) else {
            return drop(decap_counter::DROP_NOT_SERVICE);
        };
        key.port = unsafe { (*ports)[1] };
    }
    // The exact port, then the VIP that takes every port (port 0); ICMP
    // to a VIP address (errors about its flows) is listed with port 0.
    if unsafe { DECAP_VIPS.get(key) }.is_none() {
        key.port = 0;
        if unsafe { DECAP_VIPS.get(key) }.is_none() {
            return drop(decap_counter::DROP_NOT_SERVICE);
        }
    }
    // A tunnel to one of our VIPs from elsewhere than a balancer: spoofed.
    if DECAP_SOURCES.get(&src).is_none() {
        return drop(decap_counter::DROP_SOURCE);
    }
    // A stateless VIP's packet of a connection this host does not have:
    // on to the previous backend.
    if chained && proto == PROTO_TCP {
        let at = crate::decap_chain::At {
            l2_len,
            ip_len,
            inner,
            l4_off,
        };
        if let Some(action) = crate::decap_chain::pass_on(&ctx, &at, key.family) {
            return action;
        }
    }
    strip(&ctx, l2_len, outer_len, inner_ethertype, outer_ecn)
}

/// The protocol of a GUE packet's inner IP packet and the length of its
/// GUE header, when the UDP header at `off` goes to the GUE port: variant
/// 1 (no GUE header: the payload starts with IPv4 or IPv6), or variant 0
/// with a stateless VIP's header (`GueChain`) sized for the outer family.
#[inline(always)]
fn gue_inner(ctx: &XdpContext, off: usize, outer_v6: bool) -> Option<(u8, usize)> {
    let port = *DECAP_GUE.get(0)?;
    // Source port, destination port, length, checksum; then the first byte.
    let udp = unsafe { &*ptr_at::<[u16; 5]>(ctx, off)? };
    if port == 0 || u32::from(udp[1]) != port {
        return None;
    }
    match (u16::from_be(udp[4]) >> 12) as u8 {
        4 => return Some((PROTO_IPIP, 0)),
        6 => return Some((PROTO_IPV6, 0)),
        _ => {}
    }
    let h = unsafe { &*ptr_at::<GueChain>(ctx, off + size_of::<[u16; 4]>())? };
    if h.ver_hlen != chain_hlen(outer_v6) || h.kind != CHAIN_KIND || h.flags != 0 {
        return None;
    }
    match h.proto {
        PROTO_IPIP | PROTO_IPV6 => Some((h.proto, chain_len(outer_v6))),
        _ => None,
    }
}

/// A tunnel's outer header: source key, length, inner protocol, ECN bits.
type Outer = (Key<DecapSource>, usize, u8, u8);

/// ECN "congestion experienced".
const ECN_CE: u8 = 3;

/// Carries a "congestion experienced" mark of the outer header to the
/// inner packet (RFC 6040, normal mode); `false`: the inner packet is not
/// ECN-capable, so the mark cannot be carried and the packet must go.
#[inline(always)]
fn copy_ce(ctx: &XdpContext, l2_len: usize, inner_ethertype: u16) -> bool {
    if inner_ethertype == ETH_P_IP {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l2_len) else {
            return true;
        };
        let ip = unsafe { &mut *ip };
        if ip.tos & 3 == 0 {
            return false;
        }
        let word = |ip: &Ipv4Hdr| unsafe { *(ip as *const Ipv4Hdr as *const u16) };
        let old = word(ip);
        ip.tos |= ECN_CE;
        ip.check = crate::csum::replace16(ip.check, old, word(ip));
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l2_len) else {
            return true;
        };
        let ip = unsafe { &mut *ip };
        let first = u32::from_be(ip.vtc_flow);
        if (first >> 20) & 3 == 0 {
            return false;
        }
        ip.vtc_flow = (first | (u32::from(ECN_CE) << 20)).to_be();
    }
    true
}

#[inline(always)]
fn drop(idx: u32) -> u32 {
    if let Some(p) = DECAP_COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
    aya_ebpf::bindings::xdp_action::XDP_DROP
}

/// The outer header: where it came from (as a `DECAP_SOURCES` key), its
/// length, the protocol inside and its ECN bits; a length of 0 when it is
/// no tunnel we take. `None`: cut short or malformed.
#[inline(always)]
fn outer(ctx: &XdpContext, l2_len: usize, ethertype: u16) -> Option<Outer> {
    let mut src = Key::new(32, DecapSource::default());
    match ethertype {
        ETH_P_IP => {
            let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l2_len)? };
            let len = ((ip.vihl & 0x0f) as usize) * 4;
            if u16::from_be(ip.frag_off) & 0x3fff != 0 {
                // A fragmented tunnel packet: the kernel reassembles, we cannot.
                return Some((src, 0, 0, 0));
            }
            if len < IPV4_LEN {
                return None;
            }
            src.prefix_len = 32 + 32;
            src.data.family = AF_INET as u32;
            src.data.addr[..4].copy_from_slice(&ip.src.to_ne_bytes());
            Some((src, len, ip.proto, ip.tos & 3))
        }
        ETH_P_IPV6 => {
            let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l2_len)? };
            src.prefix_len = 32 + 128;
            src.data.family = AF_INET6 as u32;
            let mut i = 0;
            while i < 4 {
                src.data.addr[i * 4..i * 4 + 4].copy_from_slice(&ip.src[i].to_ne_bytes());
                i += 1;
            }
            let ecn = (u32::from_be(ip.vtc_flow) >> 20) as u8 & 3;
            Some((src, size_of::<Ipv6Hdr>(), ip.next_hdr, ecn))
        }
        _ => Some((src, 0, 0, 0)),
    }
}

/// Drops the outer IP header, keeping the Ethernet header (and VLAN tag)
/// with the inner packet's ethertype, and carries the outer ECN mark in.
#[inline(always)]
fn strip(
    ctx: &XdpContext,
    l2_len: usize,
    outer_len: usize,
    inner_ethertype: u16,
    outer_ecn: u8,
) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return pass(decap_counter::PASS_MALFORMED);
    };
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    let mut tag = (0u16, 0u16);
    if l2_len == ETH_LEN + VLAN_LEN {
        let Some(t) = ptr_at::<VlanHdr>(ctx, ETH_LEN) else {
            return pass(decap_counter::PASS_MALFORMED);
        };
        tag = unsafe { ((*eth).proto, (*t).tci) };
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx as *mut _, outer_len as i32) } != 0 {
        return drop(decap_counter::DROP_ADJUST_HEAD);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return XDP_PASS;
    };
    let eth = unsafe { &mut *eth };
    eth.dst = dst;
    eth.src = src;
    if l2_len == ETH_LEN + VLAN_LEN {
        let Some(t) = ptr_at::<VlanHdr>(ctx, ETH_LEN) else {
            return XDP_PASS;
        };
        eth.proto = tag.0;
        unsafe {
            (*t).tci = tag.1;
            (*t).proto = inner_ethertype.to_be();
        }
    } else {
        eth.proto = inner_ethertype.to_be();
    }
    if outer_ecn == ECN_CE {
        if !copy_ce(ctx, l2_len, inner_ethertype) {
            return drop(decap_counter::DROP_ECN);
        }
        pass(decap_counter::ECN_CE_COPIED);
    }
    pass(decap_counter::DECAPPED)
}
