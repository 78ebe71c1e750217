//! On a backend (`lb_decap`), a stateless VIP's TCP packet whose GUE header
//! names a previous backend: delivered here when this host has the
//! connection (a socket other than a listener answers to its 4-tuple) or
//! the packet opens one (a SYN); otherwise passed on to the previous
//! backend (the outer destination rewritten, the header marked
//! `CHAIN_F_PASSED`), which in turn may pass it on to the one before
//! (`CHAIN_F_PASSED2`); the last delivers it whatever it finds (no loops).
use aya_ebpf::{
    bindings::{bpf_fib_lookup, bpf_sock_tuple, xdp_action, BPF_F_CURRENT_NETNS},
    helpers::{
        bpf_redirect, bpf_sk_release, bpf_skc_lookup_tcp, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use core::mem::{size_of, MaybeUninit};
use lb_common::{
    decap_counter, GueChain, AF_INET, AF_INET6, CHAIN_F_PASSED, CHAIN_F_PASSED2, CHAIN_F_PREV,
    CHAIN_F_PREV2, PROTO_UDP,
};

use crate::csum::{halves, update};
use crate::decap::pass;
use crate::packet::{ptr_at, zeroed, Ipv4Hdr, Ipv6Hdr, TCP_ACK, TCP_SYN};

/// The kernel's `TCP_LISTEN` socket state.
const TCP_LISTEN: u32 = 10;

/// Where the packet's parts start: the outer IP header (after `l2_len`
/// bytes, `ip_len` long, then UDP and the GUE header), the inner IP
/// header, the inner TCP header.
pub struct At {
    pub l2_len: usize,
    pub ip_len: usize,
    pub inner: usize,
    pub l4_off: usize,
}

/// `Some(action)`: the packet was passed on (or handed to the kernel to
/// pass on); `None`: deliver it here. The headers are read and rewritten
/// with `bpf_xdp_load_bytes` / `bpf_xdp_store_bytes`: their offsets vary
/// (VLAN tag, outer family), and the helpers check the bounds.
#[inline(always)]
pub fn pass_on(ctx: &XdpContext, at: &At, inner_family: u8) -> Option<u32> {
    let chain_off = at.l2_len + at.ip_len + size_of::<[u16; 4]>();
    let mut h = GueChain::default();
    load(ctx, chain_off, &mut h)?;
    // Which address is next: the first previous backend, or (passed on
    // once already) the second; none after two passes.
    let f = h.chain_flags;
    let (second, mark) = if f & CHAIN_F_PREV == 0 || f & CHAIN_F_PASSED2 != 0 {
        return None;
    } else if f & CHAIN_F_PASSED == 0 {
        (false, CHAIN_F_PASSED)
    } else if f & CHAIN_F_PREV2 != 0 {
        (true, CHAIN_F_PASSED2)
    } else {
        return None;
    };
    // Source port, destination port, sequence, acknowledgement, offset, flags.
    let mut tcp = [0u8; 14];
    load(ctx, at.l4_off, &mut tcp)?;
    if tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return None;
    }
    if has_connection(ctx, at, inner_family) {
        pass(decap_counter::CHAIN_LOCAL);
        return None;
    }
    h.chain_flags |= mark;
    store(ctx, chain_off, &h)?;
    let v6 = at.ip_len == size_of::<Ipv6Hdr>();
    let addr_len = if v6 { 16 } else { 4 };
    let prev_off = chain_off + size_of::<GueChain>() + if second { addr_len } else { 0 };
    let mut f = MaybeUninit::<bpf_fib_lookup>::uninit();
    let fib = zeroed(&mut f);
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.l4_protocol = PROTO_UDP;
    if v6 {
        // Source at 8, destination at 24.
        let mut addrs = [[0u32; 4]; 2];
        load(ctx, at.l2_len + 8, &mut addrs[0])?;
        load(ctx, prev_off, &mut addrs[1])?;
        store(ctx, at.l2_len + 24, &addrs[1])?;
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = addrs[0];
        fib.__bindgen_anon_4.ipv6_dst = addrs[1];
    } else {
        // Checksum at 10, source at 12, destination at 16.
        let mut hdr = [0u32; 3];
        load(ctx, at.l2_len + 8, &mut hdr)?;
        let mut prev = 0u32;
        load(ctx, prev_off, &mut prev)?;
        let old = hdr[2];
        hdr[2] = prev;
        let check = (hdr[0] >> 16) as u16;
        let check = update(check, halves(!old) + halves(prev));
        hdr[0] = (hdr[0] & 0xffff) | ((check as u32) << 16);
        store(ctx, at.l2_len + 8, &hdr)?;
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = hdr[1];
        fib.__bindgen_anon_4.ipv4_dst = prev;
    }
    if crate::nexthop::lookup(ctx, fib) != 0 {
        // No route or no neighbour entry yet: the kernel forwards the
        // rewritten packet (and resolves the neighbour) if forwarding is on.
        return Some(pass(decap_counter::CHAIN_TO_KERNEL));
    }
    let macs = [fib.dmac, fib.smac];
    store(ctx, 0, &macs)?;
    pass(decap_counter::CHAIN_PASSED);
    Some(if fib.ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        unsafe { bpf_redirect(fib.ifindex, 0) as u32 }
    })
}

/// Reads `size_of::<T>()` bytes at `off` into `v`.
#[inline(always)]
fn load<T>(ctx: &XdpContext, off: usize, v: &mut T) -> Option<()> {
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            off as u32,
            v as *mut T as *mut _,
            size_of::<T>() as u32,
        )
    };
    (rc == 0).then_some(())
}

/// Writes `v` at `off`.
#[inline(always)]
fn store<T>(ctx: &XdpContext, off: usize, v: &T) -> Option<()> {
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            off as u32,
            v as *const T as *mut _,
            size_of::<T>() as u32,
        )
    };
    (rc == 0).then_some(())
}

/// Whether this host has a TCP socket for the inner packet's 4-tuple other
/// than a listener (established, closing, a request or a time-wait).
#[inline(always)]
fn has_connection(ctx: &XdpContext, at: &At, family: u8) -> bool {
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, at.l4_off) else {
        return false;
    };
    let ports = unsafe { *ports };
    let mut t = MaybeUninit::<bpf_sock_tuple>::uninit();
    let t = zeroed(&mut t);
    let size = if family == AF_INET6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, at.inner) else {
            return false;
        };
        let ip = unsafe { &*ip };
        let v6 = unsafe { &mut t.__bindgen_anon_1.ipv6 };
        v6.saddr = ip.src;
        v6.daddr = ip.dst;
        v6.sport = ports[0];
        v6.dport = ports[1];
        size_of::<[u32; 9]>()
    } else {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, at.inner) else {
            return false;
        };
        let ip = unsafe { &*ip };
        let v4 = unsafe { &mut t.__bindgen_anon_1.ipv4 };
        v4.saddr = ip.src;
        v4.daddr = ip.dst;
        v4.sport = ports[0];
        v4.dport = ports[1];
        size_of::<[u32; 3]>()
    };
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx as *mut _,
            t as *mut bpf_sock_tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    let state = unsafe { (*sk).state };
    unsafe { bpf_sk_release(sk as *mut _) };
    state != TCP_LISTEN
}
