//! What a stage did with a packet, and the counters every decision is
//! recorded in (shared by every stage, so none imports another for it).
use aya_ebpf::bindings::xdp_action;
use lb_common::counter;

use crate::maps::COUNTERS;

pub const XDP_PASS: u32 = xdp_action::XDP_PASS;
pub const XDP_DROP: u32 = xdp_action::XDP_DROP;
pub const XDP_TX: u32 = xdp_action::XDP_TX;

/// What `encap::forward` did with a packet.
pub enum Sent {
    /// On its way to the backend, with this XDP action.
    Forwarded(u32),
    /// Not forwarded: the client was answered (ICMP too big) with XDP_TX.
    /// Not a packet of the flow for the statistics.
    Answered,
    /// Dropped, and counted by reason.
    Dropped,
}

/// Adds one to counter `idx` (`lb_common::counter`).
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

/// Counts and returns `action`.
#[inline(always)]
pub fn verdict(idx: u32, action: u32) -> u32 {
    count(idx);
    action
}

/// Counts the reason and says the packet was dropped.
#[inline(always)]
pub fn dropped(reason: u32) -> Sent {
    count(reason);
    Sent::Dropped
}

/// Passes a packet whose headers are cut short or invalid, counted.
#[inline(always)]
pub fn malformed() -> u32 {
    verdict(counter::PASS_MALFORMED, XDP_PASS)
}
