//! `lb_gen`, the live-frames generator of `cargo xtask bench --live`
//! (`lb_common::gen`): not on any packet path of the balancer.
use aya_ebpf::programs::XdpContext;
use lb_common::{gen_flow, GEN_F_BALANCE, GEN_MAX, PROG_BALANCER};

use crate::action::{XDP_DROP, XDP_TX};
use crate::maps::{GEN, GEN_COUNT, PROGS};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(t) = GEN.get(0) else {
        return XDP_DROP;
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    // The frame is the template's length, a multiple of 8 bytes.
    if end - start != t.len as usize || t.len % 8 != 0 {
        return XDP_DROP;
    }
    // The template, back over what the last run on this frame left.
    let mut i = 0;
    while i < GEN_MAX / 8 {
        let at = start + i * 8;
        if at + 8 > end {
            break;
        }
        let w = unsafe { (t.data.as_ptr().add(i * 8) as *const u64).read_unaligned() };
        unsafe { (at as *mut u64).write_unaligned(w) };
        i += 1;
    }
    let Some(n) = GEN_COUNT.get_ptr_mut(0) else {
        return XDP_DROP;
    };
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let k = unsafe { *n };
    unsafe { *n = k + 1 };
    let flow = ((k % t.flows.max(1) as u64) as u32).wrapping_add(cpu * t.cpu_stride);
    let (addr, port) = gen_flow(flow);
    let (a, p) = (t.saddr_off as usize & 0x7f, t.sport_off as usize & 0x7f);
    if start + a + 4 > end || start + p + 2 > end {
        return XDP_DROP;
    }
    unsafe {
        ((start + a + 2) as *mut [u8; 2]).write_unaligned(addr.to_be_bytes());
        ((start + p) as *mut [u8; 2]).write_unaligned(port.to_be_bytes());
    }
    if t.flags & GEN_F_BALANCE == 0 {
        return XDP_TX;
    }
    unsafe { PROGS.tail_call(ctx, PROG_BALANCER) };
    XDP_DROP
}
