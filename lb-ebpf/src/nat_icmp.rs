//! ICMP errors about NAT flows, translated both ways: from a backend's side
//! (to a NAT source address, quoting what the balancer sent the backend)
//! to the client, and from the client's side (to the VIP, quoting what the
//! balancer sent the client) to the backend. The quoted packet is rewritten
//! to what the receiver sent, with the checksums that cover it.
// The map key is passed by reference on purpose: it lives in per-CPU
// scratch space, and a copy would not fit the stack.
#![allow(clippy::needless_borrows_for_generic_args)]
use aya_ebpf::programs::XdpContext;
use lb_common::{counter, nat_parts, Backend, Config, FlowValue, AF_INET6, PROTO_UDP};

use crate::action::{count, dropped, verdict, Sent, XDP_DROP, XDP_PASS};
use crate::csum;
use crate::encap::way_out;
use crate::nat::{backend_port, is_source, record, source_addr};
use crate::nexthop::{next_hop, NextHopNeed};
use crate::packet::{ethertype, ptr_at, write_eth, Ipv4Hdr, Ipv6Hdr, Packet, Ports};

/// Where the quoted packet is: its IP header, its ports, its protocol, and
/// its addresses and ports as quoted.
struct Quoted {
    ip: usize,
    ports: usize,
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
}

/// The quoted packet of the ICMP error at `pkt.l4_off` (8 bytes of ICMP
/// header first), with at least its ports.
#[inline(always)]
fn quoted(ctx: &XdpContext, pkt: &Packet) -> Option<Quoted> {
    let ip = pkt.l4_off + 8;
    let (ports, proto, src, dst) = if pkt.family == AF_INET6 {
        let h = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, ip)? };
        (ip + 40, h.next_hdr, h.src, h.dst)
    } else {
        let h = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, ip)? };
        let ihl = ((h.vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        (ip + ihl, h.proto, [h.src, 0, 0, 0], [h.dst, 0, 0, 0])
    };
    let p = unsafe { &*ptr_at::<Ports>(ctx, ports)? };
    Some(Quoted {
        ip,
        ports,
        proto,
        src,
        dst,
        sport: p.src,
        dport: p.dst,
    })
}

/// An ICMP error from a backend's side about a NAT flow: to its client,
/// from the VIP, quoting the packet as the client sent it. `None`: not
/// about a NAT flow (passed as before).
#[inline(always)]
pub fn from_backend(ctx: &XdpContext, pkt: &Packet) -> Option<u32> {
    let q = quoted(ctx, pkt)?;
    // Quoted: from the source address and port to the backend.
    if !is_source(q.src, q.proto, pkt.family) {
        return None;
    }
    let v = record(&q.dst, &q.src, q.dport, q.sport, q.proto, pkt.family)?;
    let c = v.client;
    let (dmac, smac, egress) = (v.client_mac, v.our_mac, v.ifindex);
    // Outer: from the VIP to the client; quoted: from the client to the VIP.
    if rewrite(
        ctx, pkt, &q, &c.dst, &c.src, &c.src, &c.dst, c.sport, c.dport,
    )
    .is_none()
        || write_eth(ctx, pkt, &dmac, &smac, ethertype(pkt)).is_none()
    {
        return Some(verdict(counter::DROP_ADJUST_HEAD, XDP_DROP));
    }
    count(counter::NAT_ICMP);
    match way_out(egress, ctx.ingress_ifindex() as u32) {
        Sent::Forwarded(action) => Some(action),
        _ => Some(XDP_DROP),
    }
}

/// An ICMP error from the client's side about NAT flow `fv` (quoting a
/// packet from the VIP to the client): to the backend, from the flow's
/// source address, quoting the packet as the backend sent it.
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    fv: &FlowValue,
    backend: &Backend,
    now: u64,
) -> u32 {
    let Some(q) = quoted(ctx, pkt) else {
        return verdict(counter::PASS_ICMP_NO_FLOW, XDP_PASS);
    };
    let (idx, port) = nat_parts(fv.hash);
    let Some(snat) = source_addr(fv.vip_id, pkt.family, idx) else {
        return verdict(counter::PASS_ICMP_NO_FLOW, XDP_PASS);
    };
    // The quoted packet went from the VIP's port; the backend's is its own.
    let bport = backend_port(fv.backend, q.sport);
    let nh = match next_hop(
        ctx,
        pkt,
        cfg,
        fv.backend,
        backend,
        &snat,
        now,
        NextHopNeed::Routed,
    ) {
        Ok(nh) => nh,
        Err(reason) => {
            dropped(reason);
            return XDP_DROP;
        }
    };
    let (dmac, smac, egress, ingress) = (nh.dmac, nh.smac, nh.egress, nh.ingress);
    // Outer: from the source address to the backend; quoted: from the
    // backend to the source address and port.
    let addr = backend.addr;
    if rewrite(
        ctx,
        pkt,
        &q,
        &snat,
        &addr,
        &addr,
        &snat,
        bport,
        port.to_be(),
    )
    .is_none()
        || write_eth(ctx, pkt, &dmac, &smac, ethertype(pkt)).is_none()
    {
        return verdict(counter::DROP_ADJUST_HEAD, XDP_DROP);
    }
    count(counter::NAT_ICMP);
    match way_out(egress, ingress) {
        Sent::Forwarded(action) => action,
        _ => XDP_DROP,
    }
}

/// The unfolded checksum change of `old` words becoming `new` ones
/// (`n` of the four).
#[inline(always)]
fn diff(old: &[u32; 4], new: &[u32; 4], n: usize) -> u32 {
    let mut d = 0;
    let mut i = 0;
    while i < 4 {
        if i < n {
            d += csum::halves(!old[i]) + csum::halves(new[i]);
        }
        i += 1;
    }
    d
}

/// Rewrites the ICMP error's outer addresses and the quoted packet's
/// addresses and ports, with every checksum that covers them: the outer
/// and quoted IPv4 headers', the quoted UDP checksum (when set), and the
/// ICMP checksum (with ICMPv6's pseudo-header).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet,
    q: &Quoted,
    out_src: &[u32; 4],
    out_dst: &[u32; 4],
    in_src: &[u32; 4],
    in_dst: &[u32; 4],
    in_sport: u16,
    in_dport: u16,
) -> Option<()> {
    let v6 = pkt.family == AF_INET6;
    let n = if v6 { 4 } else { 1 };
    let in_addrs = diff(&q.src, in_src, n) + diff(&q.dst, in_dst, n);
    let in_ports =
        (!q.sport as u32 & 0xffff) + in_sport as u32 + (!q.dport as u32 & 0xffff) + in_dport as u32;
    let mut icmp_diff = in_addrs + in_ports;
    // The quoted UDP checksum, when it is there and set.
    if q.proto == PROTO_UDP {
        if let Some(ck) = ptr_at::<u16>(ctx, q.ports + 6) {
            let ck = unsafe { &mut *ck };
            if *ck != 0 {
                let old = *ck;
                let mut new = csum::update(old, in_addrs + in_ports);
                if new == 0 {
                    new = 0xffff;
                }
                *ck = new;
                icmp_diff += (!old as u32 & 0xffff) + new as u32;
            }
        }
    }
    let ports = unsafe { &mut *ptr_at::<Ports>(ctx, q.ports)? };
    ports.src = in_sport;
    ports.dst = in_dport;
    if v6 {
        let a = unsafe { &mut *ptr_at::<[[u32; 4]; 2]>(ctx, q.ip + 8)? };
        a[0] = *in_src;
        a[1] = *in_dst;
        // ICMPv6's pseudo-header has the outer addresses.
        icmp_diff += diff(&pkt.src, out_src, 4) + diff(&pkt.dst, out_dst, 4);
        let o = unsafe { &mut *ptr_at::<[[u32; 4]; 2]>(ctx, pkt.l2_len + 8)? };
        o[0] = *out_src;
        o[1] = *out_dst;
    } else {
        let h = unsafe { &mut *ptr_at::<[u16; 10]>(ctx, q.ip)? };
        let old = h[5];
        h[5] = csum::update(old, in_addrs);
        icmp_diff += (!old as u32 & 0xffff) + h[5] as u32;
        let a = unsafe { &mut *ptr_at::<[u32; 2]>(ctx, q.ip + 12)? };
        a[0] = in_src[0];
        a[1] = in_dst[0];
        let o = unsafe { &mut *ptr_at::<[u16; 10]>(ctx, pkt.l2_len)? };
        o[5] = csum::update(
            o[5],
            diff(&pkt.src, out_src, 1) + diff(&pkt.dst, out_dst, 1),
        );
        let oa = unsafe { &mut *ptr_at::<[u32; 2]>(ctx, pkt.l2_len + 12)? };
        oa[0] = out_src[0];
        oa[1] = out_dst[0];
    }
    let ck = unsafe { &mut *ptr_at::<u16>(ctx, pkt.l4_off + 2)? };
    *ck = csum::update(*ck, icmp_diff);
    Some(())
}
