//! Times `maglev::build` at the default table size and measures how many slots
//! move when one backend leaves. Run with
//! `cargo run --release -p lb-userspace --example maglev_bench`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use lb_userspace::maglev::{build, MaglevBackend};

const M: u32 = 65537;
const RUNS: usize = 50;
const WARMUP: usize = 5;

/// `n` backends with address-shaped keys (10.0.x.y:8080) and `weight(i)`.
fn pool(n: u32, weight: impl Fn(u32) -> u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            key: (u64::from(0x0a00_0000 + i) << 16) | 8080,
            slot: i,
            weight: weight(i),
        })
        .collect()
}

/// The `q`-quantile of sorted samples (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Fraction of the table that changes owner, beyond the removed backend's
/// own slots, when the (first) heaviest backend leaves: it owns the most
/// slots, so its leaving moves the most.
fn removal_disruption(backends: &[MaglevBackend]) -> f64 {
    let heaviest = backends.iter().map(|b| b.weight).max().unwrap_or(0);
    let removed = backends
        .iter()
        .find(|b| b.weight == heaviest)
        .map_or(0, |b| b.slot);
    let before = build(backends, M);
    let rest: Vec<_> = backends
        .iter()
        .copied()
        .filter(|b| b.slot != removed)
        .collect();
    let after = build(&rest, M);
    let moved = before
        .iter()
        .zip(&after)
        .filter(|&(&o, &n)| o != n && o != removed)
        .count();
    moved as f64 / f64::from(M)
}

fn main() {
    let cases: Vec<(&str, Vec<MaglevBackend>)> = vec![
        ("100 equal", pool(100, |_| 1)),
        ("100 weights 1..=10", pool(100, |i| 1 + i % 10)),
        (
            "100 weights 1|100",
            pool(100, |i| if i % 2 == 0 { 1 } else { 100 }),
        ),
        ("1000 equal", pool(1000, |_| 1)),
        ("1000 weights 1..=10", pool(1000, |i| 1 + i % 10)),
        (
            "1000 weights 1|100",
            pool(1000, |i| if i % 2 == 0 { 1 } else { 100 }),
        ),
    ];

    println!("maglev::build, M = {M}, {RUNS} runs per case after {WARMUP} warm-up runs");
    println!(
        "{:<22} {:>12} {:>12} {:>12} {:>29}",
        "backends", "median", "p99", "min", "remove heaviest: other moved"
    );
    for (name, backends) in &cases {
        for _ in 0..WARMUP {
            black_box(build(black_box(backends), M));
        }
        let mut times: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                black_box(build(black_box(backends), M));
                start.elapsed()
            })
            .collect();
        times.sort_unstable();
        println!(
            "{:<22} {:>12} {:>12} {:>12} {:>28.3}%",
            name,
            ms(quantile(&times, 0.5)),
            ms(quantile(&times, 0.99)),
            ms(times[0]),
            removal_disruption(backends) * 100.0
        );
    }
}
