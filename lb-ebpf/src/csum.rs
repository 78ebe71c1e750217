//! Internet checksum helpers. All work on 16-bit words as they lie in memory:
//! the ones'-complement sum does not depend on byte order (RFC 1071), so no
//! byte swapping is needed as long as the result is stored the same way.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum of a 20-byte IPv4 header at `ip` whose checksum field is zero.
#[inline(always)]
pub unsafe fn ipv4_header(ip: usize) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += unsafe { *((ip + i) as *const u16) } as u32;
        i += 2;
    }
    !fold(sum)
}

/// Incremental update (RFC 1624, eqn. 3) of checksum `check` when one 16-bit
/// word changes from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    !fold(sum)
}

/// Adds `N` 16-bit words at `p` (as they lie in memory) to `sum`, unfolded.
#[inline(always)]
pub unsafe fn sum_words<const N: usize>(p: usize, mut sum: u32) -> u32 {
    let mut i = 0;
    while i < N {
        sum += unsafe { *((p + 2 * i) as *const u16) } as u32;
        i += 1;
    }
    sum
}

/// The two 16-bit halves of a word as it lies in memory, added.
#[inline(always)]
pub fn halves(w: u32) -> u32 {
    (w & 0xffff) + (w >> 16)
}

/// Folds and complements a sum into a checksum (as it lies in memory).
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Incremental update (RFC 1624, eqn. 3) of checksum `check` by `diff`, the
/// unfolded sum of the changed words' complements and their new values.
#[inline(always)]
pub fn update(check: u16, diff: u32) -> u16 {
    !fold((!check as u32 & 0xffff) + diff)
}
