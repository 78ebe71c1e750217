//! The data path's clock: jiffies turned into CLOCK_MONOTONIC nanoseconds,
//! and its calibration by the daemon (`lb_clock`).
use crate::layout::Config;
#[cfg(feature = "user")]
use std::{format, string::String};

/// How the data path turns jiffies into CLOCK_MONOTONIC nanoseconds
/// (`Config::jiffy_ns`, `Config::clock_offset_ns`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataPathClock {
    pub jiffy_ns: u64,
    pub offset_ns: u64,
}

impl DataPathClock {
    /// From observed jiffy edges `(jiffies, ktime_ns)`, in order: the tick
    /// length is the kernel's `TICK_NSEC` of the usual `HZ` nearest to the
    /// one measured between the first and the last edge (jiffies advance by
    /// exactly one per `TICK_NSEC`, so the clock then does not drift from
    /// CLOCK_MONOTONIC). Each edge is seen at or after the moment the tick
    /// was due (a late timer interrupt, a sampling gap), never before, so
    /// the offset comes from the least late edge: the clock then reads each
    /// jiffy's due time, and never runs ahead of CLOCK_MONOTONIC. `None`
    /// when fewer than two edges span a tick or no usual `HZ` is within 2%
    /// of the measurement.
    pub fn fit(edges: &[(u64, u64)]) -> Option<Self> {
        let (first, last) = (edges.first()?, edges.last()?);
        let ticks = last.0.checked_sub(first.0).filter(|t| *t > 0)?;
        let measured = last.1.checked_sub(first.1)? / ticks;
        const HZ: [u64; 15] = [
            24, 32, 48, 64, 100, 128, 200, 250, 256, 300, 500, 512, 1000, 1024, 1200,
        ];
        let jiffy_ns = HZ
            .iter()
            .map(|hz| (1_000_000_000 + hz / 2) / hz)
            .min_by_key(|tick| measured.abs_diff(*tick) * 1000 / tick)
            .filter(|tick| measured.abs_diff(*tick) <= tick / 50)?;
        // Offsets in wrapping arithmetic (ktime may be below jiffies ×
        // tick), compared relative to the first edge's.
        let offset = |e: &(u64, u64)| e.0.wrapping_mul(jiffy_ns).wrapping_sub(e.1);
        let base = offset(first);
        let offset_ns = edges
            .iter()
            .map(offset)
            .max_by_key(|o| o.wrapping_sub(base) as i64)?;
        Some(DataPathClock {
            jiffy_ns,
            offset_ns,
        })
    }

    /// The clock's reading at `jiffies`, as the data path computes it.
    pub fn at(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.jiffy_ns)
            .wrapping_sub(self.offset_ns)
    }

    pub fn apply(&self, cfg: &mut Config) {
        cfg.jiffy_ns = self.jiffy_ns;
        cfg.clock_offset_ns = self.offset_ns;
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads, and the data
/// path's clock follows.
#[cfg(feature = "user")]
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC_COARSE in ns: the kernel's tick clock, the one
/// `bpf_ktime_get_coarse_ns` reads. It lags CLOCK_MONOTONIC by up to a
/// tick, and by more while the host delays timer ticks (a busy VM does).
#[cfg(feature = "user")]
pub fn monotonic_coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

#[cfg(feature = "user")]
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Measures the kernel's tick with the `lb_clock` program (loaded): records
/// every jiffy edge it sees for at least 20 ms and fits them
/// ([`DataPathClock::fit`]). An edge counts only when the sample before it
/// is at most 50 µs older (else the thread was held up and the edge's time
/// is not known). Three tries; about 25 to 30 ms each. On error the data
/// path keeps the coarse clock.
#[cfg(feature = "user")]
pub fn calibrate_clock(prog: &aya::programs::Xdp) -> Result<DataPathClock, String> {
    use aya::programs::{TestRun, TestRunOptions};
    const GAP_NS: u64 = 50_000;
    let sample = || -> Result<(u64, u64), String> {
        let input = [0u8; 64];
        let mut out = [0u8; 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|e| format!("running lb_clock: {e}"))?;
        if r.return_value != 2 || (r.data_size_out as usize) < 16 {
            return Err(format!(
                "lb_clock returned action {} and {} bytes; XDP_PASS and 16 expected",
                r.return_value, r.data_size_out
            ));
        }
        let word = |i: usize| u64::from_le_bytes(out[i..i + 8].try_into().unwrap());
        Ok((word(0), word(8)))
    };
    // A sample right after jiffies moved, taken at or after `not_before_ns`.
    let edge = |not_before_ns: u64| -> Result<(u64, u64), String> {
        let start = std::time::Instant::now();
        let mut prev = sample()?;
        loop {
            let s = sample()?;
            if s.0 != prev.0 && s.1 >= not_before_ns && s.1.saturating_sub(prev.1) <= GAP_NS {
                return Ok(s);
            }
            prev = s;
            if start.elapsed() > std::time::Duration::from_secs(2) {
                return Err("no jiffy edge seen in 2 s".into());
            }
        }
    };
    let mut last_err = String::new();
    for _ in 0..3 {
        let mut edges = std::vec![edge(0)?];
        let end = edges[0].1 + 20_000_000;
        while edges.last().is_some_and(|e| e.1 < end) {
            let next = edges.last().map_or(0, |e| e.1 + 1);
            edges.push(edge(next)?);
        }
        match DataPathClock::fit(&edges) {
            Some(c) => return Ok(c),
            None => last_err = format!("no usual tick length fits the jiffy edges {edges:?}"),
        }
    }
    Err(last_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_fit_snaps_to_the_tick_and_tracks_ktime() {
        // HZ=250: 4 ms ticks; edges seen a few microseconds late.
        let first = (4_294_900_000, 1_000_003_000);
        let last = (first.0 + 6, first.1 + 6 * 4_000_000 + 2_500);
        let c = DataPathClock::fit(&[first, last]).unwrap();
        assert_eq!(c.jiffy_ns, 4_000_000);
        // The least late edge (the first, 2.5 µs less late) sets the offset.
        assert_eq!(c.at(first.0), first.1);
        assert_eq!(c.at(last.0), last.1 - 2_500);
        assert_eq!(c.at(first.0 + 250), first.1 + 1_000_000_000);
        // HZ=300: TICK_NSEC is 3333333.
        let c = DataPathClock::fit(&[(100, 0), (109, 9 * 3_333_400)]).unwrap();
        assert_eq!(c.jiffy_ns, 3_333_333);
        // HZ=1024 measured 0.35% high: 1024, not 1000 (2.4% off) though
        // both are within 2%.
        let c = DataPathClock::fit(&[(100, 0), (200, 100 * 980_957)]).unwrap();
        assert_eq!(c.jiffy_ns, 976_563);
        // A tick no kernel has, or none at all, is refused.
        assert_eq!(DataPathClock::fit(&[(100, 0), (110, 10 * 7_000_000)]), None);
        assert_eq!(DataPathClock::fit(&[(100, 0), (100, 5)]), None);
        assert_eq!(DataPathClock::fit(&[]), None);
    }

    #[test]
    fn clock_fit_never_runs_ahead_of_a_late_edge() {
        // HZ=250 with edges seen late by 0 to 3 ms (a delayed timer
        // interrupt): the clock reads each jiffy's due time, the earliest
        // observation, not the last one.
        let due = |j: u64| 7_000_000_000 + (j - 1000) * 4_000_000;
        let late = [20_000u64, 2_000_000, 3_000_000, 1_000, 500_000, 10_000];
        let edges: std::vec::Vec<(u64, u64)> = (0..6)
            .map(|i| (1000 + i, due(1000 + i) + late[i as usize]))
            .collect();
        let c = DataPathClock::fit(&edges).unwrap();
        assert_eq!(c.jiffy_ns, 4_000_000);
        for e in &edges {
            assert!(c.at(e.0) <= e.1, "{e:?} read as {}", c.at(e.0));
        }
        assert_eq!(c.at(1003), due(1003) + 1_000);
    }
}
