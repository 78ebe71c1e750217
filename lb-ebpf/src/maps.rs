//! Every map of the balancer program, and the data path's clock. Sizes here
//! are defaults; the daemon sets them from the pool file at load time.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_F_MMAPABLE},
    btf_maps::{self, ArrayOfMaps},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    counter, defaults, AddrKey, Backend, BackendLimit, BackendStats, Config, FlowChunk, FlowKey,
    NatKey, NatValue, PersistKey, PersistValue, VipEntry, VipInfo, VipKey, VipStats,
    NAT_ADDRS_PER_FAMILY, PERSIST_TABLE_SIZE,
};

#[map]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(defaults::MAX_VIPS, 0);
#[map]
pub static VIP_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(defaults::MAX_VIPS, 0);
/// Bits of `vip_filter_bit` of every VIP, kept by the daemon.
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(lb_common::VIP_FILTER_WORDS, 0);
/// The VIP at each filter bit that only one VIP sets, kept by the daemon.
#[map]
pub static VIP_INDEX: Array<VipEntry> = Array::with_max_entries(lb_common::VIP_FILTER_BITS, 0);
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(defaults::MAX_BACKENDS, 0);
/// Two Maglev buffers per VIP; the daemon writes the idle one through mmap and
/// then flips `VipInfo::active_ring`, so a packet never sees a half-written table.
#[map]
pub static RINGS: Array<u64> =
    Array::with_max_entries(defaults::MAX_VIPS * 2 * defaults::RING_SIZE, BPF_F_MMAPABLE);
/// The backend ids each Maglev buffer's slots index (plus one), written
/// with the buffer before the flip.
#[map]
pub static MEMBERS: Array<u64> = Array::with_max_entries(
    defaults::MAX_VIPS * 2 * defaults::MAX_BACKENDS,
    BPF_F_MMAPABLE,
);
/// The flow table (`flowtab`): sets of `FLOW_WAYS` half-line entries,
/// shared by all CPUs, so a flow is found whichever CPU its next packet
/// lands on (RSS changes, generic XDP, several queues), and the daemon sees
/// one table. An array of maps: each slot holds a chunk of
/// `FLOW_CHUNK_SETS` sets, an inner array small enough to lie in huge pages
/// (`lb_common::FLOW_CHUNK_SETS`). The daemon reads the chunks with system
/// calls, and ends a flow's count through `lb_flow_swap`.
#[btf_map]
pub static FLOWS: ArrayOfMaps<btf_maps::Array<FlowChunk, 1, 0>, 1, 0> = ArrayOfMaps::new();
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Per CPU, per VIP: the next position in a round-robin VIP's sequence.
#[map]
pub static RR_POS: PerCpuArray<u32> = PerCpuArray::with_max_entries(defaults::MAX_VIPS, 0);
/// Per backend: active connections of the VIPs that count them, added to
/// and taken from atomically by every CPU (and by the daemon, through
/// mmap, for the flows it finds lost).
#[map]
pub static LOADS: Array<u64> = Array::with_max_entries(defaults::MAX_BACKENDS, BPF_F_MMAPABLE);
/// Per backend: weight and connection limit, kept by the daemon.
#[map]
pub static LIMITS: Array<BackendLimit> = Array::with_max_entries(defaults::MAX_BACKENDS, 0);
/// Each client's backend, on VIPs with persistence.
#[map]
pub static PERSIST: LruHashMap<PersistKey, PersistValue> =
    LruHashMap::with_max_entries(PERSIST_TABLE_SIZE, 0);
/// Room for a `PERSIST` key: the BPF stack has no 24 bytes to spare on
/// the new-flow path.
#[map]
pub static PERSIST_SCRATCH: PerCpuArray<PersistKey> = PerCpuArray::with_max_entries(1, 0);
/// NAT flows as their backends' replies carry them; an entry holds the
/// flow's source port (see `nat.rs`).
#[map]
pub static NAT_REPLIES: LruHashMap<NatKey, NatValue> =
    LruHashMap::with_max_entries(defaults::FLOW_TABLE_SIZE, 0);
/// Each VIP's NAT source addresses, kept by the daemon.
#[map]
pub static NAT_ADDRS: Array<[u32; 4]> =
    Array::with_max_entries(defaults::MAX_VIPS * 2 * NAT_ADDRS_PER_FAMILY, 0);
/// Stateless VIPs: each slot's previous backend and when it changed
/// (`chain_entry`), `ring_size` entries per VIP (`VipInfo::chain_idx`).
#[map]
pub static CHAINS: Array<u64> = Array::with_max_entries(defaults::RING_SIZE, BPF_F_MMAPABLE);
/// The filter bits of the stateless VIPs, kept by the daemon.
#[map]
pub static STATELESS_FILTER: Array<u64> = Array::with_max_entries(lb_common::VIP_FILTER_WORDS, 0);
/// `lb_stateless` and `lb_xdp`, for tail calls (`PROG_*`).
#[map]
pub static PROGS: ProgramArray = ProgramArray::with_max_entries(2, 0);
/// `lb_gen`'s template (`cargo xtask bench --live`).
#[map]
pub static GEN: Array<lb_common::GenTemplate> = Array::with_max_entries(1, 0);
/// Per CPU: `lb_gen`'s packets so far.
#[map]
pub static GEN_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Per CPU: set by `lb_stateless` before it hands a packet back to
/// `lb_xdp` (its VIP is not stateless), so that `lb_xdp` takes it.
#[map]
pub static STATELESS_SKIP: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// The filter bits of the NAT source addresses, kept by the daemon.
#[map]
pub static NAT_FILTER: Array<u64> = Array::with_max_entries(lb_common::VIP_FILTER_WORDS, 0);
/// Room for a `NAT_REPLIES` key and value: the BPF stack has none to spare.
#[map]
pub static NAT_SCRATCH: PerCpuArray<NatScratch> = PerCpuArray::with_max_entries(1, 0);

/// Room for the flow keys a packet builds (the packet's own, and the
/// masked one `source_hash` hashes): stack the BPF limit has none of.
#[map]
pub static KEY_SCRATCH: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(2, 0);
/// `KEY_SCRATCH` slots.
pub const KEY_PACKET: u32 = 0;
pub const KEY_SOURCE: u32 = 1;

/// A zeroed flow key in `KEY_SCRATCH` slot `slot`.
#[inline(always)]
pub fn scratch_key(slot: u32) -> Option<&'static mut FlowKey> {
    let p = KEY_SCRATCH.get_ptr_mut(slot)?;
    Some(crate::packet::zeroed(unsafe {
        &mut *(p as *mut core::mem::MaybeUninit<FlowKey>)
    }))
}

/// A `NAT_REPLIES` key and value being built.
#[repr(C)]
pub struct NatScratch {
    pub key: NatKey,
    pub value: NatValue,
}
/// The layout version of the pinned maps, kept by the daemon.
#[map]
pub static LAYOUT: Array<u32> = Array::with_max_entries(1, 0);
#[map]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(defaults::MAX_VIPS, 0);
#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(defaults::MAX_BACKENDS, 0);
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// What `bpf_fib_lookup` (or the gateway-MAC fallback) said about a backend,
/// reused for `NEXTHOP_TTL_NS`: a FIB lookup costs more than the rest of an
/// established packet's path. Per CPU, so no writer contends. An entry counts
/// only for the same backend address and ingress interface.
#[map]
pub static NEXTHOPS: PerCpuArray<NextHop> =
    PerCpuArray::with_max_entries(defaults::MAX_BACKENDS, 0);

/// Per CPU, one word per rate limiter (`TAT_ICMP`, `TAT_NEW_FLOW`): when its
/// next event is due (GCRA's theoretical arrival time, on the data path's
/// clock).
#[map]
pub static RATE_TAT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
/// `RATE_TAT` of the ICMP messages the balancer sends itself.
const TAT_ICMP: u32 = 0;
/// `RATE_TAT` of flow-table inserts.
const TAT_NEW_FLOW: u32 = 1;

/// Whether one more event of the limiter at `slot` may happen now: at most
/// one per `interval` ns on average, `tolerance` ns of them at once (a
/// generic cell rate algorithm: one word per CPU, no lock).
#[inline(always)]
fn gcra_allowed(slot: u32, now: u64, interval: u64, tolerance: u64) -> bool {
    let Some(tat) = RATE_TAT.get_ptr_mut(slot) else {
        return false;
    };
    let tat = unsafe { &mut *tat };
    let due = if *tat > now { *tat } else { now };
    if due - now > tolerance {
        return false;
    }
    *tat = due + interval;
    true
}

/// Whether the balancer may send one more ICMP message of its own now:
/// at most `ICMP_RATE_PER_CPU` a second per CPU, `ICMP_BURST` at once.
#[inline(always)]
pub fn icmp_allowed(now: u64) -> bool {
    const INTERVAL: u64 = 1_000_000_000 / defaults::ICMP_RATE_PER_CPU;
    gcra_allowed(TAT_ICMP, now, INTERVAL, defaults::ICMP_BURST * INTERVAL)
}

/// Whether this CPU may store one more new flow now
/// (`Config::new_flow_interval_ns`; 0: no limit). Over the rate, new flows
/// are routed by the Maglev table alone (a SYN flood cannot churn the table).
#[inline(always)]
pub fn flow_insert_allowed(cfg: &Config, now: u64) -> bool {
    cfg.new_flow_interval_ns == 0
        || gcra_allowed(
            TAT_NEW_FLOW,
            now,
            cfg.new_flow_interval_ns,
            cfg.new_flow_tolerance_ns,
        )
}

/// Room for the `bpf_fib_lookup` parameters: 64 bytes the 512-byte BPF
/// stack cannot spare.
#[map]
pub static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// A cached next hop towards one backend (`NEXTHOPS`).
#[repr(C)]
pub struct NextHop {
    pub addr: [u32; 4],
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ingress: u32,
    pub egress: u32,
    /// Largest outer packet the egress link takes.
    pub mtu: u32,
    /// The FIB's next hop is the backend itself (no gateway).
    pub on_link: u32,
    pub expires_ns: u64,
}

/// The data path's clock, CLOCK_MONOTONIC nanoseconds to within a tick:
/// the verifier turns `bpf_jiffies64` into one load, where a clock helper
/// call costs about 30 ns a packet. Before the daemon has calibrated it,
/// the coarse clock.
#[inline(always)]
pub fn clock_ns(cfg: &Config) -> u64 {
    if cfg.jiffy_ns == 0 {
        return unsafe { bpf_ktime_get_coarse_ns() };
    }
    unsafe { bpf_jiffies64() }
        .wrapping_mul(cfg.jiffy_ns)
        .wrapping_sub(cfg.clock_offset_ns)
}

/// Adds a forwarded packet to its VIP's and backend's statistics.
#[inline(always)]
pub fn account(vip_id: u32, backend_id: u32, bytes: u64, new_flow: bool) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        if new_flow {
            s.new_flows += 1;
        }
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        if new_flow {
            s.new_flows += 1;
        }
    }
}

/// Counts a dropped packet of VIP `vip_id`.
#[inline(always)]
pub fn vip_drop(vip_id: u32) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        unsafe { (*s).drops += 1 };
    }
}
