//! Times a health verdict's way into the kernel with the real data plane:
//! `Controller::probe_result` → new Maglev table → mmap write of the idle
//! buffer → flip in the VIPS map. Needs root (CAP_BPF) and the eBPF object
//! (`cargo xtask build-ebpf`); `LB_EBPF_OBJECT` overrides its path. Run with
//! `cargo run --release -p lb-userspace --example control_bench`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lb_common::{
    maps, AddrKey, Backend, BackendStats, Config, VipInfo, VipKey, VipStats, BACKEND_F_UNHEALTHY,
    BACKEND_F_USED,
};
use lb_userspace::config::{self, Pool};
use lb_userspace::controller::{kernel_config, maglev_key, vip_key, Controller, FLIP_GRACE};
use lb_userspace::dataplane::{self, BpfDataPlane, DataPlane, Sizes};
use lb_userspace::health::{Health, ProbeOutcome};
use lb_userspace::maglev::{self, MaglevBackend};

mod scale;
use scale::{scale, scale_verdicts};

const RING: u32 = 65537;
/// Slots for both VIPs (1000 + 100) and a few spare.
const MAX_BACKENDS: u32 = 1104;
/// Timed verdicts per VIP: Down and Up in turn, each pair on another backend.
const VERDICTS: usize = 100;
const WARMUP: usize = 4;
/// Time between a flip and the next verdict. More than `FLIP_GRACE`, so the
/// controller never waits for the grace period and only its work is timed.
const SPACING: Duration = Duration::from_millis(10);

/// The data plane with a stopwatch on the writes a verdict makes.
struct Timed<D> {
    inner: D,
    ring: Duration,
    vip: Duration,
    backend: Duration,
}

impl<D> Timed<D> {
    fn reset(&mut self) {
        (self.ring, self.vip, self.backend) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    }
}

type DpResult<T> = dataplane::Result<T>;

impl<D: DataPlane> DataPlane for Timed<D> {
    fn set_config(&mut self, cfg: &Config) -> DpResult<()> {
        self.inner.set_config(cfg)
    }
    fn set_backend(&mut self, id: u32, b: &Backend) -> DpResult<()> {
        let t = Instant::now();
        let r = self.inner.set_backend(id, b);
        self.backend += t.elapsed();
        r
    }
    fn write_ring(&mut self, vip_id: u32, ring: u8, slots: &[u32]) -> DpResult<()> {
        let t = Instant::now();
        let r = self.inner.write_ring(vip_id, ring, slots);
        self.ring += t.elapsed();
        r
    }
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> DpResult<()> {
        let t = Instant::now();
        let r = self.inner.set_vip(key, info);
        self.vip += t.elapsed();
        r
    }
    fn remove_vip(&mut self, key: &VipKey) -> DpResult<()> {
        self.inner.remove_vip(key)
    }
    fn set_vip_addr(&mut self, key: &AddrKey, flags: u32) -> DpResult<()> {
        self.inner.set_vip_addr(key, flags)
    }
    fn remove_vip_addr(&mut self, key: &AddrKey) -> DpResult<()> {
        self.inner.remove_vip_addr(key)
    }
    fn vips(&self) -> DpResult<Vec<(VipKey, VipInfo)>> {
        self.inner.vips()
    }
    fn backends(&self) -> DpResult<Vec<(u32, Backend)>> {
        self.inner.backends()
    }
    fn vip_stats(&self, vip_id: u32) -> DpResult<VipStats> {
        self.inner.vip_stats(vip_id)
    }
    fn backend_stats(&self, id: u32) -> DpResult<BackendStats> {
        self.inner.backend_stats(id)
    }
    fn all_backend_stats(&self) -> DpResult<Vec<BackendStats>> {
        self.inner.all_backend_stats()
    }
    fn clear_stats(&mut self, vip_id: Option<u32>, backend_id: Option<u32>) -> DpResult<()> {
        self.inner.clear_stats(vip_id, backend_id)
    }
    fn counters(&self) -> DpResult<Vec<u64>> {
        self.inner.counters()
    }
    fn set_limit(&mut self, id: u32, limit: &lb_common::BackendLimit) -> DpResult<()> {
        let t = Instant::now();
        let r = self.inner.set_limit(id, limit);
        self.backend += t.elapsed();
        r
    }
    fn load(&self, id: u32) -> DpResult<u64> {
        self.inner.load(id)
    }
    fn set_nat_addrs(&mut self, vip_id: u32, addrs: &[std::net::IpAddr]) -> DpResult<()> {
        self.inner.set_nat_addrs(vip_id, addrs)
    }
    fn read_ring(&self, vip_id: u32, ring: u8, size: u32) -> DpResult<Vec<u32>> {
        self.inner.read_ring(vip_id, ring, size)
    }
    fn write_chains(&mut self, idx: u8, entries: &[(u32, u64)]) -> DpResult<()> {
        self.inner.write_chains(idx, entries)
    }
    fn read_chains(&self, idx: u8) -> DpResult<Vec<u64>> {
        self.inner.read_chains(idx)
    }
}

/// Removes the instance's pins however `main` ends.
struct Pins(String);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = dataplane::remove_pins(&self.0) {
            eprintln!("removing the pins of `{}`: {e}", self.0);
        }
    }
}

/// `big` (10.100.0.1:80, 1000 backends) and `small` (10.100.0.2:80, 100),
/// each backend with a tcp check (never started: verdicts are synthetic).
fn pool(instance: &str) -> Result<Pool> {
    let mut text = format!(
        "instance: {instance}\ninterfaces: [lo]\nencapsulation:\n  source_v4: 10.255.0.0/24\n\
         tables:\n  maglev_size: {RING}\n  max_vips: 2\n  max_backends: {MAX_BACKENDS}\n  \
         flow_table_size: 1024\nhealth_defaults:\n  kind: tcp\nvips:\n"
    );
    for (name, net, n) in [("big", 1, 1000u32), ("small", 2, 100)] {
        text += &format!(
            "  - name: {name}\n    address: 10.100.0.{net}\n    port: 80\n    protocol: tcp\n    backends:\n"
        );
        for i in 0..n {
            text += &format!("      - address: 10.{net}.{}.{}\n", i / 250, 1 + i % 250);
        }
    }
    config::parse(&text, "control_bench.yaml").map_err(|e| anyhow::anyhow!("{e}"))
}

/// The `q`-quantile of sorted samples (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Runs on CPU 1 (as the packet bench does), so the scheduler does not move us mid-sample.
fn pin_cpu() {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(1, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("(not pinned to CPU 1: {})", std::io::Error::last_os_error());
        }
    }
}

/// The active table of `key`, read back slot by slot from the pinned maps.
fn kernel_table(instance: &str, key: &VipKey) -> Result<Vec<u32>> {
    let dir = dataplane::pin_dir(instance);
    let open = |name: &str| -> Result<aya::maps::Map> {
        let data = aya::maps::MapData::from_pin(dir.join(name))
            .with_context(|| format!("opening the pinned {name}"))?;
        Ok(aya::maps::Map::from_map_data(data)?)
    };
    let vips: aya::maps::HashMap<_, VipKey, VipInfo> = open(maps::VIPS)?.try_into()?;
    let info = vips.get(key, 0).context("VIP not in VIPS")?;
    // Read the way the data path reads it: packed slots in 64-bit
    // elements, each naming a member of the buffer.
    let rings: aya::maps::Array<_, u64> = open(maps::RINGS)?.try_into()?;
    let base = lb_common::ring_base(info.vip_id, info.active_ring, RING);
    let elems = (base..base + lb_common::ring_elems(RING))
        .map(|i| Ok(rings.get(&i, 0)?))
        .collect::<Result<Vec<u64>>>()?;
    // Each slot an index into the buffer's members (`MEMBERS`).
    let members: aya::maps::Array<_, u64> = open(maps::MEMBERS)?.try_into()?;
    (0..RING)
        .map(
            |s| match lb_common::ring_slot(elems[lb_common::ring_elem(s) as usize], s) {
                lb_common::NO_BACKEND => Ok(lb_common::NO_BACKEND),
                i => Ok(members.get(&(info.members + i), 0)? as u32 - 1),
            },
        )
        .collect()
}

struct Row {
    name: String,
    total: Vec<Duration>,
    ring: Vec<Duration>,
    vip: Vec<Duration>,
    backend: Vec<Duration>,
    compute: Vec<Duration>,
    build: Duration,
}

fn main() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("control_bench loads BPF maps and needs root (CAP_BPF); run it with sudo");
    }
    let object_path = std::env::var_os("LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bpfel-unknown-none/release/lb-ebpf")
        });
    let object = std::fs::read(&object_path).with_context(|| {
        format!(
            "reading the eBPF object {}; build it with `cargo xtask build-ebpf` or set LB_EBPF_OBJECT",
            object_path.display()
        )
    })?;
    pin_cpu();
    let instance = format!("lbbench{}", std::process::id());
    let pool = pool(&instance)?;
    let sizes = pool.map_sizes();
    let _pins = Pins(instance.clone());
    let mut dp = BpfDataPlane::load(&object, &instance, sizes, false)
        .with_context(|| format!("loading {}", object_path.display()))?;
    dp.set_config(&kernel_config(&pool, [1, 2]))?;
    let timed = Timed {
        inner: dp,
        ring: Duration::ZERO,
        vip: Duration::ZERO,
        backend: Duration::ZERO,
    };
    let mut ctl = Controller::adopt(timed, RING, sizes.max_vips, sizes.max_backends)?;
    let t = Instant::now();
    let report = ctl.apply(&pool)?;
    let first_apply = t.elapsed();
    ensure!(report.tables_written.len() == 2, "apply wrote {report:?}");

    let failed = ProbeOutcome {
        ok: false,
        detail: "connection refused".into(),
        latency: Duration::from_millis(1),
    };
    let passed = ProbeOutcome {
        ok: true,
        detail: "connected".into(),
        latency: Duration::from_millis(1),
    };
    let mut rows = Vec::new();
    for vip in &pool.vips {
        let key = vip_key(vip);
        let addrs: Vec<_> = vip.backends.iter().map(|b| b.address).collect();
        // Backends far apart in the pool, a different one for each pair.
        let pick = |pair: usize| addrs[(pair * 7919) % addrs.len()];
        let mut row = Row {
            name: format!("{} backends", addrs.len()),
            total: Vec::new(),
            ring: Vec::new(),
            vip: Vec::new(),
            backend: Vec::new(),
            compute: Vec::new(),
            build: Duration::ZERO,
        };
        for n in 0..WARMUP + VERDICTS {
            let addr = pick(n / 2);
            let (outcome, health) = if n % 2 == 0 {
                (&failed, Health::Down)
            } else {
                (&passed, Health::Up)
            };
            let since = ctl.vips[&key].last_flip.map_or(SPACING, |t| t.elapsed());
            if since < SPACING {
                std::thread::sleep(SPACING - since);
            }
            ctl.dp.reset();
            let t = Instant::now();
            let changed = ctl.probe_result(&(key, addr), outcome, health)?;
            ensure!(
                ctl.flush()?.is_none(),
                "a verdict waited for the flip grace"
            );
            let total = t.elapsed();
            ensure!(changed, "verdict {n} on {addr} changed nothing");
            if n < WARMUP {
                continue;
            }
            let dp = &ctl.dp;
            row.total.push(total);
            row.ring.push(dp.ring);
            row.vip.push(dp.vip);
            row.backend.push(dp.backend);
            row.compute
                .push(total.saturating_sub(dp.ring + dp.vip + dp.backend));
        }

        // What the kernel holds now is the full table (every pair ended Up):
        // the same as maglev::build of the pool, read back slot by slot.
        let input: Vec<MaglevBackend> = ctl.vips[&key]
            .backends
            .values()
            .map(|b| MaglevBackend {
                key: maglev_key(b.address),
                slot: b.id,
                weight: b.weight,
            })
            .collect();
        ensure!(input.len() == addrs.len());
        let mut builds: Vec<Duration> = (0..20)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(maglev::build(std::hint::black_box(&input), RING));
                t.elapsed()
            })
            .collect();
        builds.sort_unstable();
        row.build = quantile(&builds, 0.5);
        ensure!(
            kernel_table(&instance, &key)? == maglev::build(&input, RING),
            "{}: the kernel's active table is not the pool's",
            vip.name
        );
        // And one more Down: its slot is UNHEALTHY (its TCP connections
        // stay, its UDP flows move) and gone from the kernel's table.
        let addr = pick(0);
        std::thread::sleep(SPACING);
        ctl.probe_result(&(key, addr), &failed, Health::Down)?;
        ensure!(ctl.flush()?.is_none());
        let id = ctl.vips[&key].backends[&addr].id;
        let slot = ctl.dp.backends()?.into_iter().find(|(i, _)| *i == id);
        ensure!(
            slot.map(|(_, b)| b.flags) == Some(BACKEND_F_USED | BACKEND_F_UNHEALTHY),
            "slot {id} after Down: {slot:?}"
        );
        ensure!(
            !kernel_table(&instance, &key)?.contains(&id),
            "{}: a down backend is still in the kernel's table",
            vip.name
        );
        rows.push(row);
    }

    println!(
        "verdict to table in place (Controller::probe_result on BpfDataPlane), M = {RING}, \
         {VERDICTS} verdicts per VIP (Down/Up in turn) after {WARMUP} warm-up, {} ms apart \
         (> FLIP_GRACE {} ms, so no grace wait is timed)",
        SPACING.as_millis(),
        FLIP_GRACE.as_millis()
    );
    println!(
        "first apply of both VIPs (1100 slots, 2 tables): {} ms",
        ms(first_apply)
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} | {:>11} {:>11} {:>9} {:>11} | {:>11}",
        "pool",
        "median",
        "p99",
        "min",
        "max",
        "build+rest",
        "ring write",
        "set_vip",
        "set_backend",
        "build alone"
    );
    for r in &mut rows {
        for v in [
            &mut r.total,
            &mut r.ring,
            &mut r.vip,
            &mut r.backend,
            &mut r.compute,
        ] {
            v.sort_unstable();
        }
        let med = |v: &[Duration]| ms(quantile(v, 0.5));
        println!(
            "{:<14} {:>9} {:>9} {:>9} {:>9} | {:>11} {:>11} {:>9} {:>11} | {:>11}",
            r.name,
            med(&r.total),
            ms(quantile(&r.total, 0.99)),
            ms(r.total[0]),
            ms(*r.total.last().unwrap()),
            med(&r.compute),
            med(&r.ring),
            med(&r.vip),
            med(&r.backend),
            ms(r.build)
        );
    }
    println!(
        "all times in ms; the four columns after `|` are medians of the parts of each verdict"
    );
    println!("(build+rest = total minus the three map writes: the Maglev build and the controller's own work)");
    let big = &rows[0];
    println!(
        "target: p99 under 10 ms with {}: {}",
        big.name,
        if quantile(&big.total, 0.99) < Duration::from_millis(10) {
            "met"
        } else {
            "NOT met"
        }
    );
    // 100 of the 1000 backends of `big` fail at once: from the first
    // verdict recorded to every one of them out of the kernel's table.
    let key = vip_key(&pool.vips[0]);
    let addrs: Vec<_> = pool.vips[0].backends.iter().map(|b| b.address).collect();
    let failing: Vec<_> = (0..100)
        .map(|i| addrs[(i * 7919 + 1) % addrs.len()])
        .collect();
    std::thread::sleep(SPACING);
    let t = Instant::now();
    for a in &failing {
        ctl.probe_result(&(key, *a), &failed, Health::Down)?;
    }
    while let Some(wait) = ctl.flush()? {
        std::thread::sleep(wait);
    }
    let batch = t.elapsed();
    let table = kernel_table(&instance, &key)?;
    for a in &failing {
        let id = ctl.vips[&key].backends[a].id;
        ensure!(!table.contains(&id), "{a} is still in the table");
    }
    println!(
        "100 of 1000 backends down at once, all out of the table: {} ms (target <= 20 ms: {})",
        ms(batch),
        if batch <= Duration::from_millis(20) {
            "met"
        } else {
            "NOT met"
        }
    );
    drop(ctl);
    println!();
    scale(&object)?;
    println!();
    scale_verdicts(&object)
}
