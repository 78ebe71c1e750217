//! Weighted Maglev lookup-table builder (pure Rust, no BPF).
//!
//! The table maps `flow_hash % size` to a backend's slot id. It is built the
//! way the Maglev paper (Eisenbud et al., NSDI 2016, §3.4) describes: every
//! backend has its own permutation of the table positions, derived from its
//! `key`, and the backends take turns claiming the next free position of
//! their permutation until the table is full. Because a backend's
//! permutation depends only on its own key, a change to the pool moves few
//! slots that belong to the backends that stay.
//!
//! Weights change two things relative to the paper (see [`build`]):
//! backends take turns in proportion to their weight, and each backend stops
//! claiming when it holds its exact share of the table.
//!
//! The hashes and the fill order are a contract: several LB nodes behind
//! ECMP must build bit-identical tables from the same pool, across releases.
//! `table_fingerprint_is_stable` pins them.

use lb_common::NO_BACKEND;

/// One backend as the builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Stable identity across pool changes (the daemon derives it from the backend's address); drives the permutation.
    pub key: u64,
    /// The value written into the slots this backend owns (the backend's slot id in the BPF BACKENDS array).
    pub slot: u32,
    /// Relative weight, 1..=65535 (0 means: not in the table).
    pub weight: u32,
}

/// Seeds of the two permutation hashes. Never change them: every LB node
/// must compute the same table (see the module docs).
const OFFSET_SEED: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SKIP_SEED: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// First permutation hash: the MurmurHash3 64-bit finaliser (`fmix64`) of the
/// seeded key. A bijection with full avalanche, so nearby keys (consecutive
/// addresses) get unrelated offsets.
fn offset_hash(key: u64) -> u64 {
    let mut h = key ^ OFFSET_SEED;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Second permutation hash: the SplitMix64 output function of the key under
/// a different seed. Different constants and shifts from [`offset_hash`], so
/// the two are independent for practical purposes, as the paper requires.
fn skip_hash(key: u64) -> u64 {
    let mut h = (key ^ SKIP_SEED).wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// `(a + b) % m` for `a, b < m`.
fn add_mod(a: u64, b: u64, m: u64) -> u64 {
    let sum = a + b;
    if sum >= m {
        sum - m
    } else {
        sum
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Backend `key`'s permutation of the `m` table positions (step 3 of
/// [`build`]): it starts at `offset` and walks by `skip`.
fn permutation(key: u64, m: u64) -> (u64, u64) {
    let offset = offset_hash(key) % m;
    let mut skip = if m > 1 {
        skip_hash(key) % (m - 1) + 1
    } else {
        1
    };
    // Never taken for prime M; keeps non-prime sizes from looping forever.
    while gcd(skip, m) != 1 {
        skip = skip % m + 1;
    }
    (offset, skip)
}

/// One backend's state while the table is being filled.
struct Filler {
    /// The value written into the positions this backend claims.
    slot: u32,
    weight: u64,
    /// Turn credit; a turn costs `max_weight` (see [`build`]).
    credit: u64,
    /// The next position of this backend's permutation to try.
    next: u64,
    /// `k·skip % M` for k = 1..=4: the distance from `next` to the k-th
    /// position after it.
    steps: [u64; 4],
    /// Positions still to claim before this backend holds its quota.
    remaining: u64,
}

/// Builds a table of `size` slots (size is a prime, >= number of weighted backends is NOT required but size should be >> backends).
/// Every slot holds some backend's `slot`; if no backend has weight > 0, every slot is `lb_common::NO_BACKEND`.
///
/// The algorithm, in four steps:
///
/// 1. Drop weight-0 backends and sort the rest by `(key, slot, weight)`, so
///    the result does not depend on the order of `backends`.
/// 2. Quotas. Backend `i` should own `M·wᵢ/W` positions (`W` = sum of
///    weights). Its quota is that number rounded down, and the `M - Σ⌊…⌋`
///    positions left over go one each to the backends with the largest
///    fractional parts, ties to the earlier backend in sort order (Hamilton's
///    largest-remainder method). Quotas sum to exactly `M`, and every
///    backend ends up within one slot of its exact share — the best any
///    integer table can do. (A relative bound such as 1% therefore holds
///    only where a share is >= 100 slots.)
/// 3. Permutations, as in the paper: `offset = h1(key) % M`,
///    `skip = h2(key) % (M-1) + 1`, position j = `(offset + j·skip) % M`,
///    walked incrementally. For prime `M` every `skip` is coprime to `M`, so
///    each permutation visits every position. (Should `M` not be prime, the
///    skip is bumped to the next coprime value so the build still
///    terminates with a full table; the spreading is then weaker.)
/// 4. Turns, weighted by credit (the scheme of Katran's Maglev v2): in each
///    round every backend adds its weight to its credit, and when the credit
///    reaches `max_weight` it pays `max_weight` and claims the next free
///    position of its permutation. With equal weights this is exactly the
///    paper's round robin. Credits start at `max_weight / 2`, so after `r`
///    rounds a backend has had `round(r·w/max_weight)` turns rather than the
///    floor, which keeps everyone close to their quota as the table fills;
///    a backend that reaches its quota leaves the rotation. Every backend
///    reaches its quota within a turn or two of the end of the fill, so the
///    quotas change the fill order very little, which preserves Maglev's
///    small disruption (about 0.6% of M beyond the removed backend's own
///    slots when one of 100 leaves).
///
/// Cost: about `M·ln M` probes (most in the coupon-collector tail of the
/// last free positions) plus one credit update per backend per round. There
/// are about `M·max_weight/W` rounds, so the credit updates cost
/// `M·max_weight/mean_weight`: negligible for ordinary weight spreads, at most
/// `M·N` for extreme ones (one backend at 65535, the rest at 1). M = 65537
/// with 1000 backends builds in about 1.2 ms (`examples/maglev_bench.rs`).
pub fn build(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let m = u64::from(size);
    let mut table = vec![NO_BACKEND; size as usize];

    // Step 1: order-independent input.
    let mut pool: Vec<MaglevBackend> = backends.iter().copied().filter(|b| b.weight > 0).collect();
    if pool.is_empty() || m == 0 {
        return table;
    }
    pool.sort_unstable_by_key(|b| (b.key, b.slot, b.weight));

    // Step 2: quotas by largest remainder. u128 because M·w can exceed u64
    // for absurd (but representable) sizes and weights.
    let total_weight: u128 = pool.iter().map(|b| u128::from(b.weight)).sum();
    let mut quotas: Vec<u64> = Vec::with_capacity(pool.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(pool.len());
    for (i, b) in pool.iter().enumerate() {
        let share = u128::from(m) * u128::from(b.weight);
        quotas.push((share / total_weight) as u64); // <= m, fits
        remainders.push((share % total_weight, i));
    }
    // Fewer than pool.len() positions are left over.
    let leftover = m - quotas.iter().sum::<u64>();
    // Largest remainder first; equal remainders go to the earlier backend.
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(leftover as usize) {
        quotas[i] += 1;
    }

    // Step 3: one permutation per backend that gets any positions at all (a
    // tiny weight in a tiny table can round to zero).
    let max_weight = pool.iter().map(|b| u64::from(b.weight)).max().unwrap_or(1);
    let mut fillers: Vec<Filler> = pool
        .iter()
        .zip(&quotas)
        .filter(|(_, quota)| **quota > 0)
        .map(|(b, &quota)| {
            let (offset, skip) = permutation(b.key, m);
            Filler {
                slot: b.slot,
                weight: u64::from(b.weight),
                credit: max_weight / 2,
                next: offset,
                steps: [skip, 2 * skip % m, 3 * skip % m, 4 * skip % m],
                remaining: quota,
            }
        })
        .collect();

    // Step 4: weighted turns until every backend holds its quota. The quotas
    // sum to M, so then the table is full. Occupancy lives in a bitset
    // (8 KiB for M = 65537, so it stays in L1) rather than in `table`, which
    // also lets any `slot` value, even NO_BACKEND, be written as given.
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    let is_free = |taken: &[u64], pos: u64| (!taken[(pos / 64) as usize] >> (pos % 64)) & 1;
    while !fillers.is_empty() {
        let mut someone_finished = false;
        for f in fillers.iter_mut() {
            f.credit += f.weight;
            if f.credit < max_weight {
                continue;
            }
            f.credit -= max_weight;
            // Walk the permutation to its first free position. One exists:
            // the table is not full while anyone has quota left, every
            // position this backend has passed is taken, and its permutation
            // covers the whole table.
            //
            // Most probes happen while the table is nearly full (the
            // coupon-collector tail), so positions are tested four at a time:
            // the four loads are independent and there is one branch per four
            // probes. The first free one of the four is claimed, so the result
            // is exactly that of probing one by one.
            let pos = loop {
                let p = [
                    f.next,
                    add_mod(f.next, f.steps[0], m),
                    add_mod(f.next, f.steps[1], m),
                    add_mod(f.next, f.steps[2], m),
                ];
                let free = is_free(&taken, p[0])
                    | is_free(&taken, p[1]) << 1
                    | is_free(&taken, p[2]) << 2
                    | is_free(&taken, p[3]) << 3;
                if free != 0 {
                    let pos = p[free.trailing_zeros() as usize];
                    f.next = add_mod(pos, f.steps[0], m);
                    break pos;
                }
                f.next = add_mod(f.next, f.steps[3], m);
            };
            taken[(pos / 64) as usize] |= 1 << (pos % 64);
            table[pos as usize] = f.slot;
            f.remaining -= 1;
            someone_finished |= f.remaining == 0;
        }
        if someone_finished {
            // `retain` keeps the turn order, which the result depends on.
            fillers.retain(|f| f.remaining > 0);
        }
    }
    table
}

/// Tables already built, by what decides them: the table size and each
/// backend's key and weight (the slot ids only label the result). VIPs
/// behind the same backends with the same weights (one host serving many
/// VIPs, as is common) get one build between them: when that host fails,
/// every VIP's table is rebuilt, and all but the first are a relabelling.
#[derive(Debug, Default)]
pub struct Memo {
    tables: std::collections::HashMap<Shape, Vec<u32>>,
}

/// What decides a table: its size, and each backend's key and weight in
/// [`build`]'s order.
type Shape = (u32, Vec<(u64, u32)>);

/// Tables a [`Memo`] keeps before it starts over (each is `4 × size`
/// bytes: 256 KiB at the default size).
const MEMO_TABLES: usize = 16;

impl Memo {
    /// [`build`]'s table, from an earlier build of the same keys and
    /// weights when there is one.
    pub fn build(&mut self, backends: &[MaglevBackend], size: u32) -> Vec<u32> {
        let mut pool: Vec<MaglevBackend> =
            backends.iter().copied().filter(|b| b.weight > 0).collect();
        // `build`'s own order; its result depends on nothing else.
        pool.sort_unstable_by_key(|b| (b.key, b.slot, b.weight));
        let shape: Shape = (size, pool.iter().map(|b| (b.key, b.weight)).collect());
        if !self.tables.contains_key(&shape) {
            // Built with each backend's position in `pool` as its label.
            let labelled: Vec<MaglevBackend> = pool
                .iter()
                .enumerate()
                .map(|(i, b)| MaglevBackend {
                    slot: i as u32,
                    ..*b
                })
                .collect();
            if self.tables.len() >= MEMO_TABLES {
                self.tables.clear();
            }
            self.tables.insert(shape.clone(), build(&labelled, size));
        }
        self.tables[&shape]
            .iter()
            .map(|&i| pool.get(i as usize).map_or(NO_BACKEND, |b| b.slot))
            .collect()
    }
}

/// Whether n is prime (used by config validation for the table size).
///
/// Deterministic Miller–Rabin: the first twelve primes as witnesses decide
/// every n < 3.3·10²⁴, which covers all of u64.
pub fn is_prime(n: u64) -> bool {
    const WITNESSES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for p in WITNESSES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    // n - 1 = d · 2^s with d odd.
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'witness: for a in WITNESSES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

fn mul_mod(a: u64, b: u64, n: u64) -> u64 {
    (u128::from(a) * u128::from(b) % u128::from(n)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, n: u64) -> u64 {
    let mut acc = 1;
    base %= n;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, n);
        }
        base = mul_mod(base, base, n);
        exp >>= 1;
    }
    acc
}

/// A smooth weighted round-robin sequence (nginx's): each step adds every
/// backend's weight to its credit and picks the highest credit (the first
/// of equals), which then pays the total. Over one cycle every backend
/// appears in proportion to its weight, spread out, never in a burst. The
/// weights are first reduced by their common divisor, then halved (keeping
/// at least 1) until the cycle fits `max_len` slots. Returns the slots in
/// order (empty: no backend).
pub fn smooth_wrr(backends: &[MaglevBackend], max_len: usize) -> Vec<u32> {
    let live: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() || max_len == 0 {
        return Vec::new();
    }
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let g = live.iter().fold(0, |g, b| gcd(g, u64::from(b.weight)));
    let mut w: Vec<u64> = live.iter().map(|b| u64::from(b.weight) / g).collect();
    while w.iter().sum::<u64>() as usize > max_len && w.iter().any(|x| *x > 1) {
        w.iter_mut().for_each(|x| *x = (*x / 2).max(1));
    }
    let total: u64 = w.iter().sum();
    let len = (total as usize).min(max_len);
    let mut credit = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for i in 0..w.len() {
            credit[i] += w[i] as i64;
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total as i64;
        seq.push(live[best].slot);
    }
    seq
}

#[cfg(test)]
mod tests {

    fn wrr(weights: &[u32]) -> Vec<u32> {
        let b: Vec<MaglevBackend> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| MaglevBackend {
                key: i as u64,
                slot: i as u32,
                weight: *w,
            })
            .collect();
        smooth_wrr(&b, 65537)
    }

    #[test]
    fn a_memo_gives_build_s_table_for_any_labels() {
        let pool = |base: u32, weights: &[u32]| -> Vec<MaglevBackend> {
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| MaglevBackend {
                    key: 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1),
                    slot: base + 7 * i as u32,
                    weight: *w,
                })
                .collect()
        };
        let mut memo = Memo::default();
        for (base, weights) in [
            (0, vec![1, 1, 1, 1]),
            (100, vec![1, 1, 1, 1]),
            (200, vec![3, 1, 0, 2]),
            (300, vec![3, 1, 0, 2]),
            (400, vec![1, 1, 1, 1]),
            (500, vec![]),
            // The same backends with other weights: another table.
            (600, vec![2, 1, 1, 1]),
        ] {
            let mut p = pool(base, &weights);
            // The input's order does not matter.
            p.reverse();
            assert_eq!(memo.build(&p, 1021), build(&p, 1021), "{base} {weights:?}");
            assert_eq!(memo.build(&p, 13), build(&p, 13), "{base} {weights:?}");
        }
        // One build per size and shape: four shapes (the empty pool is
        // one), two sizes.
        assert_eq!(memo.tables.len(), 8);
    }

    #[test]
    fn smooth_weighted_round_robin_spreads_the_heaviest() {
        // nginx's example: weights 5, 1, 1 give a a b a c a a, not a burst.
        assert_eq!(wrr(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        // Equal weights: plain round robin, reduced to one cycle.
        assert_eq!(wrr(&[100, 100, 100]), [0, 1, 2]);
        assert_eq!(wrr(&[2, 4]), [1, 0, 1]);
        assert!(wrr(&[]).is_empty());
        assert_eq!(wrr(&[0, 3]), [1]);
        // A cycle longer than the table is scaled down, keeping every backend.
        let b: Vec<MaglevBackend> = [65535u32, 65534, 1]
            .iter()
            .enumerate()
            .map(|(i, w)| MaglevBackend {
                key: i as u64,
                slot: i as u32,
                weight: *w,
            })
            .collect();
        let seq = smooth_wrr(&b, 1009);
        assert!(seq.len() <= 1009 && seq.contains(&2), "{}", seq.len());
    }

    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const M: u32 = 65537;

    /// A key shaped like the daemon's: an IPv4 address and port packed into a u64.
    fn addr_key(i: u32) -> u64 {
        (u64::from(0x0a00_0000 + i) << 16) | 8080
    }

    /// `n` backends with slot ids 0..n and the weight `weight(i)`.
    fn pool(n: u32, weight: impl Fn(u32) -> u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                key: addr_key(i),
                slot: i,
                weight: weight(i),
            })
            .collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, usize> {
        let mut c = HashMap::new();
        for &s in table {
            *c.entry(s).or_insert(0) += 1;
        }
        c
    }

    /// Positions whose backend changed between `old` and `new`, not counting
    /// positions that `old` gave to `left` or `new` gives to `joined`.
    fn collateral_moves(old: &[u32], new: &[u32], left: Option<u32>, joined: Option<u32>) -> usize {
        old.iter()
            .zip(new)
            .filter(|&(&o, &n)| o != n && Some(o) != left && Some(n) != joined)
            .count()
    }

    /// The largest |count − exact share| / exact share over all backends.
    fn worst_relative_deviation(backends: &[MaglevBackend], table: &[u32]) -> f64 {
        let c = counts(table);
        let total: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
        backends
            .iter()
            .map(|b| {
                let exact = table.len() as f64 * f64::from(b.weight) / total;
                let got = *c.get(&b.slot).unwrap_or(&0) as f64;
                (got - exact).abs() / exact
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn no_backends_means_every_slot_is_empty() {
        assert_eq!(build(&[], M), vec![NO_BACKEND; M as usize]);
        let all_zero = pool(5, |_| 0);
        assert_eq!(build(&all_zero, 1009), vec![NO_BACKEND; 1009]);
    }

    #[test]
    fn one_backend_owns_every_slot() {
        let one = [MaglevBackend {
            key: 42,
            slot: 7,
            weight: 3,
        }];
        assert_eq!(build(&one, M), vec![7; M as usize]);
    }

    #[test]
    fn zero_weight_backend_gets_nothing() {
        let mut backends = pool(10, |_| 1);
        backends[3].weight = 0;
        let table = build(&backends, M);
        assert!(!table.contains(&3), "weight-0 backend 3 got slots");
        assert!(!table.contains(&NO_BACKEND));
        assert_eq!(counts(&table).len(), 9);
        // And it is as if it were not listed at all.
        let without: Vec<_> = backends.iter().copied().filter(|b| b.slot != 3).collect();
        assert_eq!(table, build(&without, M));
    }

    #[test]
    fn every_slot_is_filled() {
        for n in [1, 2, 3, 10, 100, 1000] {
            let table = build(&pool(n, |i| 1 + i % 7), M);
            assert_eq!(table.len(), M as usize);
            assert!(table.iter().all(|&s| s < n), "n={n}: empty or foreign slot");
            assert_eq!(
                counts(&table).len(),
                n as usize,
                "n={n}: some backend got no slot"
            );
        }
    }

    #[test]
    fn build_is_deterministic() {
        let backends = pool(100, |i| 1 + i % 10);
        assert_eq!(build(&backends, M), build(&backends, M));
    }

    #[test]
    fn listing_order_does_not_matter() {
        let backends = pool(100, |i| 1 + i % 10);
        let expected = build(&backends, M);
        let mut reversed = backends.clone();
        reversed.reverse();
        assert_eq!(build(&reversed, M), expected);
        let mut interleaved: Vec<_> = backends.iter().copied().step_by(2).collect();
        interleaved.extend(backends.iter().copied().skip(1).step_by(2));
        assert_eq!(build(&interleaved, M), expected);
    }

    #[test]
    fn duplicate_keys_are_ordered_by_slot() {
        // Two entries with the same key (the same address listed twice):
        // the tie is broken by slot, so listing order still does not matter.
        let a = MaglevBackend {
            key: 5,
            slot: 1,
            weight: 1,
        };
        let b = MaglevBackend { slot: 2, ..a };
        let c = MaglevBackend {
            key: 6,
            slot: 3,
            weight: 1,
        };
        let table = build(&[a, b, c], 1009);
        assert_eq!(table, build(&[c, b, a], 1009));
        assert_eq!(table, build(&[b, c, a], 1009));
        assert_eq!(counts(&table).len(), 3);
    }

    #[test]
    fn equal_weights_share_evenly() {
        let table = build(&pool(1000, |_| 1), M);
        let c = counts(&table);
        // 65537 = 65·1000 + 537: every backend gets 65 or 66.
        assert!(c.values().all(|&n| n == 65 || n == 66), "{c:?}");
        assert_eq!(c.values().filter(|&&n| n == 66).count(), 537);
    }

    #[test]
    fn least_connections_second_choice_is_a_draw_independent_of_the_first() {
        // Over every slot and every choice of neighbour, the second
        // choice names the first's backend about as often as two
        // independent weighted draws would (the sum of squared shares).
        for (name, backends) in [
            ("100 equal", pool(100, |_| 1)),
            ("weights 1..=10", pool(100, |i| 1 + i % 10)),
            (
                "3 backends 1, 1, 2",
                pool(3, |i| if i == 2 { 2 } else { 1 }),
            ),
        ] {
            let table = build(&backends, M);
            let total: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
            let independent: f64 = backends
                .iter()
                .map(|b| (f64::from(b.weight) / total).powi(2))
                .sum();
            let (mut same, mut n) = (0u64, 0u64);
            for a in 0..M {
                for top in 0..31u32 {
                    let b = lb_common::second_choice(a, top << 27, M);
                    assert!(b < M && b != a, "{name}: slot {a} -> {b}");
                    same += u64::from(table[a as usize] == table[b as usize]);
                    n += 1;
                }
            }
            let rate = same as f64 / n as f64;
            println!("{name}: same backend {rate:.4}, independent draws {independent:.4}");
            assert!(
                (rate - independent).abs() <= 0.1 * independent + 0.002,
                "{name}: same backend {rate:.4}, independent draws {independent:.4}"
            );
        }
    }

    #[test]
    fn weights_are_honoured_within_one_percent() {
        let cases: [(&str, Vec<MaglevBackend>); 3] = [
            ("weights 1..=10", pool(100, |i| 1 + i % 10)),
            (
                "weights 1 and 100",
                pool(100, |i| if i % 2 == 0 { 1 } else { 100 }),
            ),
            ("weights 1..=100", pool(100, |i| 1 + (i * 37) % 100)),
        ];
        for (name, backends) in cases {
            let table = build(&backends, M);
            let worst = worst_relative_deviation(&backends, &table);
            println!(
                "{name}: worst relative deviation from weighted share {:.4}%",
                worst * 100.0
            );
            assert!(
                worst < 0.01,
                "{name}: worst deviation {:.4}%",
                worst * 100.0
            );
        }
    }

    #[test]
    fn every_backend_is_within_one_slot_of_its_exact_share() {
        // The absolute guarantee, which also holds where a share is too small
        // for any relative bound: here backend 0's share is 6.6 slots.
        let backends = pool(100, |i| if i == 0 { 1 } else { 100 });
        let table = build(&backends, M);
        let c = counts(&table);
        let total: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
        for b in &backends {
            let exact = f64::from(M) * f64::from(b.weight) / total;
            let got = c[&b.slot] as f64;
            assert!(
                (got - exact).abs() < 1.0,
                "slot {}: {got} vs {exact:.3}",
                b.slot
            );
        }
    }

    #[test]
    fn removing_a_backend_moves_almost_only_its_slots() {
        for (name, backends) in [
            ("equal", pool(100, |_| 1)),
            ("mixed", pool(100, |i| 1 + i % 10)),
        ] {
            let before = build(&backends, M);
            let mut worst = 0.0f64;
            for removed in [0u32, 37, 99] {
                let rest: Vec<_> = backends
                    .iter()
                    .copied()
                    .filter(|b| b.slot != removed)
                    .collect();
                let after = build(&rest, M);
                assert!(!after.contains(&removed));
                let moved = collateral_moves(&before, &after, Some(removed), None);
                let frac = moved as f64 / f64::from(M);
                worst = worst.max(frac);
                assert!(
                    frac < 0.02,
                    "{name}: removing {removed} moved {:.3}% of other slots",
                    frac * 100.0
                );
            }
            println!(
                "{name}: removing 1 of 100 moves at most {:.3}% of M beyond its own slots",
                worst * 100.0
            );
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth_of_the_flows() {
        // Maglev's promise, counted over every slot (the removed backend's
        // own included): about 1/N of the flows move, hardly more.
        for n in [10u32, 100] {
            let backends = pool(n, |_| 1);
            let before = build(&backends, M);
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<_> = backends
                    .iter()
                    .copied()
                    .filter(|b| b.slot != removed)
                    .collect();
                let after = build(&rest, M);
                let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let frac = moved as f64 / f64::from(M);
                let share = 1.0 / f64::from(n);
                assert!(
                    frac <= share * 1.2 + 0.005,
                    "{n} backends, removing {removed}: {:.2}% moved, 1/N is {:.2}%",
                    frac * 100.0,
                    share * 100.0
                );
            }
        }
    }

    #[test]
    fn backends_have_their_own_preference_lists() {
        // The permutations are what makes a pool change move few flows:
        // backends at consecutive addresses must start at positions of their
        // own, step by skips of their own, and share few of their first
        // preferences.
        let m = u64::from(M);
        let perms: Vec<(u64, u64)> = (0..100).map(|i| permutation(addr_key(i), m)).collect();
        let distinct = |v: Vec<u64>| {
            v.into_iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        let offsets = distinct(perms.iter().map(|p| p.0).collect());
        let skips = distinct(perms.iter().map(|p| p.1).collect());
        assert!(offsets >= 98, "{offsets} distinct first positions of 100");
        assert!(skips >= 98, "{skips} distinct skips of 100");
        let firsts: Vec<u64> = perms
            .iter()
            .flat_map(|&(o, s)| (0..8).map(move |j| (o + j * s) % m))
            .collect();
        let shared = 800 - distinct(firsts);
        assert!(
            shared <= 8,
            "{shared} of the 800 first preferences are shared"
        );
        // Every skip walks the whole table (M is prime, skip in 1..M).
        assert!(perms.iter().all(|p| p.0 < m && (1..m).contains(&p.1)));
    }

    #[test]
    fn adding_a_backend_moves_almost_only_the_slots_it_takes() {
        let backends = pool(100, |i| 1 + i % 10);
        let before = build(&backends, M);
        let mut more = backends.clone();
        more.push(MaglevBackend {
            key: addr_key(1000),
            slot: 100,
            weight: 5,
        });
        let after = build(&more, M);
        let moved = collateral_moves(&before, &after, None, Some(100));
        let frac = moved as f64 / f64::from(M);
        println!(
            "adding 1 to 100 moves {:.3}% of M beyond the slots it takes",
            frac * 100.0
        );
        assert!(frac < 0.02, "moved {:.3}%", frac * 100.0);
        assert!(counts(&after)[&100] > 0);
    }

    #[test]
    fn changing_one_weight_moves_little_else() {
        let backends = pool(100, |_| 10);
        let before = build(&backends, M);
        let mut heavier = backends.clone();
        heavier[42].weight = 20;
        let after = build(&heavier, M);
        // Slots that moved to or from backend 42 are the point; count the rest.
        let moved = collateral_moves(&before, &after, Some(42), Some(42));
        let frac = moved as f64 / f64::from(M);
        println!(
            "doubling one weight of 100 moves {:.3}% of M elsewhere",
            frac * 100.0
        );
        assert!(frac < 0.02, "moved {:.3}%", frac * 100.0);
    }

    #[test]
    fn odd_sizes_still_fill_the_table() {
        let backends = pool(3, |i| i + 1);
        assert!(build(&backends, 0).is_empty());
        assert_eq!(build(&backends, 1).len(), 1);
        assert!(build(&backends, 1)[0] < 3);
        // Not prime: the skip is forced coprime, so the build still ends full.
        for size in [4, 100, 1024, 65536] {
            let table = build(&backends, size);
            assert!(table.iter().all(|&s| s < 3), "size {size}");
        }
        // More backends than slots: the largest remainders win, never a gap.
        let table = build(&pool(20, |_| 1), 7);
        assert!(table.iter().all(|&s| s < 20));
    }

    #[test]
    fn table_fingerprint_is_stable() {
        // Guards the cross-node / cross-release contract: if this changes,
        // every deployed table would change on upgrade. Do not "fix" the
        // expected values without meaning to break that contract.
        let table = build(&pool(10, |i| 1 + i % 3), 1009);
        assert_eq!(&table[..16], &FINGERPRINT_HEAD);
        let fnv = table.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &s| {
            (h ^ u64::from(s)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        assert_eq!(fnv, FINGERPRINT_FNV);
    }
    const FINGERPRINT_HEAD: [u32; 16] = [1, 3, 2, 6, 8, 6, 9, 6, 4, 2, 7, 3, 0, 7, 2, 7];
    const FINGERPRINT_FNV: u64 = 0x46e7_f924_3402_86c3;

    #[test]
    fn skip_hash_is_the_reference_splitmix64() {
        // SplitMix64 seeded with 1234567 first yields 6457827717110365317
        // (the published reference sequence); skip_hash is its output
        // function applied to `key ^ SKIP_SEED`.
        assert_eq!(skip_hash(1_234_567 ^ SKIP_SEED), 6_457_827_717_110_365_317);
        // The two hashes must differ, or offset and skip would be correlated.
        assert!((0..1000).all(|k| offset_hash(k) != skip_hash(k)));
    }

    #[test]
    fn is_prime_matches_trial_division_below_10000() {
        let trial = |n: u64| {
            n >= 2
                && (2..)
                    .take_while(|d| d * d <= n)
                    .all(|d| !n.is_multiple_of(d))
        };
        for n in 0..10_000 {
            assert_eq!(is_prime(n), trial(n), "n={n}");
        }
    }

    #[test]
    fn is_prime_on_table_sizes_and_hard_cases() {
        for p in [
            251,
            1009,
            4099,
            65537,
            655_373,
            1_000_003,
            18_446_744_073_709_551_557,
        ] {
            assert!(is_prime(p), "{p} is prime");
        }
        // Composites, including Carmichael numbers and strong pseudoprimes to
        // several small bases, which fool weaker tests.
        for c in [
            0,
            1,
            65536,
            65535,
            561,
            1105,
            2047,
            3_215_031_751,
            3_825_123_056_546_413_051,
            4_294_967_297, // 641 · 6700417
            u64::MAX,
        ] {
            assert!(!is_prime(c), "{c} is composite");
        }
    }

    fn arb_pool() -> impl Strategy<Value = Vec<MaglevBackend>> {
        prop::collection::vec((any::<u64>(), 0u32..64, 0u32..=20), 0..40).prop_map(|v| {
            v.into_iter()
                .map(|(key, slot, weight)| MaglevBackend { key, slot, weight })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        #[test]
        fn prop_order_does_not_matter(backends in arb_pool(), seed in any::<u64>()) {
            let mut shuffled = backends.clone();
            // Deterministic shuffle driven by the generated seed.
            shuffled.sort_by_key(|b| offset_hash(b.key ^ seed) ^ u64::from(b.slot));
            prop_assert_eq!(build(&shuffled, 1009), build(&backends, 1009));
        }

        #[test]
        fn prop_no_empty_slots_and_exact_shares(
            backends in arb_pool(),
            size in prop::sample::select(vec![251u32, 1009, 1013]),
        ) {
            let table = build(&backends, size);
            prop_assert_eq!(table.len(), size as usize);
            let live: Vec<_> = backends.iter().filter(|b| b.weight > 0).collect();
            if live.is_empty() {
                prop_assert!(table.iter().all(|&s| s == NO_BACKEND));
            } else {
                prop_assert!(table.iter().all(|&s| live.iter().any(|b| b.slot == s)));
                // Per slot value (duplicates of a slot id pool their shares).
                let total: f64 = live.iter().map(|b| f64::from(b.weight)).sum();
                let mut exact: HashMap<u32, (f64, usize)> = HashMap::new();
                for b in &live {
                    let e = exact.entry(b.slot).or_default();
                    e.0 += f64::from(size) * f64::from(b.weight) / total;
                    e.1 += 1;
                }
                let c = counts(&table);
                for (slot, (share, entries)) in exact {
                    let got = *c.get(&slot).unwrap_or(&0) as f64;
                    prop_assert!((got - share).abs() < entries as f64,
                        "slot {}: {} vs {:.3}", slot, got, share);
                }
            }
        }
    }
}
