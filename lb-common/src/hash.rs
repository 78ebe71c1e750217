//! The keyed flow hash (SipHash-1-3), computed the same way by the data path
//! and the daemon.
use crate::layout::{FlowKey, AF_INET};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::*;

    #[test]
    fn flow_hash_depends_on_key_and_every_field() {
        let k = FlowKey {
            src: [0x0100_000a, 0, 0, 0],
            dst: [0x0a00_000a, 0, 0, 0],
            sport: 1234u16.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            family: AF_INET,
            _pad: [0; 2],
        };
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
