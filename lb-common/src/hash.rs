//! The keyed flow hash (SipHash-1-3), computed the same way by the data path
//! and the daemon.
use crate::flow::{FlowKey, FLOW_GONE};
use crate::layout::AF_INET;

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-1-3 over `N` 64-bit words (8·N bytes), keyed by `key`.
#[inline(always)]
fn siphash13<const N: usize>(key: &[u64; 2], m: [u64; N]) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < N {
        v[3] ^= m[i];
        sip_round(&mut v);
        v[0] ^= m[i];
        i += 1;
    }
    // Length block.
    let b: u64 = ((8 * N) as u64) << 56;
    v[3] ^= b;
    sip_round(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The keyed flow hash: picks the Maglev slot and varies the outer source.
/// Both sides compute it, so the daemon and tests can tell where a flow goes,
/// and every node that shares the key picks the same backend. An IPv4 flow
/// hashes 16 bytes (its address words 1..3 are zero), an IPv6 flow 40.
#[inline(always)]
pub fn flow_hash(k: &FlowKey, key: &[u64; 2]) -> u64 {
    let w = |a: u32, b: u32| (a as u64) | ((b as u64) << 32);
    let tail = (k.sport as u64)
        | ((k.dport as u64) << 16)
        | ((k.proto as u64) << 32)
        | ((k.family as u64) << 40);
    if k.family == AF_INET {
        siphash13(key, [w(k.src[0], k.dst[0]), tail])
    } else {
        siphash13(
            key,
            [
                w(k.src[0], k.src[1]),
                w(k.src[2], k.src[3]),
                w(k.dst[0], k.dst[1]),
                w(k.dst[2], k.dst[3]),
                tail,
            ],
        )
    }
}

/// The flow table's two hashes of a key: the first names its set, the
/// second is its identity in the set (`FlowEntry::ident`, never
/// `FLOW_FREE` nor `FLOW_GONE`). Two keyed multiply-xorshift chains over
/// the key's words (an IPv4 flow's two: its addresses, then ports,
/// protocol and family; an IPv6 flow's five), with other constants and
/// the seed's words the other way round, in one pass; the identity ends
/// with both chains. Cheap (a few instructions a word) and keyed by a
/// random seed, as the kernel's own hash tables are with jhash; not a
/// cryptographic hash.
///
/// The identity's high word is the set hash's (`ident_set`): an entry's
/// set at any table size is known from the entry alone, so the daemon can
/// move entries when the table grows (`Config::flow_sets`). Its low word
/// is the second chain's. Keys of one set share the set number's bits of
/// the high word; the rest (46 bits at 2^18 sets, 40 at the largest
/// table) tell them apart: for keys unrelated to the seed, two are taken
/// for one another about once in 2^43 new flows with the set full.
#[inline(always)]
pub fn table_hash(k: &FlowKey, seed: &[u64; 2]) -> (u64, u64) {
    // `FlowKey` is 40 bytes aligned to 8, its padding zero.
    let w = k as *const FlowKey as *const u64;
    let tail = unsafe { *w.add(4) };
    if k.family == AF_INET {
        table_mix(seed, [(k.src[0] as u64) | ((k.dst[0] as u64) << 32), tail])
    } else {
        table_mix(seed, unsafe { [*w, *w.add(1), *w.add(2), *w.add(3), tail] })
    }
}

/// `key`'s set in a table of `sets` sets (a power of two) and its
/// identity there: where the data path and the daemon look for it.
#[inline(always)]
pub fn flow_place(k: &FlowKey, seed: &[u64; 2], sets: u32) -> (u32, u64) {
    let (_, ident) = table_hash(k, seed);
    (ident_set(ident, sets), ident)
}

/// The set of the flow of identity `ident` in a table of `sets` sets (a
/// power of two): the set hash is the identity's high word.
#[inline(always)]
pub const fn ident_set(ident: u64, sets: u32) -> u32 {
    (ident >> 32) as u32 & sets.wrapping_sub(1)
}

/// `table_hash` over `N` words.
#[inline(always)]
fn table_mix<const N: usize>(seed: &[u64; 2], m: [u64; N]) -> (u64, u64) {
    let (mut h, mut g) = (seed[0], seed[1]);
    let mut i = 0;
    while i < N {
        h = (h ^ m[i]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        g = (g ^ m[i]).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        g ^= g >> 31;
        i += 1;
    }
    h = (h ^ seed[1]).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    // The identity takes in the set chain too: a difference of two keys
    // that cancels in one chain (the top bit of a word, then the bits the
    // shift moved it to in the next) does not cancel in the other, whose
    // shift differs.
    g = (g ^ seed[0] ^ h).wrapping_mul(0x94d0_49bb_1331_11eb);
    g ^= g >> 29;
    let ident = (h & 0xffff_ffff_0000_0000) | (g & 0xffff_ffff);
    // Only a set hash of 0 with a low word of 0 or 1.
    let ident = if ident <= FLOW_GONE { ident + 2 } else { ident };
    (h ^ (h >> 32), ident)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::*;

    /// A TCP connection from 10.0.0.1:1234 to 10.0.0.10:80.
    fn key() -> FlowKey {
        FlowKey {
            src: [0x0100_000a, 0, 0, 0],
            dst: [0x0a00_000a, 0, 0, 0],
            sport: 1234u16.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            family: AF_INET,
            _pad: [0; 2],
        }
    }

    #[test]
    fn flow_hash_depends_on_key_and_every_field() {
        let k = key();
        let h = flow_hash(&k, &[1, 2]);
        assert_eq!(h, flow_hash(&k, &[1, 2]));
        assert_ne!(h, flow_hash(&k, &[1, 3]));
        let mut k2 = k;
        k2.sport = 1235u16.to_be();
        assert_ne!(h, flow_hash(&k2, &[1, 2]));
        let mut k3 = k;
        k3.proto = PROTO_UDP;
        assert_ne!(h, flow_hash(&k3, &[1, 2]));
    }

    #[test]
    fn table_hash_depends_on_seed_and_every_word_and_spreads_over_sets() {
        let k = key();
        let h = table_hash(&k, &[1, 2]);
        assert_eq!(h, table_hash(&k, &[1, 2]));
        assert_ne!(h, table_hash(&k, &[1, 3]));
        assert_ne!(h, table_hash(&k, &[3, 2]));
        // An IPv4 key's address words 1 to 3 are zero (not hashed); an
        // IPv6 key's are its own.
        let mut v6 = k;
        v6.family = crate::layout::AF_INET6;
        v6.src[3] = 7;
        let mut changed = [k, k, k, k, k, v6, v6, v6];
        changed[0].src[0] ^= 1;
        changed[1].dst[0] ^= 1 << 31;
        changed[2].sport ^= 1;
        changed[3].dport ^= 1;
        changed[4].proto = PROTO_UDP;
        changed[6].src[3] ^= 1 << 31;
        changed[7].dst[2] ^= 1;
        for (i, c) in changed.iter().enumerate() {
            let base = if i > 5 { table_hash(&v6, &[1, 2]) } else { h };
            let (set, ident) = table_hash(c, &[1, 2]);
            assert_ne!(set, base.0, "{i}");
            assert_ne!(ident, base.1, "{i}");
        }
        // IPv6 sources that differ in the top bit of one word and, in the
        // next, in the bits one chain's shift moves it to (32 for the
        // identity's, 34 for the set's): such a difference cancels in that
        // chain whatever the seed, and must not in the identity.
        for seed in [
            [1, 2],
            [5, 6],
            [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210],
        ] {
            for low in [1, 4] {
                let mut a = v6;
                a.src = [0x2001_0db8, 0x1234_5678, 0x9abc_def0, 0x0fed_cba9];
                let mut b = a;
                b.src[1] ^= 0x8000_0000;
                b.src[3] ^= 0x8000_0000 | low;
                assert_ne!(table_hash(&a, &seed).1, table_hash(&b, &seed).1, "{low}");
            }
        }
        // 100 000 clients of one /16, ports in a row, over 16 384 sets
        // (the set is the hash's high word, as the data path takes it):
        // about 6 a set, none far above. Their identities are all
        // different, and none is the set's hash,
        // `FLOW_FREE` or `FLOW_GONE`; in their low 16 bits, keys of one set
        // differ as often as random ones would (the identity does not
        // follow the set).
        let sets = 16_384usize;
        let mut load = std::vec![0u32; sets];
        let mut idents = std::collections::BTreeSet::new();
        let mut by_set: std::collections::BTreeMap<usize, std::vec::Vec<u64>> = Default::default();
        for i in 0..100_000u32 {
            let mut c = k;
            c.src[0] = 0x0000_0a0a | ((i & 0xffff) << 16);
            c.sport = (1024 + (i >> 16) as u16).to_be();
            let (h, ident) = table_hash(&c, &[5, 6]);
            let (set, same) = flow_place(&c, &[5, 6], sets as u32);
            let set = set as usize;
            assert_eq!(same, ident);
            // Its set at any size is known from its identity alone, and a
            // table grown fourfold puts it in one of the sets that end
            // with its set's bits (where the daemon moves it).
            assert_eq!(ident_set(ident, sets as u32) as usize, set);
            let grown = ident_set(ident, 4 * sets as u32);
            assert_eq!(grown as usize % sets, set);
            assert_eq!(flow_place(&c, &[5, 6], 4 * sets as u32).0, grown);
            load[set] += 1;
            assert!(ident > FLOW_GONE && ident != h);
            assert!(idents.insert(ident), "identity {ident:#x} twice");
            by_set.entry(set).or_default().push(ident & 0xffff);
        }
        let max = *load.iter().max().unwrap();
        let empty = load.iter().filter(|&&n| n == 0).count();
        assert!(max <= 20, "a set of {max}");
        // Poisson(6.1) leaves about 0.2 % of the sets empty.
        assert!(empty < sets / 100, "{empty} empty sets");
        // About 100 000 · 5 / 2 pairs in one set; by chance, 1 in 65 536
        // shares the low 16 bits: about 4.
        let pairs_alike: usize = by_set
            .values()
            .map(|v| {
                let mut n = 0;
                for (i, a) in v.iter().enumerate() {
                    n += v[i + 1..].iter().filter(|&b| b == a).count();
                }
                n
            })
            .sum();
        assert!(pairs_alike <= 20, "{pairs_alike} pairs of one set alike");
    }

    #[test]
    fn siphash13_matches_reference_implementation() {
        use core::hash::Hasher;
        for (key, m) in [
            ([0u64, 0], [0u64; 5]),
            ([0x0706050403020100, 0x0f0e0d0c0b0a0908], [1, 2, 3, 4, 5]),
            ([u64::MAX, 42], [u64::MAX, 7, 0, 9, 1 << 63]),
        ] {
            let mut r = siphasher::sip::SipHasher13::new_with_keys(key[0], key[1]);
            for w in m {
                r.write(&w.to_le_bytes());
            }
            assert_eq!(siphash13(&key, m), r.finish());
            let mut r = siphasher::sip::SipHasher13::new_with_keys(key[0], key[1]);
            r.write(&m[0].to_le_bytes());
            r.write(&m[1].to_le_bytes());
            assert_eq!(siphash13(&key, [m[0], m[1]]), r.finish());
        }
    }
}
