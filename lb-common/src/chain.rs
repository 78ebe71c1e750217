//! Stateless VIPs (`state: stateless`, after Beamer, NSDI 2018): no flow
//! table on the balancer. Each slot of such a VIP's Maglev table also
//! remembers the backend that held it before its last change, and when it
//! changed (`CHAINS`), and the one before that; the balancer sends them to
//! the backend inside the GUE header, and a backend that gets a packet of a
//! connection it does not have passes it on to the previous backend, which
//! passes it on to the one before if it has not the connection either
//! (`lb decap`): a connection survives two changes of its slot in quick
//! succession.

/// `CHAINS` entry: the previous backend's id plus one in the low 20 bits
/// (0: none), the one before it in the next 20, and the data path clock's
/// second of the last change, modulo 2^24 (194 days), in the high 24.
/// Ages are taken modulo 2^24 too (`chain_age_s`): right for any change
/// within the last 194 days, and an entry is read only within a window of
/// seconds to minutes after its VIP's latest change.
#[inline(always)]
pub fn chain_entry2(prev: u32, prev2: u32, changed_s: u32) -> u64 {
    let id = |b: u32| {
        if b == crate::NO_BACKEND {
            0
        } else {
            (b as u64 + 1) & CHAIN_ID_MASK
        }
    };
    (((changed_s & CHAIN_TIME_MASK) as u64) << 40) | (id(prev2) << 20) | id(prev)
}

/// The bits of a backend id (plus one) in a `CHAINS` entry.
const CHAIN_ID_MASK: u64 = 0xf_ffff;
/// The bits of the change's second in a `CHAINS` entry.
const CHAIN_TIME_MASK: u32 = 0xff_ffff;

/// A `CHAINS` entry naming one previous backend.
#[inline(always)]
pub fn chain_entry(prev: u32, changed_s: u32) -> u64 {
    chain_entry2(prev, crate::NO_BACKEND, changed_s)
}

/// The previous backend of a `CHAINS` entry (`NO_BACKEND`: none).
#[inline(always)]
pub fn chain_prev(e: u64) -> u32 {
    match e & CHAIN_ID_MASK {
        0 => crate::NO_BACKEND,
        v => v as u32 - 1,
    }
}

/// The backend before the previous one (`NO_BACKEND`: none).
#[inline(always)]
pub fn chain_prev2(e: u64) -> u32 {
    chain_prev(e >> 20)
}

/// Seconds from a `CHAINS` entry's change to `now_s` (the data path
/// clock's second), modulo 2^24.
#[inline(always)]
pub fn chain_age_s(e: u64, now_s: u32) -> u32 {
    now_s.wrapping_sub((e >> 40) as u32) & CHAIN_TIME_MASK
}

/// The second (data path clock) of a `CHAINS` entry's change, taken as
/// the latest one before `now_s` that the entry's 24 bits allow.
#[inline(always)]
pub fn chain_changed_s(e: u64, now_s: u32) -> u32 {
    now_s.wrapping_sub(chain_age_s(e, now_s))
}

/// `VipInfo::chain_until` for a VIP whose latest slot change was at second
/// `changed_s` (0: none) of the data path clock, remembered for `window_s`:
/// the end of the window, in the units of the data path clock shifted
/// right by `CHAIN_UNTIL_SHIFT` (a shift where seconds would take a
/// division), rounded up.
pub fn chain_until(changed_s: u32, window_s: u32) -> u32 {
    if changed_s == 0 {
        return 0;
    }
    let end_ns = (changed_s as u64 + window_s as u64) * 1_000_000_000;
    end_ns.div_ceil(1 << CHAIN_UNTIL_SHIFT).min(u32::MAX as u64) as u32
}

/// `VipInfo::chain_until`'s unit: the data path clock's nanoseconds
/// shifted right by this (about 1.07 s).
pub const CHAIN_UNTIL_SHIFT: u32 = 30;

/// The first byte of the private data of our GUE header (variant 0):
/// "L", the kind of private data that carries a previous backend.
pub const CHAIN_KIND: u8 = 0x4c;
/// `GueChain::flags`: the header names a previous backend.
pub const CHAIN_F_PREV: u8 = 1;
/// `GueChain::flags`: a backend already passed the packet on (to the
/// first address); the next passes it on only to the second, if named.
pub const CHAIN_F_PASSED: u8 = 2;
/// `GueChain::flags`: the header names a second previous backend.
pub const CHAIN_F_PREV2: u8 = 4;
/// `GueChain::flags`: passed on twice; the last backend delivers it
/// whatever it finds (no loops).
pub const CHAIN_F_PASSED2: u8 = 8;

/// The GUE header of a stateless VIP's packet (variant 0, RFC draft
/// "Generic UDP Encapsulation" section 3), after the UDP header: four
/// bytes of GUE (version 0, no control, `hlen` words of optional data,
/// the inner protocol, no flags), then our private data: kind, flags, the
/// age of the slot's last change, then the previous backend's address and
/// the one before's (4 or 16 bytes each, the outer family's; zero when
/// there is none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GueChain {
    /// Version (2 bits, 0), control (1 bit, 0), `hlen` (5 bits): words
    /// of optional data after these four bytes (`chain_hlen`).
    pub ver_hlen: u8,
    /// The inner protocol: `PROTO_IPIP` or `PROTO_IPV6`.
    pub proto: u8,
    pub flags: u16,
    /// `CHAIN_KIND`.
    pub kind: u8,
    /// `CHAIN_F_*`.
    pub chain_flags: u8,
    /// Seconds since the slot changed, network byte order, saturating.
    pub age_s: u16,
}
const _: () = assert!(core::mem::size_of::<GueChain>() == 8);

/// `hlen` of a stateless GUE header: one word of kind, flags and age,
/// then the two previous backends' addresses.
#[inline(always)]
pub const fn chain_hlen(outer_v6: bool) -> u8 {
    if outer_v6 {
        9
    } else {
        3
    }
}

/// Bytes of a stateless GUE header, address included (after UDP).
#[inline(always)]
pub const fn chain_len(outer_v6: bool) -> usize {
    4 + 4 * chain_hlen(outer_v6) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_entries_round_trip() {
        let e = chain_entry(41, 123_456);
        assert_eq!(chain_prev(e), 41);
        assert_eq!(chain_changed_s(e, 123_460), 123_456);
        assert_eq!(chain_age_s(e, 123_460), 4);
        assert_eq!(chain_prev2(e), crate::NO_BACKEND);
        let e = chain_entry2(3, 0, 9);
        assert_eq!(
            (chain_prev(e), chain_prev2(e), chain_changed_s(e, 10)),
            (3, 0, 9)
        );
        // Ids past 16 bits, up to the largest; seconds past 2^24 (after
        // 194 days of uptime).
        let late = (1 << 24) * 3 + 77;
        let e = chain_entry2(crate::MAX_BACKEND_ID, 70_000, late);
        assert_eq!(
            (chain_prev(e), chain_prev2(e)),
            (crate::MAX_BACKEND_ID, 70_000)
        );
        assert_eq!(chain_age_s(e, late + 30), 30);
        assert_eq!(chain_changed_s(e, late + 30), late);
        assert_eq!(chain_prev(0), crate::NO_BACKEND);
        assert_eq!(chain_len(false), 16);
        assert_eq!(chain_len(true), 40);
    }
}
