//! `cargo xtask bench --katran OBJECT`: this balancer's `lb_xdp` and
//! Katran's balancer side by side in one run, interleaved call by call,
//! at the sizes users run: two VIPs (TCP and UDP) of 100 backends each,
//! Maglev tables of 65 537 slots, a flow table of 1 048 576 entries (each
//! CPU's LRU, for Katran), 100 000 established connections stored first.
//!
//! OBJECT is Katran's `balancer.bpf.o`, built by the user from Katran's
//! own sources (nothing of Katran is in this repository). The bench loads
//! it with `bpftool prog loadall` (pinned under /sys/fs/bpf, removed at
//! the end), gives each CPU its LRU map (`lru_mapping`), and fills its
//! VIP, backend, ring and MAC maps with the same set-up as ours.
//!
//! `LB_BENCH_RUNS` (1) repeats the whole measurement, both programs and
//! all maps loaded anew each time, and ends with a summary per case: the
//! host's state moves the ratios between runs, so one run says little.
//! Two more knobs, for finding where the cost of a cold flow goes:
//! `LB_BENCH_HELD` (connections stored first and spread over by the
//! established case; 100 000) and `LB_BENCH_LB_FLOWS` (this balancer's flow
//! table size; 1 048 576, Katran's stays at that).
//!
//! Each call runs one packet through BPF_PROG_TEST_RUN (`repeat = 1`) and
//! takes the kernel's time; right after, `lb_pass` runs on the same bytes
//! (the floor). A case's net cost is its median less its floor's median,
//! and also its trimmed mean (the middle 80 % of the calls) less its
//! floor's.
//! Every call is checked: a VIP packet must come back XDP_TX inside one
//! IPIP header addressed to the gateway MAC, a non-VIP packet XDP_PASS
//! unchanged, from both programs.
use anyhow::{bail, ensure, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;
use lb_common::{
    progs, Config, VipInfo, CONFIG_F_GATEWAY_MAC, CONFIG_F_SRC_V4, PROTO_TCP, PROTO_UDP,
};
use lb_tests::bench::{median, pin_to_last_cpu, program, run, trimmed_mean, RunResult, SIZES};
use lb_tests::packets::{Flow, GATEWAY_MAC};
use lb_tests::{backend, private_netns, vip_key, Balancer, XDP_PASS, XDP_TX};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

const PACKETS: usize = 5000;
const ROUNDS: usize = 10;
const WARMUP: usize = 2000;
const BACKENDS: u32 = 100;
const HELD_FIRST: usize = 200_000;
/// Connections stored between two growths of our table (`grow_flows`).
const GROW_EVERY: usize = 10_000;
const FLOWS: u32 = SIZES.flows;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const NOT_VIP: &str = "10.200.0.1";
/// Katran's compile-time table size (RING_SIZE in its balancer_consts.h).
const KATRAN_RING: u32 = 65537;
/// Katran's `ctl_array` slot of the gateway MAC (MAC_ADDR_POS).
const KATRAN_MAC_POS: u32 = 0;
/// Katran's program, as `bpftool prog loadall` pins it.
const KATRAN_PROG: &str = "balancer_ingress";

/// The number in environment variable `name`, else `default`.
fn env_number(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v}: not a number")),
        Err(_) => Ok(default),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Encap,
    Pass,
}

struct Case {
    name: &'static str,
    expect: Expect,
    packets: Vec<Vec<u8>>,
    /// Per program (lb, Katran): its times and its floor's.
    t: [Vec<u64>; 2],
    f: [Vec<u64>; 2],
}

fn main() -> Result<()> {
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "katran-bench needs root (CAP_BPF, CAP_NET_ADMIN); run `cargo xtask bench --katran OBJECT` as root"
    );
    let object =
        PathBuf::from(std::env::var_os("LB_BENCH_KATRAN").context(
            "LB_BENCH_KATRAN: the path of Katran's balancer.bpf.o, built from its sources",
        )?);
    ensure!(object.exists(), "no Katran object at {}", object.display());
    let held = env_number("LB_BENCH_HELD", 100_000)?;
    let runs = env_number("LB_BENCH_RUNS", 1)?.max(1);
    let cpu = pin_to_last_cpu()?;
    private_netns()?;
    let lb_flows = env_number("LB_BENCH_LB_FLOWS", SIZES.flows as usize)? as u32;
    println!(
        "katran-bench: lb_xdp and Katran's balancer, interleaved call by call (BPF_PROG_TEST_RUN)"
    );
    println!("  Katran object {}", object.display());
    println!(
        "  2 VIPs (TCP, UDP) x {BACKENDS} backends, tables of 65537 slots, flow table {lb_flows} entries \
         (Katran: an LRU of {FLOWS} on CPU {cpu}), {held} connections stored; pinned to CPU {cpu}"
    );
    let mut all: Vec<Vec<Outcome>> = Vec::new();
    for r in 0..runs {
        println!();
        if runs > 1 {
            println!(
                "  run {} of {runs} (both programs and all maps loaded anew)",
                r + 1
            );
        }
        let outcomes = measure(&object, cpu, held, lb_flows)?;
        print_run(&outcomes);
        all.push(outcomes);
    }
    println!();
    println!("net: median less the median of lb_pass on the same bytes, called right after;");
    println!("~: the mean of the middle 80 % of the calls (the kernel's clock reads in steps");
    println!("of about 10 ns, which a median keeps), less the same of lb_pass;");
    println!("{PACKETS} calls per case and program in {ROUNDS} interleaved rounds.");
    if runs > 1 {
        print_summary(&all);
    }
    Ok(())
}

/// One case's result in one run: net ns of lb and Katran, by the median
/// and by the trimmed mean.
struct Outcome {
    name: &'static str,
    /// Each program's median, floor included.
    raw: [u64; 2],
    median: [i64; 2],
    mean: [f64; 2],
}

impl Outcome {
    fn median_ratio(&self) -> f64 {
        self.median[0] as f64 / (self.median[1] as f64).max(1.0)
    }

    fn mean_ratio(&self) -> f64 {
        self.mean[0] / self.mean[1].max(1.0)
    }
}

/// Loads both programs and our maps anew, stores the held connections,
/// and measures every case.
fn measure(object: &Path, cpu: usize, held: usize, lb_flows: u32) -> Result<Vec<Outcome>> {
    let sizes = lb_userspace::dataplane::Sizes {
        flows: lb_flows,
        ..SIZES
    };
    let mut lb = Balancer::load(sizes).context("loading lb_xdp")?;
    let cfg = configure_lb(&mut lb)?;
    let katran = Katran::load(object, cpu)?;
    let pass = Balancer::load_pass()?;
    let floor = program(&pass, progs::PASS)?;
    // The connections of the 100k-flow case, in both tables. Stored
    // faster than the daemon's insert cap allows (`tables.new_flows_per_cpu`,
    // a SYN flood's bound): all of them, with the cap lifted meanwhile.
    // Ours grows as the daemon's census grows it (each pass, about once a
    // second) while connections arrive: here every GROW_EVERY of them.
    lb.set_config(Config {
        new_flow_interval_ns: 0,
        ..cfg
    })?;
    let grows = lb.ebpf().program(progs::FLOW_MOVE).is_some();
    for j in 0..held {
        let p = client(HELD_FIRST + j, PROTO_TCP, 80).packet("S", b"");
        for (k, prog) in [program(&lb, progs::BALANCER)?, &katran.prog]
            .iter()
            .enumerate()
        {
            let r = run(prog, &p, 1)?;
            check(Expect::Encap, &p, &r)
                .with_context(|| format!("storing flow {j} ({})", name(k)))?;
        }
        if grows && ((j + 1) % GROW_EVERY == 0 || j + 1 == held) {
            lb.grow_flows(lb.flow_count() as u64, false);
        }
    }
    lb.set_config(cfg)?;
    let (sets, _) = lb.dp().flow_sets()?;
    println!(
        "  lb's table in use: {} of {} entries, {} flows held",
        sets as u64 * lb_common::FLOW_WAYS as u64,
        lb_common::flow_sets(lb_flows) as u64 * lb_common::FLOW_WAYS as u64,
        lb.flow_count()
    );
    let ours = program(&lb, progs::BALANCER)?;
    let progs = [ours, &katran.prog];
    let warm = Flow::tcp("192.0.2.1", 40000, NOT_VIP, 80).packet("A", b"");
    for _ in 0..WARMUP {
        for prog in progs.iter().chain([&floor]) {
            run(prog, &warm, 1)?;
        }
    }
    let hot_tcp = client(60_000, PROTO_TCP, 80);
    let hot_udp = client(60_001, PROTO_UDP, 53);
    for prog in progs {
        run(prog, &hot_tcp.packet("S", b""), 1)?;
        run(prog, &hot_udp.packet("", b"q"), 1)?;
    }
    let mut cases = [
        case("TCP SYN, a new flow", Expect::Encap, |i| {
            client(i, PROTO_TCP, 80).packet("S", b"")
        }),
        case("TCP established, one hot flow", Expect::Encap, |_| {
            hot_tcp.packet("A", b"")
        }),
        case("TCP established, 100k flows", Expect::Encap, |i| {
            client(HELD_FIRST + (i * 7919 + 13) % held, PROTO_TCP, 80).packet("A", b"")
        }),
        case("UDP, a new flow", Expect::Encap, |i| {
            client(i, PROTO_UDP, 53).packet("", b"q")
        }),
        case("UDP established, one hot flow", Expect::Encap, |_| {
            hot_udp.packet("", b"q")
        }),
        case("non-VIP TCP, passed", Expect::Pass, |i| {
            Flow::tcp("192.0.2.1", 1000 + i as u16, NOT_VIP, 80).packet("A", b"")
        }),
    ];
    let per_round = PACKETS / ROUNDS;
    for round in 0..ROUNDS {
        for c in cases.iter_mut() {
            for k in 0..2 {
                // Who goes first alternates by round.
                let k = (k + round) % 2;
                for p in &c.packets[round * per_round..(round + 1) * per_round] {
                    let r = run(progs[k], p, 1)?;
                    check(c.expect, p, &r).with_context(|| format!("{}, {}", c.name, name(k)))?;
                    c.t[k].push(r.ns);
                    c.f[k].push(run(floor, p, 1)?.ns);
                }
            }
        }
    }
    let outcomes = cases
        .iter()
        .map(|c| Outcome {
            name: c.name,
            raw: [0, 1].map(|k| median(&c.t[k])),
            median: [0, 1].map(|k| median(&c.t[k]) as i64 - median(&c.f[k]) as i64),
            mean: [0, 1].map(|k| trimmed_mean(&c.t[k]) - trimmed_mean(&c.f[k])),
        })
        .collect();
    drop(katran);
    Ok(outcomes)
}

/// One run's table: each program's median, then net of the floor by the
/// median and by the trimmed mean (`~`), and lb's over Katran's.
fn print_run(outcomes: &[Outcome]) {
    println!(
        "  {:<32} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "case (ns, median)",
        "lb",
        "Katran",
        "lb net",
        "K net",
        "lb/K",
        "lb net~",
        "K net~",
        "lb/K~"
    );
    for o in outcomes {
        println!(
            "  {:<32} {:>8} {:>8} {:>8} {:>8} {:>8.2} {:>8.1} {:>8.1} {:>8.3}",
            o.name,
            o.raw[0],
            o.raw[1],
            o.median[0],
            o.median[1],
            o.median_ratio(),
            o.mean[0],
            o.mean[1],
            o.mean_ratio()
        );
    }
}

/// Over every run, per case: lb's cost over Katran's by the trimmed mean
/// and by the median (mean, lowest, highest), and how many runs were
/// above #13's 0.8.
fn print_summary(all: &[Vec<Outcome>]) {
    println!();
    println!("summary over {} runs, lb / Katran net:", all.len());
    println!(
        "  {:<32} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "case", "mean~", "lowest~", "highest~", "> 0.8 ~", "highest", "> 0.8"
    );
    for (i, first) in all[0].iter().enumerate() {
        let by_mean: Vec<f64> = all.iter().map(|r| r[i].mean_ratio()).collect();
        let by_median: Vec<f64> = all.iter().map(|r| r[i].median_ratio()).collect();
        let above = |v: &[f64]| v.iter().filter(|&&x| x > 0.8).count();
        let highest = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max);
        println!(
            "  {:<32} {:>8.3} {:>8.3} {:>8.3} {:>8} {:>8.2} {:>8}",
            first.name,
            by_mean.iter().sum::<f64>() / by_mean.len() as f64,
            by_mean.iter().cloned().fold(f64::MAX, f64::min),
            highest(&by_mean),
            above(&by_mean),
            highest(&by_median),
            above(&by_median),
        );
    }
    println!("~: by the trimmed means; the last two columns by the medians.");
}

fn name(k: usize) -> &'static str {
    ["lb", "Katran"][k]
}

fn case(name: &'static str, expect: Expect, packet: impl Fn(usize) -> Vec<u8>) -> Case {
    Case {
        name,
        expect,
        packets: (0..PACKETS).map(packet).collect(),
        t: [Vec::new(), Vec::new()],
        f: [Vec::new(), Vec::new()],
    }
}

/// The i-th distinct client (as the packet bench's).
fn client(i: usize, proto: u8, dport: u16) -> Flow {
    Flow {
        src: IpAddr::V4(Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1)),
        dst: IpAddr::V4(VIP),
        sport: 10000 + (i % 50000) as u16,
        dport,
        proto,
    }
}

fn backend_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// Ours: the kernel settings the daemon derives from a pool file with
/// the defaults (the flow-insert cap, the UDP idle timeout and the rest),
/// IPIP with the gateway MAC; the TCP VIP's backends in slots 1..=100, the
/// UDP VIP's in 101..=200 (the same addresses).
fn configure_lb(lb: &mut Balancer) -> Result<Config> {
    let pool = lb_userspace::config::parse(
        "instance: bench\ninterfaces: [eth0]\nencapsulation:\n  source_v4: 10.255.0.0/24\n  \
         gateway_mac: \"02:00:00:00:00:fe\"\nvips:\n  - name: w\n    address: 10.100.0.1\n    port: 80\n    \
         protocol: tcp\n    backends:\n      - address: 10.0.1.1\n",
        "bench.yaml",
    )
    .map_err(|e| anyhow::anyhow!("the bench's pool file: {e}"))?;
    let cfg = lb_userspace::controller::kernel_config(
        &pool,
        [0x5eed_0123_4567_89ab, 0x0ddb_a11c_afe0_f00d],
    );
    ensure!(
        cfg.gateway_mac == GATEWAY_MAC
            && cfg.flags & (CONFIG_F_GATEWAY_MAC | CONFIG_F_SRC_V4)
                == CONFIG_F_GATEWAY_MAC | CONFIG_F_SRC_V4,
        "the pool's gateway MAC should be the packets' one"
    );
    let cfg = Config {
        ring_size: SIZES.ring_size,
        ..cfg
    };
    lb.set_config(cfg)?;
    for (vip_id, port, proto) in [(0u32, 80, PROTO_TCP), (1, 53, PROTO_UDP)] {
        let first = 1 + vip_id * BACKENDS;
        for i in 0..BACKENDS {
            lb.set_backend(first + i, backend(IpAddr::V4(backend_addr(i)), 0, vip_id))?;
        }
        let ring: Vec<u32> = (0..SIZES.ring_size).map(|s| first + s % BACKENDS).collect();
        lb.write_ring(vip_id, 0, &ring)?;
        lb.add_vip(
            vip_key(IpAddr::V4(VIP), port, proto),
            VipInfo {
                vip_id,
                ..VipInfo::default()
            },
        )?;
    }
    Ok(cfg)
}

/// Katran's balancer, loaded by bpftool and pinned under `pin` (removed
/// when dropped).
struct Katran {
    pin: PathBuf,
    prog: Xdp,
}

impl Katran {
    fn load(object: &Path, cpu: usize) -> Result<Katran> {
        let pin = PathBuf::from(format!(
            "/sys/fs/bpf/lb-katran-bench-{}",
            std::process::id()
        ));
        let k = Katran::pinned(object, &pin).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&pin);
        })?;
        k.configure(cpu).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&k.pin);
        })?;
        Ok(k)
    }

    fn pinned(object: &Path, pin: &Path) -> Result<Katran> {
        let p = pin.display();
        sh(&format!(
            "mkdir -p {p} && bpftool prog loadall {} {p}/progs type xdp pinmaps {p}/maps",
            object.display()
        ))
        .context("loading Katran's object with bpftool")?;
        let prog = Xdp::from_pin(
            pin.join("progs").join(KATRAN_PROG),
            XdpAttachType::Interface,
        )
        .with_context(|| format!("Katran's program {KATRAN_PROG}"))?;
        Ok(Katran {
            pin: pin.to_path_buf(),
            prog,
        })
    }

    fn map(&self, name: &str) -> Result<Map> {
        let m = MapData::from_pin(self.pin.join("maps").join(name))
            .with_context(|| format!("Katran's map {name}"))?;
        Ok(Map::from_map_data(m)?)
    }

    /// The same VIPs and backends as ours, and each CPU's LRU of FLOWS entries.
    fn configure(&self, cpu: usize) -> Result<()> {
        let p = self.pin.display();
        let cpus = std::thread::available_parallelism()?.get().max(cpu + 1);
        for c in 0..cpus {
            sh(&format!(
                "bpftool map create {p}/lru{c} type lru_hash key 40 value 16 entries {FLOWS} name katran_lru{c} \
                 && bpftool map update pinned {p}/maps/lru_mapping key {c} 0 0 0 value pinned {p}/lru{c}"
            ))
            .context("giving Katran's CPUs their LRU")?;
        }
        let mut ctl: Array<MapData, [u8; 8]> = self.map("ctl_array")?.try_into()?;
        let mut mac = [0u8; 8];
        mac[..6].copy_from_slice(&GATEWAY_MAC);
        ctl.set(KATRAN_MAC_POS, mac, 0)?;
        let mut reals: Array<MapData, [u8; 20]> = self.map("reals")?.try_into()?;
        for i in 0..BACKENDS {
            let mut r = [0u8; 20];
            r[..4].copy_from_slice(&backend_addr(i).octets());
            reals.set(1 + i, r, 0)?;
        }
        let mut vips: HashMap<MapData, [u8; 20], [u8; 8]> = self.map("vip_map")?.try_into()?;
        let mut rings: Array<MapData, u32> = self.map("ch_rings")?.try_into()?;
        for (vip_num, port, proto) in [(0u32, 80u16, PROTO_TCP), (1, 53, PROTO_UDP)] {
            let mut key = [0u8; 20];
            key[..4].copy_from_slice(&VIP.octets());
            key[16..18].copy_from_slice(&port.to_be_bytes());
            key[18] = proto;
            let mut meta = [0u8; 8];
            meta[4..].copy_from_slice(&vip_num.to_ne_bytes());
            vips.insert(key, meta, 0)?;
            for s in 0..KATRAN_RING {
                rings.set(vip_num * KATRAN_RING + s, 1 + s % BACKENDS, 0)?;
            }
        }
        Ok(())
    }
}

impl Drop for Katran {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

/// A VIP packet: XDP_TX, the input inside one IPIP header to one of the
/// backends, to the gateway MAC. Anything else: XDP_PASS, untouched.
fn check(e: Expect, input: &[u8], r: &RunResult) -> Result<()> {
    let d = &r.data;
    match e {
        Expect::Encap => {
            let to_backend = d.len() >= 34 && d[30] == 10 && d[31] == 0 && (1..=2).contains(&d[32]);
            ensure!(
                r.action == XDP_TX
                    && d.len() == input.len() + 20
                    && d[..6] == GATEWAY_MAC
                    && d[14 + 9] == 4
                    && to_backend
                    && d[34..] == input[14..],
                "expected the input in IPIP to a backend, to the gateway MAC; got action {} and {} bytes",
                r.action,
                d.len()
            );
        }
        Expect::Pass => ensure!(
            r.action == XDP_PASS && d[..] == input[..],
            "expected XDP_PASS with the bytes untouched, got action {}",
            r.action
        ),
    }
    Ok(())
}

fn sh(cmd: &str) -> Result<()> {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
