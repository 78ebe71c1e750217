//! The flow table's types: a connection's key, what is remembered of it,
//! the entries and sets of `FLOWS`, and the flags of its stamp.

/// A connection, as the client sent it. Addresses and ports as in the packet.
/// Aligned to 8: the flow table compares keys a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// What the flow table remembers of a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: u32,
    pub vip_id: u32,
    /// The data path's clock (CLOCK_MONOTONIC, see `Config::jiffy_ns`) at the
    /// last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// The flow hash, kept so a packet of a known flow need not compute it again.
    pub hash: u32,
    /// `Backend::gen` of the slot when the flow was made.
    pub gen: u32,
}
/// With the key, one cache line (`FlowEntry`).
const _: () = assert!(core::mem::size_of::<FlowValue>() == 24);

/// One entry of the flow table (`FLOWS`): a connection and what is
/// remembered of it, one cache line. An entry whose `key.family` is 0 was
/// never used; `FLOW_GONE`, it held a flow no longer there (it is taken
/// again first).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub key: FlowKey,
    pub value: FlowValue,
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 64);

/// Entries per set of the flow table: a flow lives in one of the
/// `FLOW_WAYS` entries of the set its hash names.
pub const FLOW_WAYS: u32 = 8;

/// `FlowKey::family` of a flow-table entry whose flow is gone (removed,
/// or being written). Entries are never made free again, so a set's used
/// entries come first and a lookup stops at the first free one.
pub const FLOW_GONE: u8 = 0xff;

/// One set of the flow table, one element of `FLOWS` (512 bytes: a page
/// holds eight sets, and a set never crosses a page).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet {
    pub ways: [FlowEntry; FLOW_WAYS as usize],
}
const _: () = assert!(core::mem::size_of::<FlowSet>() == 512);

/// How stale `FlowValue::last_seen_ns` may get before a packet refreshes
/// it; keeps the hot path from dirtying the entry's cache line on every
/// packet. UDP idle timeouts must be well above it (the pool file asks for
/// twice).
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// Bit 0 of `FlowValue::last_seen_ns`: the flow was stored from a SYN (or
/// a UDP flow's first datagram) and no other packet of it has been seen
/// yet (a TCP handshake is pending). A full set of the flow table gives up
/// such flows first. A nanosecond of the stamp is worth nothing (it is
/// refreshed once a second).
pub const FLOW_PENDING: u64 = 1;
/// Bit 1 of `FlowValue::last_seen_ns`: the flow's VIP counts connections
/// (`VIP_F_COUNT`).
pub const FLOW_COUNTS: u64 = 2;
/// Bit 2 of `FlowValue::last_seen_ns`: the flow is counted in its
/// backend's `LOADS` (set when it is stored or its 4-tuple starts again,
/// cleared when it ends: the client's FIN or RST, UDP idle, rescheduled).
pub const FLOW_OPEN: u64 = 4;
/// The flag bits of `FlowValue::last_seen_ns`.
pub const FLOW_FLAGS: u64 = 7;

/// A SYN on a flow the table knows whose handshake is pending
/// (`FLOW_PENDING`), this long or more after its last packet, counts as a
/// retransmission (`BackendStats::syn_retransmits`):
/// a client retransmits its SYN after a second with no SYN-ACK; the data
/// path's clock moves in ticks of up to 10 ms, and the flow's stamp is
/// refreshed at most once a second.
pub const SYN_RETRANSMIT_MIN_NS: u64 = 900_000_000;

/// How readily a new flow takes entry `e`'s place in a full set (lowest
/// first): a flow seen in one packet only (`FLOW_PENDING`) before any
/// live connection, each by its stamp (below 2^62). The data path's
/// `lb_flow_place` and the daemon's `FlowTable::insert` both rank so.
#[inline(always)]
pub fn place_rank(e: &FlowEntry) -> u64 {
    let stamp = e.value.last_seen_ns;
    stamp | ((stamp & FLOW_PENDING) ^ FLOW_PENDING) << 62
}
