//! The next hop towards a backend: MACs, egress interface and MTU from the
//! kernel's FIB (`bpf_fib_lookup`), cached per CPU for `NEXTHOP_TTL_NS`,
//! with the configured gateway MAC as the fallback.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH},
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use core::mem::{size_of, MaybeUninit};
use lb_common::{counter, defaults, Backend, Config, AF_INET, AF_INET6, CONFIG_F_GATEWAY_MAC};

use crate::action::count;
use crate::maps::{NextHop, FIB_SCRATCH, NEXTHOPS};
use crate::packet::{zeroed, Packet};

/// What a forwarding mode needs of the way to a backend.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NextHopNeed {
    /// Any route; without one, the configured gateway MAC.
    Routed,
    /// The backend on a directly connected network: its own MAC.
    OnLink,
}

/// The cached next hop for `backend` (slot `backend_id`) seen from the
/// ingress interface, looked up anew when it expired or no longer matches.
/// `Err`: the counter of the drop (no route and no gateway MAC, a next hop
/// not resolved yet, or a gateway where the backend must be on-link).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn next_hop(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &Config,
    backend_id: u32,
    backend: &Backend,
    src: &[u32; 4],
    now: u64,
    need: NextHopNeed,
) -> Result<&'static NextHop, u32> {
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(nh) = NEXTHOPS.get_ptr_mut(backend_id) else {
        return Err(counter::DROP_NO_ROUTE);
    };
    let nh = unsafe { &mut *nh };
    if nh.expires_ns > now && nh.ingress == ingress && nh.addr == backend.addr {
        return usable(nh, need);
    }
    count(counter::FIB_LOOKUP);
    let rc = fib(ctx, cfg, backend, src, ingress, nh);
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // A route, but the next hop's MAC is not resolved yet (the daemon
        // makes every backend's next hop a managed neighbour entry, which
        // the kernel resolves and keeps): the gateway MAC would be wrong
        // for an on-link backend. Dropped, counted, not cached.
        nh.expires_ns = 0;
        return Err(counter::DROP_NO_NEIGH);
    }
    if rc != 0 {
        if cfg.flags & CONFIG_F_GATEWAY_MAC == 0 || need == NextHopNeed::OnLink {
            nh.expires_ns = 0;
            return Err(counter::DROP_NO_ROUTE);
        }
        count(counter::FIB_FALLBACK);
        nh.dmac = cfg.gateway_mac;
        nh.smac = pkt.our_mac;
        nh.egress = ingress;
        nh.mtu = cfg.mtu;
        nh.on_link = 0;
    }
    nh.addr = backend.addr;
    nh.ingress = ingress;
    nh.expires_ns = now + defaults::NEXTHOP_TTL_NS;
    usable(nh, need)
}

/// `nh`, if it is what `need` asks for.
#[inline(always)]
fn usable(nh: &'static NextHop, need: NextHopNeed) -> Result<&'static NextHop, u32> {
    if need == NextHopNeed::OnLink && nh.on_link == 0 {
        return Err(counter::DROP_NOT_ON_LINK);
    }
    Ok(nh)
}

/// Asks the FIB for the route from `src` to the backend; on success fills
/// the MACs, egress and MTU of `nh`. The FIB's answer (`BPF_FIB_LKUP_RET_*`;
/// 0: success).
#[inline(always)]
fn fib(
    ctx: &XdpContext,
    cfg: &Config,
    backend: &Backend,
    src: &[u32; 4],
    ingress: u32,
    nh: &mut NextHop,
) -> i64 {
    let Some(f) = FIB_SCRATCH.get_ptr_mut(0) else {
        return -1;
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
    let rc = lookup(ctx, fib);
    if rc != 0 {
        return rc;
    }
    nh.dmac = fib.dmac;
    nh.smac = fib.smac;
    nh.egress = fib.ifindex;
    // On success the FIB writes the gateway's address over the
    // destination when the route has one.
    let direct = if backend.family == AF_INET6 {
        (unsafe { fib.__bindgen_anon_4.ipv6_dst }) == backend.addr
    } else {
        (unsafe { fib.__bindgen_anon_4.ipv4_dst }) == backend.addr[0]
    };
    nh.on_link = u32::from(direct);
    nh.mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
    if nh.mtu == 0 {
        nh.mtu = cfg.mtu;
    }
    0
}

/// `bpf_fib_lookup` with `fib` as filled in (no flags): its answer
/// (`BPF_FIB_LKUP_RET_*`, 0: success), the result written into `fib`.
#[inline(always)]
pub fn lookup(ctx: &XdpContext, fib: &mut bpf_fib_lookup) -> i64 {
    unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}
