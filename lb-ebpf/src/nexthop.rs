//! The next hop towards a backend: MACs, egress interface and MTU from the
//! kernel's FIB (`bpf_fib_lookup`), cached per CPU for `NEXTHOP_TTL_NS`,
//! with the configured gateway MAC as the fallback.
use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::bpf_fib_lookup as fib_lookup, programs::XdpContext,
};
use core::mem::{size_of, MaybeUninit};
use lb_common::{counter, defaults, Backend, Config, AF_INET, AF_INET6, CONFIG_F_GATEWAY_MAC};

use crate::action::count;
use crate::maps::{NextHop, FIB_SCRATCH, NEXTHOPS};
use crate::packet::{zeroed, Packet};

/// The cached next hop for `backend` (slot `backend_id`) seen from the
/// ingress interface, looked up anew when it expired or no longer matches.
/// `None`: no route and no gateway MAC (the caller counts the drop).
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    backend_id: u32,
    backend: &Backend,
    src: &[u32; 4],
    now: u64,
) -> Option<&'static NextHop> {
    let ingress = ctx.ingress_ifindex() as u32;
    let nh = unsafe { &mut *NEXTHOPS.get_ptr_mut(backend_id)? };
    if nh.expires_ns > now && nh.ingress == ingress && nh.addr == backend.addr {
        return Some(nh);
    }
    count(counter::FIB_LOOKUP);
    if !fib(ctx, cfg, backend, src, ingress, nh) {
        if cfg.flags & CONFIG_F_GATEWAY_MAC == 0 {
            nh.expires_ns = 0;
            return None;
        }
        count(counter::FIB_FALLBACK);
        nh.dmac = cfg.gateway_mac;
        nh.smac = pkt.our_mac;
        nh.egress = ingress;
        nh.mtu = cfg.mtu;
    }
    nh.addr = backend.addr;
    nh.ingress = ingress;
    nh.expires_ns = now + defaults::NEXTHOP_TTL_NS;
    Some(nh)
}

/// Asks the FIB for the route from `src` to the backend; on success fills
/// the MACs, egress and MTU of `nh` and returns true.
#[inline(always)]
fn fib(
    ctx: &XdpContext,
    cfg: &Config,
    backend: &Backend,
    src: &[u32; 4],
    ingress: u32,
    nh: &mut NextHop,
) -> bool {
    let Some(f) = FIB_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let fib: &mut bpf_fib_lookup = zeroed(unsafe { &mut *(f as *mut MaybeUninit<bpf_fib_lookup>) });
    fib.ifindex = ingress;
    if backend.family == AF_INET6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = *src;
        fib.__bindgen_anon_4.ipv6_dst = backend.addr;
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = src[0];
        fib.__bindgen_anon_4.ipv4_dst = backend.addr[0];
    }
    // tot_len 0: no MTU verdict from the FIB; on success it reports the
    // route's MTU in mtu_result, which is cached and checked by the caller.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != 0 {
        return false;
    }
    nh.dmac = fib.dmac;
    nh.smac = fib.smac;
    nh.egress = fib.ifindex;
    nh.mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
    if nh.mtu == 0 {
        nh.mtu = cfg.mtu;
    }
    true
}
