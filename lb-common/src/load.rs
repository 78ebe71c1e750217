//! Connection counting, limits and persistence: the records of the `LIMITS`
//! and `PERSIST` maps (`LOADS` is plain `u64`s).

/// A backend's weight and connection limit, as the VIPs that count
/// connections read them (`LIMITS`, by backend id). Written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendLimit {
    /// The backend's effective weight (slow start included); 0 takes no
    /// new flow from least connections.
    pub weight: u32,
    /// Active connections at which the backend takes no new flow; 0: no
    /// limit.
    pub max_conns: u32,
    /// NAT: the backend's port, network byte order; 0: the VIP's.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<BackendLimit>() == 12);

/// A client of a VIP with persistence: its address cut to the VIP's prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKey {
    pub addr: [u32; 4],
    pub vip_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<PersistKey>() == 24);

/// Where a persistent client goes, and when it last started a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistValue {
    pub backend: u32,
    /// `Backend::gen` of the slot when the entry was made.
    pub gen: u32,
    /// The data path's clock at the client's last new connection.
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PersistValue>() == 16);

/// Default entries of `PERSIST`: one per client (prefix) seen within the
/// timeout, over all VIPs with persistence.
pub const PERSIST_TABLE_SIZE: u32 = 1 << 18;

/// A counted TCP flow with no packet for this long is taken off its
/// backend's count by the daemon (as IPVS's established timeout): its
/// client went away without a FIN the balancer saw.
pub const TCP_COUNT_IDLE_NS: u64 = 900_000_000_000;

/// Least connections' second choice for a flow whose Maglev slot is
/// `slot` (of a table of `size` slots), from the flow hash's top bits:
/// another slot of the same 32 (one 64-byte line of `RINGS`, so no second
/// cache miss). A Maglev table interleaves its backends by weight, so a
/// neighbouring slot is as good a weighted draw as a far one (the daemon's
/// tests check that on its tables).
#[inline(always)]
pub fn second_choice(slot: u32, hash: u32, size: u32) -> u32 {
    let b = (slot & !31) | ((slot + 1 + (hash >> 27) % 31) & 31);
    if b < size {
        b
    } else if slot ^ 1 < size {
        slot ^ 1
    } else {
        slot.saturating_sub(1)
    }
}
