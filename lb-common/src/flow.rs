//! The flow table's types: a connection's key, what is remembered of it,
//! the entries and sets of `FLOWS`, and the flags of its stamp.

/// A connection, as the client sent it. Addresses and ports as in the packet.
/// Aligned to 8: the flow table hashes keys a word at a time.
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
/// With the key's identity, half a cache line (`FlowEntry`).
const _: () = assert!(core::mem::size_of::<FlowValue>() == 24);

/// One entry of the flow table (`FLOWS`): a connection's identity and
/// what is remembered of it, 32 bytes, two to a cache line. The key itself
/// is not kept: `ident` is a second keyed hash of it (`table_hash`),
/// independent of the one that names its set, so a lookup compares one
/// word, and the table spans half the memory a stored key would take.
/// `ident` `FLOW_FREE`: never used; `FLOW_GONE`: it held a flow no longer
/// there (it is taken again first).
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub ident: u64,
    pub value: FlowValue,
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 32);

impl FlowEntry {
    /// Whether the entry holds a flow: neither never used nor gone (no
    /// identity is `FLOW_FREE` or `FLOW_GONE`).
    #[inline(always)]
    pub const fn holds_flow(&self) -> bool {
        self.ident > FLOW_GONE
    }
}

/// Entries per set of the flow table: a flow lives in one of the
/// `FLOW_WAYS` entries of the set its hash names.
pub const FLOW_WAYS: u32 = 8;

/// `FlowEntry::ident` of an entry never used. Entries are never made free
/// again, so a set's used entries come first and a lookup stops at the
/// first free one.
pub const FLOW_FREE: u64 = 0;
/// `FlowEntry::ident` of an entry whose flow is gone (removed, or being
/// written). `table_hash` never gives it, nor `FLOW_FREE`.
pub const FLOW_GONE: u64 = 1;

/// One set of the flow table (256 bytes, four cache lines), one of the
/// `FLOW_CHUNK_SETS` of a chunk.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet {
    pub ways: [FlowEntry; FLOW_WAYS as usize],
}
const _: () = assert!(core::mem::size_of::<FlowSet>() == 256);

/// Sets per chunk of the flow table. `FLOWS` is an array of maps: each
/// slot holds one chunk, an inner array of one element. An array map of at
/// most 32 KiB is `kmalloc`ed by the kernel, so it lies in the direct map,
/// which the kernel maps with huge pages: a flow's set costs no TLB miss
/// of its own, where a 4 KiB-page (`vmalloc`) table of 64 MiB costs one
/// on nearly every cold flow (BENCHMARKS.md, "where a cold flow's cost
/// goes"). 126 sets and the kernel's 312-byte `struct bpf_array` header
/// take 32 576 bytes.
pub const FLOW_CHUNK_SETS: u32 = 126;
/// Bytes before a chunk's first set: the value of an array map starts 312
/// bytes into its page-aligned allocation on the kernels this was measured
/// on, 56 bytes into a cache line, so the first set starts 8 bytes in and
/// every pair of entries fills one cache line. (On a kernel whose header
/// differs, entries straddle two lines: slower, not wrong.)
pub const FLOW_CHUNK_PAD: usize = 8;

/// Bytes of a set.
const SET_BYTES: usize = core::mem::size_of::<FlowSet>();
/// Bytes of an entry.
#[cfg(feature = "user")]
const ENTRY_BYTES: usize = core::mem::size_of::<FlowEntry>();

/// One chunk of the flow table: `FLOW_CHUNK_PAD` bytes, then
/// `FLOW_CHUNK_SETS` sets (`FlowSet`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowChunk {
    pub words: [u64; (FLOW_CHUNK_PAD + FLOW_CHUNK_SETS as usize * SET_BYTES) / 8],
}
const _: () = assert!(core::mem::size_of::<FlowChunk>() + 312 <= 32768);
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowChunk {}

impl FlowChunk {
    /// Entry `way` of set `set` (of this chunk).
    #[cfg(feature = "user")]
    pub fn entry(&self, set: usize, way: usize) -> FlowEntry {
        let off = Self::offset(set, way);
        // SAFETY: in bounds (`offset`); FlowEntry is plain data, read
        // unaligned (the chunk's words are 8-aligned, the entry needs 32).
        unsafe {
            ((self.words.as_ptr() as *const u8).add(off) as *const FlowEntry).read_unaligned()
        }
    }

    /// Writes entry `way` of set `set`.
    #[cfg(feature = "user")]
    pub fn set_entry(&mut self, set: usize, way: usize, e: &FlowEntry) {
        let off = Self::offset(set, way);
        // SAFETY: as in `entry`.
        unsafe {
            ((self.words.as_mut_ptr() as *mut u8).add(off) as *mut FlowEntry).write_unaligned(*e)
        }
    }

    /// Where entry `way` of set `set` starts (asserted in the chunk).
    #[cfg(feature = "user")]
    fn offset(set: usize, way: usize) -> usize {
        assert!(set < FLOW_CHUNK_SETS as usize && way < FLOW_WAYS as usize);
        FLOW_CHUNK_PAD + set * SET_BYTES + way * ENTRY_BYTES
    }
}

/// The chunk of set `set`, and the set's place in it: `set / 126` and
/// `set % 126`, by a shift and a multiply (a division costs the data path
/// about 10 ns): `(set / 2) / 63`, exact for every `u32`.
#[inline(always)]
pub const fn chunk_of(set: u32) -> (u32, u32) {
    let c = (((set >> 1) as u64 * 2_181_570_691) >> 37) as u32;
    (c, set - c * FLOW_CHUNK_SETS)
}

/// Chunks (`FLOWS` slots) for a table of `sets` sets.
pub const fn flow_chunks(sets: u32) -> u32 {
    sets.div_ceil(FLOW_CHUNK_SETS)
}

/// The input of `lb_flow_swap`: entry `index` (set `index / FLOW_WAYS`,
/// way `index % FLOW_WAYS`) gets stamp `new` if its stamp is still `old`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSwap {
    pub index: u64,
    pub old: u64,
    pub new: u64,
}

/// The input of `lb_flow_move`: each flow of set `set` whose set in a
/// table of `sets` sets (`ident_set`) is another is moved there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowMove {
    pub set: u32,
    pub sets: u32,
    /// An XDP test run's input is at least an Ethernet header long.
    pub _pad: u64,
}

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
/// Bit 3 of `FlowValue::last_seen_ns`: a UDP flow (the table keeps no
/// key; the daemon's census times UDP flows out by their own timeout).
pub const FLOW_UDP: u64 = 8;
/// The flag bits of `FlowValue::last_seen_ns`.
pub const FLOW_FLAGS: u64 = 15;

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
