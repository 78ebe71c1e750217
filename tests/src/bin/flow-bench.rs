//! `cargo xtask bench --flows`: the flow table at the size users run (1M
//! flows, 100 backends), filled from every CPU. With `LB_EBPF_OBJECT_B`
//! set, a second object is measured the same way in the same run, three
//! times with the order alternating (an A/B of two builds). Both must
//! have this version's map layout (the map writer loads them); an older
//! object is measured with the bench binary of its own version.
//!
//! Per object: fill the table from both CPUs at once (half each), then, on
//! one CPU alone and on both at once: established packets spread over the
//! flows that CPU inserted, the same with every flow's packets on the
//! other CPU (as when RSS moves a flow), and new flows into the full table.
//! Every run is BPF_PROG_TEST_RUN with repeat = 1, followed by the trivial
//! `lb_pass` on the same bytes (the floor, subtracted); the counters are
//! checked, so a miss or a drop cannot pass for a measurement.
use anyhow::{bail, ensure, Context, Result};
use aya::programs::Xdp;
use lb_common::{
    counter, progs, Config, VipInfo, CONFIG_F_GATEWAY_MAC, CONFIG_F_SRC_V4, PROTO_TCP,
};
use lb_tests::bench::{median, pin, trimmed_mean};
use lb_tests::packets::{host_mask, Flow, GATEWAY_MAC};
use lb_tests::{backend, ebpf_object, private_netns, vip_key, Balancer, Sizes, XDP_PASS, XDP_TX};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

const FLOWS: u32 = 1 << 20;
const BACKENDS: u32 = 100;
const SIZES: Sizes = Sizes {
    max_vips: 2,
    max_backends: 128,
    ring_size: 65537,
    flows: FLOWS,
    persist: 1024,
    stateless_vips: 2,
    max_vip_backends: 128,
};
/// Packets per CPU in each measured phase.
const PACKETS: usize = 20_000;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const CPUS: [usize; 2] = [0, 1];

fn main() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("flow-bench needs root; run `cargo xtask bench --flows` as root");
    }
    let a = ebpf_object();
    let b = std::env::var_os("LB_EBPF_OBJECT_B").map(std::path::PathBuf::from);
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    ensure!(ncpu >= 2, "two online CPUs needed, found {ncpu}");
    private_netns()?;
    println!(
        "flow-bench: the flow table made for {FLOWS} flows, {BACKENDS} backends, CPUs {CPUS:?}"
    );
    println!("  A {}", a.display());
    let Some(b) = b else {
        bench_object(&a)?;
        println!();
        println!("ns: kernel-reported per run, net of lb_pass on the same bytes (median of");
        println!("the program minus median of the floor; mean: of the middle 80 %).");
        return Ok(());
    };
    println!("  B {}", b.display());
    println!();
    // Three rounds, the order alternating, so that drift on the host (a
    // VM) falls on both objects alike.
    for round in 1..=3 {
        let mut sides = [("A", &a), ("B", &b)];
        if round % 2 == 0 {
            sides.reverse();
        }
        for (label, object) in sides {
            println!("round {round}, {label}:");
            bench_object(object)?;
            println!();
        }
    }
    println!("ns: kernel-reported per run, net of lb_pass on the same bytes (median of");
    println!("the program minus median of the floor; mean: of the middle 80 %).");
    Ok(())
}

/// The i-th flow: a distinct client address in 100.64.0.0/10.
fn flow(i: u32) -> Flow {
    Flow {
        src: IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i)),
        dst: IpAddr::V4(VIP),
        sport: 10_000 + (i % 50_000) as u16,
        dport: 80,
        proto: PROTO_TCP,
    }
}

fn configure(lb: &mut Balancer) -> Result<()> {
    lb.set_config(Config {
        hash_key: [1, 2],
        ring_size: SIZES.ring_size,
        flags: CONFIG_F_GATEWAY_MAC | CONFIG_F_SRC_V4,
        udp_idle_timeout_ns: 30_000_000_000,
        src_v4: u32::from_ne_bytes([10, 255, 0, 0]),
        src_v4_mask: host_mask(8),
        mtu: 1500,
        gateway_mac: GATEWAY_MAC,
        ..Config::default()
    })?;
    for id in 1..=BACKENDS {
        let addr = Ipv4Addr::new(10, 0, (id / 250) as u8, (id % 250) as u8);
        lb.set_backend(id, backend(IpAddr::V4(addr), 0, 0))?;
    }
    let ring: Vec<u32> = (0..SIZES.ring_size).map(|i| 1 + i % BACKENDS).collect();
    lb.write_ring(0, 0, &ring)?;
    lb.add_vip(vip_key(IpAddr::V4(VIP), 80, PROTO_TCP), VipInfo::default())?;
    Ok(())
}

/// Runs `packet` once; (action, ns).
fn run(prog: &Xdp, packet: &[u8]) -> Result<(u32, u64)> {
    let r = lb_tests::bench::run(prog, packet, 1)?;
    Ok((r.action, r.ns))
}

/// Program and floor ns of each packet of `flows` on `cpu`, with `flags`.
fn measure(
    prog: &Xdp,
    floor: &Xdp,
    cpu: usize,
    flows: &[u32],
    flags: &str,
) -> Result<(Vec<u64>, Vec<u64>)> {
    pin(cpu)?;
    let (mut t, mut f) = (
        Vec::with_capacity(flows.len()),
        Vec::with_capacity(flows.len()),
    );
    for &i in flows {
        let p = flow(i).packet(flags, b"");
        let (action, ns) = run(prog, &p)?;
        ensure!(action == XDP_TX, "flow {i} ({flags}): action {action}");
        t.push(ns);
        let (action, ns) = run(floor, &p)?;
        ensure!(action == XDP_PASS, "lb_pass: action {action}");
        f.push(ns);
    }
    Ok((t, f))
}

/// "net median (mean)" of one CPU's samples.
fn net((t, f): (Vec<u64>, Vec<u64>)) -> String {
    let m = median(&t) as i64 - median(&f) as i64;
    let mean = trimmed_mean(&t) - trimmed_mean(&f);
    format!("{m:>4} ({mean:>5.0})")
}

/// `phase` on CPU 0 alone, then on both CPUs at once; `flows(cpu)` gives
/// each CPU's flows.
fn phase(
    name: &str,
    lb: &Balancer,
    floor: &Xdp,
    flags: &str,
    flows: impl Fn(usize) -> Vec<u32> + Sync,
    check: impl Fn(&[u64]) -> Result<()>,
) -> Result<()> {
    let prog: &Xdp = lb
        .ebpf()
        .program(progs::BALANCER)
        .context("lb_xdp")?
        .try_into()?;
    let before = (0..counter::COUNT)
        .map(|i| lb.counter(i))
        .collect::<Vec<u64>>();
    let alone = measure(prog, floor, CPUS[0], &flows(CPUS[0]), flags)?;
    let both: Vec<(Vec<u64>, Vec<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = CPUS
            .iter()
            .map(|&cpu| {
                let f = &flows;
                s.spawn(move || measure(prog, floor, cpu, &f(cpu), flags))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect::<Result<_>>()
    })?;
    let after = (0..counter::COUNT)
        .map(|i| lb.counter(i))
        .collect::<Vec<u64>>();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    check(&delta).with_context(|| format!("phase `{name}`"))?;
    let mut cols = vec![net(alone)];
    cols.extend(both.into_iter().map(net));
    println!(
        "  {name:<34} alone {}   both at once: cpu0 {}  cpu1 {}",
        cols[0], cols[1], cols[2]
    );
    Ok(())
}

fn bench_object(object: &std::path::Path) -> Result<()> {
    let mut lb = Balancer::load_object(object, SIZES)?;
    configure(&mut lb)?;
    // The whole table in use, as the daemon grows it while a million
    // connections arrive (a quarter of it is in use at first).
    lb.grow_flows(u64::from(FLOWS), false);
    ensure!(
        lb.dp().flow_sets()?.0 == lb_common::flow_sets(FLOWS),
        "the table grown to its full size"
    );
    let pass = Balancer::load_pass()?;
    let floor = lb_tests::bench::program(&pass, progs::PASS)?;
    let prog = lb_tests::bench::program(&lb, progs::BALANCER)?;

    // Fill: CPU c inserts flows c, c+2, c+4, ... (half the table each).
    let start = Instant::now();
    std::thread::scope(|s| {
        for (k, &cpu) in CPUS.iter().enumerate() {
            s.spawn(move || -> Result<()> {
                pin(cpu)?;
                for i in (k as u32..FLOWS).step_by(CPUS.len()) {
                    let (action, _) = run(prog, &flow(i).packet("S", b""))?;
                    ensure!(action == XDP_TX, "fill, flow {i}: action {action}");
                }
                Ok(())
            });
        }
    });
    let fill = start.elapsed();
    // What `lb status` shows as active flows per backend: the daemon's
    // walk of the whole table, timed here at full size.
    let flows_map = match lb.ebpf().map(lb_common::maps::FLOWS) {
        Some(aya::maps::Map::ArrayOfMaps(d)) => d,
        _ => bail!("no FLOWS map"),
    };
    let start = Instant::now();
    let counted = lb_userspace::dataplane::count_flows_in(flows_map, 60_000_000_000, usize::MAX)?;
    let walk = start.elapsed();
    let stored: u64 = counted.values().sum();
    ensure!(
        counted.len() == BACKENDS as usize,
        "flows on {} backends, expected {BACKENDS}",
        counted.len()
    );
    let pause = lb_userspace::daemon::flow_count_pause(walk);
    println!(
        "  fill: {FLOWS} SYNs from 2 CPUs in {:.1} s; {stored} flows stored, counted per backend in {:.0} ms",
        fill.as_secs_f64(),
        walk.as_secs_f64() * 1000.0
    );
    println!(
        "  the daemon would walk it every {:.1} s: {:.1} % of a CPU at rest",
        (walk + pause).as_secs_f64(),
        100.0 * walk.as_secs_f64() / (walk + pause).as_secs_f64()
    );
    // Established traffic over flows that are in the table, spread at
    // random: each CPU's from the flows it inserted itself.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut present: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    let table = lb.flows();
    while present.iter().any(|p| p.len() < PACKETS) {
        let i = rng.u32(0..FLOWS);
        let k = (i % 2) as usize;
        if present[k].len() < PACKETS && table.get(&flow(i).key())?.is_some() {
            present[k].push(i);
        }
    }
    let hits = |n: u64| {
        move |d: &[u64]| -> Result<()> {
            ensure!(
                d[counter::FLOW_HIT as usize] == n && d[counter::NEW_FLOW as usize] == 0,
                "every packet should hit the table: flow_hit {}, new_flow {}",
                d[counter::FLOW_HIT as usize],
                d[counter::NEW_FLOW as usize]
            );
            Ok(())
        }
    };
    let n = PACKETS as u64;
    phase(
        "established, spread over 1M flows",
        &lb,
        floor,
        "A",
        |cpu| present[cpu].clone(),
        hits(3 * n),
    )?;
    phase(
        "established, on the other CPU",
        &lb,
        floor,
        "A",
        |cpu| present[1 - cpu].clone(),
        hits(3 * n),
    )?;
    // New flows into the full table: every insert evicts.
    let next = std::sync::atomic::AtomicU32::new(FLOWS);
    phase(
        "new flows (SYN), full table",
        &lb,
        floor,
        "S",
        |_| {
            let first = next.fetch_add(PACKETS as u32, std::sync::atomic::Ordering::Relaxed);
            (first..first + PACKETS as u32).collect()
        },
        |d| {
            ensure!(
                d[counter::NEW_FLOW as usize] == 3 * n
                    && d[counter::FLOW_INSERT_FAILED as usize] == 0,
                "every SYN should be a stored new flow: new_flow {}, insert failed {}",
                d[counter::NEW_FLOW as usize],
                d[counter::FLOW_INSERT_FAILED as usize]
            );
            Ok(())
        },
    )?;
    println!("  flows stored at the end: {}", lb.flow_count());
    Ok(())
}
