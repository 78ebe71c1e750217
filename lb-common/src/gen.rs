//! The live-frames packet generator of `cargo xtask bench --live`
//! (`lb_gen`): BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES runs it on
//! frames the kernel then really transmits. The kernel initialises a
//! frame's bytes once and recycles them as the last program left them, so
//! `lb_gen` writes the template back first, makes it packet `i`'s flow,
//! and tail-calls `lb_xdp` (or transmits it as it is, for the floor).

/// Template bytes `GenTemplate` holds.
pub const GEN_MAX: usize = 128;
/// `GenTemplate::flags`: tail-call `lb_xdp`; without it, XDP_TX as is.
pub const GEN_F_BALANCE: u32 = 1;

/// `GEN`'s one entry: what `lb_gen` sends.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenTemplate {
    /// The frame's length, a multiple of 8 at most `GEN_MAX`: the test
    /// run's input must be this long.
    pub len: u32,
    /// Distinct flows: packet `i` (per CPU) is flow `i % flows`, its IPv4
    /// source address's low 16 bits and its source port set from it.
    pub flows: u32,
    /// Offsets of the IPv4 source address and of the L4 source port.
    pub saddr_off: u32,
    pub sport_off: u32,
    /// `GEN_F_*`.
    pub flags: u32,
    /// Flow numbers of the CPUs start this far apart (CPU × stride), so
    /// that two CPUs send different flows.
    pub cpu_stride: u32,
    pub data: [u8; GEN_MAX],
}

impl Default for GenTemplate {
    fn default() -> Self {
        GenTemplate {
            len: 0,
            flows: 1,
            saddr_off: 0,
            sport_off: 0,
            flags: 0,
            cpu_stride: 0,
            data: [0; GEN_MAX],
        }
    }
}

/// Packet `i`'s flow: (IPv4 source address low 16 bits, source port), as
/// `lb_gen` writes them (network order on the wire).
#[inline(always)]
pub fn gen_flow(flow: u32) -> (u16, u16) {
    ((flow / 50_000) as u16, 10_000 + (flow % 50_000) as u16)
}

#[cfg(feature = "user")]
// SAFETY: repr(C), plain old data, no padding (six u32s, then bytes).
unsafe impl aya::Pod for GenTemplate {}
