//! Parsing: Ethernet (one VLAN tag), IPv4 (options honoured) and IPv6 into
//! one [`Packet`]. What cannot be balanced is answered here: malformed
//! headers are passed, fragments and IPv6 extension headers to a VIP
//! address dropped, each counted.
use aya_ebpf::programs::XdpContext;
use lb_common::{counter, AF_INET, AF_INET6};

use crate::action::{malformed, verdict, XDP_DROP, XDP_PASS};
use crate::packet::{
    ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, VlanHdr, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q,
    ETH_P_IP, ETH_P_IPV6, IPV4_LEN, IPV6_LEN, VLAN_LEN,
};
use crate::schedule::is_vip_addr;

/// Parses the frame; `Err` carries the action for a packet that is not
/// balanced (already counted).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, u32> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Err(malformed());
    };
    let mut l2_len = ETH_LEN;
    let mut vlan = [0u16; 2];
    let mut ethertype = u16::from_be(unsafe { (*eth).proto });
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = ptr_at::<VlanHdr>(ctx, ETH_LEN) else {
            return Err(malformed());
        };
        vlan = unsafe { [(*eth).proto, (*tag).tci] };
        ethertype = u16::from_be(unsafe { (*tag).proto });
        l2_len = ETH_LEN + VLAN_LEN;
    }
    let mut pkt = match ethertype {
        ETH_P_IP => parse_v4(ctx, l2_len)?,
        ETH_P_IPV6 => parse_v6(ctx, l2_len)?,
        _ => return Err(verdict(counter::PASS_NOT_IP, XDP_PASS)),
    };
    pkt.vlan = vlan;
    pkt.our_mac = unsafe { (*eth).dst };
    Ok(pkt)
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l2_len: usize) -> Result<Packet, u32> {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l2_len) else {
        return Err(malformed());
    };
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < IPV4_LEN {
        return Err(malformed());
    }
    let frag_off = u16::from_be(ip.frag_off);
    if frag_off & 0x3fff != 0 {
        // More-fragments set, or a non-zero offset.
        return Err(drop_if_vip(
            [ip.dst, 0, 0, 0],
            AF_INET,
            counter::DROP_FRAGMENT,
        ));
    }
    let tot_len = u16::from_be(ip.tot_len) as usize;
    // A length beyond the frame would skew the MTU check and the counters.
    if tot_len < ihl || l2_len + tot_len > ctx.data_end() - ctx.data() {
        return Err(malformed());
    }
    Ok(Packet {
        l2_len,
        vlan: [0; 2],
        our_mac: [0; 6],
        family: AF_INET,
        proto: ip.proto,
        l4_off: l2_len + ihl,
        ip_len: tot_len,
        tos: ip.tos,
        df: frag_off & 0x4000 != 0,
        ip_id: ip.id,
        src: [ip.src, 0, 0, 0],
        dst: [ip.dst, 0, 0, 0],
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l2_len: usize) -> Result<Packet, u32> {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l2_len) else {
        return Err(malformed());
    };
    let ip = unsafe { &*ip };
    let first = u32::from_be(ip.vtc_flow);
    if first >> 28 != 6 {
        return Err(malformed());
    }
    match ip.next_hdr {
        // Hop-by-hop, routing, fragment, ESP, AH, destination options,
        // mobility, HIP, shim6: extension headers are not followed.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => {
            return Err(drop_if_vip(ip.dst, AF_INET6, counter::DROP_IPV6_EXT));
        }
        _ => {}
    }
    let payload_len = u16::from_be(ip.payload_len) as usize;
    if l2_len + IPV6_LEN + payload_len > ctx.data_end() - ctx.data() {
        return Err(malformed());
    }
    Ok(Packet {
        l2_len,
        vlan: [0; 2],
        our_mac: [0; 6],
        family: AF_INET6,
        proto: ip.next_hdr,
        l4_off: l2_len + IPV6_LEN,
        ip_len: IPV6_LEN + payload_len,
        tos: (first >> 20) as u8,
        df: false,
        ip_id: 0,
        src: ip.src,
        dst: ip.dst,
    })
}

/// A packet the balancer cannot follow (a fragment, an extension header):
/// dropped and counted as `reason` when it is for a VIP address, else
/// passed as not ours.
#[inline(always)]
fn drop_if_vip(dst: [u32; 4], family: u8, reason: u32) -> u32 {
    if is_vip_addr(dst, family) {
        verdict(reason, XDP_DROP)
    } else {
        verdict(counter::PASS_NOT_VIP, XDP_PASS)
    }
}
