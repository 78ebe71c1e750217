//! `cargo xtask bench --rest`: the real daemon with a full flow table and no
//! traffic. It starts `lb run` as the README says (`nsenter --net`, a pool
//! file) in a namespace of its own with 100 backends and a 1M-entry flow
//! table, fills the pinned table with a million live flows, then measures
//! what an operator sees: how long `lb status` takes, whether it counts
//! every flow, and the daemon's CPU while nothing happens.
//!
//! With the argument `probes` (`cargo xtask bench --probes`): the daemon
//! with 5000 backends, each probed over TCP every 200 ms (one local
//! listener answers for all of them), for the probes it sustains, its CPU,
//! its sockets and what TIME_WAIT it leaves.
use anyhow::{bail, ensure, Context, Result};
use aya::maps::MapData;
use lb_common::{FlowKey, FlowValue, AF_INET, PROTO_TCP};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NS: &str = "lbrest";
const INSTANCE: &str = "lbrest";
const FLOWS: u32 = 1 << 20;
const BACKENDS: u32 = 100;
const CPU_WINDOW: Duration = Duration::from_secs(30);

fn sh(cmd: &str) -> Result<()> {
    let st = Command::new("sh").args(["-c", cmd]).status()?;
    ensure!(st.success(), "{cmd}: {st}");
    Ok(())
}

fn lb_bin() -> PathBuf {
    std::env::var_os("LB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/lb"))
}

struct Cleanup(Option<Child>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(lb_bin())
            .args(["stop", "--instance", INSTANCE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
}

/// `lb status --all --json`: every backend listed.
fn status(socket: &Path) -> Result<(Duration, serde_json::Value)> {
    status_as(socket, &["--all"])
}

/// `lb status --json` with `args`, timed.
fn status_as(socket: &Path, args: &[&str]) -> Result<(Duration, serde_json::Value)> {
    let start = Instant::now();
    let out = Command::new(lb_bin())
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .args(args)
        .output()?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "lb status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((took, serde_json::from_slice(&out.stdout)?))
}

/// An empty temporary directory `name`, and a fresh namespace `NS` with a
/// veth `eth0` (then the shell commands `extra`); an earlier run's
/// namespace and instance are removed first.
fn fresh(name: &str, extra: &str) -> Result<(PathBuf, Cleanup)> {
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
    let _ = Command::new(lb_bin())
        .args(["stop", "--instance", INSTANCE])
        .output();
    sh(&format!(
        "ip netns add {NS} && ip -n {NS} link add eth0 type veth peer name eth1 \
         && ip -n {NS} link set lo up && ip -n {NS} link set eth0 up && ip -n {NS} link set eth1 up \
         && ip -n {NS} addr add 10.0.0.1/16 dev eth0 \
         && ip netns exec {NS} sysctl -qw net.ipv4.ip_forward=1{extra}"
    ))?;
    Ok((dir, Cleanup(None)))
}

/// `lb run` as the README says (`nsenter --net`, a pool file) with one VIP
/// checked by `health` over `backends` (pool-file lines) and `tables`;
/// waits until it answers. Its pid, control socket and start.
fn run_daemon(
    dir: &Path,
    cleanup: &mut Cleanup,
    tables: &str,
    health: &str,
    backends: &str,
) -> Result<(u32, PathBuf, Instant)> {
    let socket = dir.join("lb.sock");
    let pool = format!(
        "instance: {INSTANCE}\ninterfaces: [eth0]\nxdp_mode: generic\n\
         encapsulation:\n  source_v4: 10.255.0.0/24\n\
         tables:\n  {tables}\n\
         hash_secret_file: {}/secret\ncontrol_socket: {}\n\
         vips:\n  - name: web\n    address: 10.100.0.1\n    port: 80\n    protocol: tcp\n\
         \x20   health_check: {health}\n    backends:\n{backends}",
        dir.display(),
        socket.display()
    );
    spawn_daemon(dir, cleanup, &pool, &socket)
}

/// `lb run` with pool file `pool` (its control socket `socket`), started
/// as the README says; waits until it answers.
fn spawn_daemon(
    dir: &Path,
    cleanup: &mut Cleanup,
    pool: &str,
    socket: &Path,
) -> Result<(u32, PathBuf, Instant)> {
    let pool_path = dir.join("pool.yaml");
    std::fs::write(&pool_path, pool)?;
    let log = std::fs::File::create(dir.join("lb.log"))?;
    let started = Instant::now();
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NS}"))
        .arg(lb_bin())
        .args(["run", "--config"])
        .arg(&pool_path)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    cleanup.0 = Some(child);
    while status_as(socket, &["--summary"]).is_err() {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "lb run did not answer: {}",
            std::fs::read_to_string(dir.join("lb.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((pid, socket.to_path_buf(), started))
}

fn main() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("rest-bench needs root; run `cargo xtask bench --rest` (or --probes) as root");
    }
    match std::env::args().nth(1).as_deref() {
        Some("probes") => return probes(),
        Some("scale") => return scale(),
        _ => {}
    }
    let (dir, mut cleanup) = fresh("lb-rest-bench", "")?;
    let backends: String = (0..BACKENDS)
        .map(|i| format!("      - address: 10.0.{}.{}\n", 1 + i / 200, 1 + i % 200))
        .collect();
    // All of the table in use from the start: the million flows below are
    // written in at once, where a daemon would have grown the table while
    // they arrived.
    let tables =
        format!("flow_table_size: {FLOWS}\n  flow_table_grows: false\n  max_backends: 256");
    let (pid, socket, started) =
        run_daemon(&dir, &mut cleanup, &tables, "{ kind: none }", &backends)?;
    println!(
        "rest-bench: lb run serving in {:.2} s (1 VIP, {BACKENDS} backends, flow table {FLOWS})",
        started.elapsed().as_secs_f64()
    );
    // The backends' slots, from the pinned table the daemon wrote.
    let pins = Path::new("/sys/fs/bpf").join(INSTANCE);
    let backends_map =
        aya::maps::Map::from_map_data(MapData::from_pin(pins.join(lb_common::maps::BACKENDS))?)?;
    let arr: aya::maps::Array<_, lb_common::Backend> = aya::maps::Array::try_from(backends_map)?;
    let slots: Vec<(u32, lb_common::Backend)> = (0..256u32)
        .filter_map(|i| arr.get(&i, 0).ok().map(|b| (i, b)))
        .filter(|(_, b)| b.flags & lb_common::BACKEND_F_USED != 0)
        .collect();
    ensure!(
        slots.len() == BACKENDS as usize,
        "{} backend slots in use",
        slots.len()
    );
    // A million live flows, as the data path stores them.
    let flows = lb_userspace::dataplane::pinned_flow_table(INSTANCE)?;
    let now = lb_common::clock::monotonic_ns();
    let fill = Instant::now();
    let mut all = Vec::with_capacity(FLOWS as usize);
    for i in 0..FLOWS {
        let (id, b) = &slots[(i % BACKENDS) as usize];
        let key = FlowKey {
            src: [u32::from_ne_bytes((0x6440_0000 + i).to_be_bytes()), 0, 0, 0],
            dst: [u32::from_ne_bytes([10, 100, 0, 1]), 0, 0, 0],
            sport: (10_000 + (i % 50_000) as u16).to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            family: AF_INET,
            ..FlowKey::default()
        };
        let value = FlowValue {
            backend: *id,
            vip_id: b.vip_id as u32,
            last_seen_ns: now,
            gen: b.gen,
            ..FlowValue::default()
        };
        all.push((key, value));
    }
    flows.insert_all(all)?;
    // A set already full takes the place of its oldest flow: about 1 in
    // 100 at the size the table is made for.
    let stored = flows.len()? as u64;
    println!(
        "  {FLOWS} flows written into the pinned table in {:.1} s, {stored} stored",
        fill.elapsed().as_secs_f64()
    );
    // Wait for the daemon's next count, then time `lb status`.
    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = loop {
        let (_, st) = status(&socket)?;
        let n: u64 = st["vips"][0]["backends"]
            .as_array()
            .context("backends")?
            .iter()
            .map(|b| b["active_flows"].as_u64().unwrap_or(0))
            .sum();
        if n >= stored || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        counted == stored,
        "lb status counted {counted} of the {stored} flows stored"
    );
    let (median_ms, max_ms) = status_times(&socket, 10, &[])?;
    println!(
        "  lb status --json: {counted} active flows shown; median {:.1} ms, max {:.1} ms (10 calls)",
        median_ms,
        max_ms
    );
    let start = Instant::now();
    let out = Command::new(lb_bin())
        .args(["status", "--socket"])
        .arg(&socket)
        .output()?;
    ensure!(out.status.success());
    println!(
        "  lb status (table): {:.1} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    // The daemon at rest: no traffic, no probes, a full table.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t0 = cpu_ticks(pid)?;
    std::thread::sleep(CPU_WINDOW);
    let t1 = cpu_ticks(pid)?;
    let share = (t1 - t0) as f64 / hz / CPU_WINDOW.as_secs_f64() * 100.0;
    println!(
        "  daemon at rest over {} s: {share:.1} % of one CPU; resident memory {} MiB",
        CPU_WINDOW.as_secs(),
        rss_kib(pid)? / 1024
    );
    drop(cleanup);
    Ok(())
}

const PROBED: u32 = 5000;
const PROBE_WINDOW: Duration = Duration::from_secs(30);

/// Runs `f` on a thread inside network namespace `NS`.
fn in_ns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let fd = std::fs::File::open(format!("/run/netns/{NS}")).expect("netns");
        use std::os::fd::AsRawFd;
        assert_eq!(
            unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
}

fn sockets_in_ns(state: &str) -> Result<usize> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NS}"))
        .args(["ss", "-Htan", "state", state])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// `n` calls of `lb status --json` with `args`: the median and the
/// longest, in ms.
fn status_times(socket: &Path, n: usize, args: &[&str]) -> Result<(f64, f64)> {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| status_as(socket, args).map(|s| s.0))
        .collect::<Result<_>>()?;
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((ms(times[n / 2]), ms(times[n - 1])))
}

/// A fresh namespace whose 10.1.0.0/16 is local (one route), so that one
/// listener on port 80 answers every probe to a backend there; the
/// listener's count of accepted connections.
fn probed_namespace(
    name: &str,
) -> Result<(
    PathBuf,
    Cleanup,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
)> {
    let (dir, cleanup) = fresh(
        name,
        &format!(
            " && ip -n {NS} route add local 10.1.0.0/16 dev lo \
             && ip netns exec {NS} sysctl -qw net.core.somaxconn=65535"
        ),
    )?;
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    in_ns(move || {
        let l = std::net::TcpListener::bind("0.0.0.0:80").expect("listener");
        ready_tx.send(()).unwrap();
        for c in l.incoming() {
            if c.is_ok() {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    ready_rx.recv()?;
    Ok((dir, cleanup, accepted))
}

/// What `PROBE_WINDOW` of health checks cost: probes the listener
/// answered, the daemon's CPU, TCP sockets in TIME_WAIT every 5 s.
struct ProbeWindow {
    probes_per_s: f64,
    cpu_percent: f64,
    time_wait: Vec<usize>,
    secs: f64,
}

impl ProbeWindow {
    /// "over N s: P probes/s answered (`what`); daemon C % of one CPU".
    fn line(&self, what: &str) -> String {
        format!(
            "  over {:.0} s: {:.0} probes/s answered ({what}); daemon {:.1} % of one CPU",
            self.secs, self.probes_per_s, self.cpu_percent
        )
    }
}

fn probe_window(pid: u32, accepted: &std::sync::atomic::AtomicU64) -> Result<ProbeWindow> {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (a0, t0, w0) = (
        accepted.load(std::sync::atomic::Ordering::Relaxed),
        cpu_ticks(pid)?,
        Instant::now(),
    );
    let mut time_wait = Vec::new();
    while w0.elapsed() < PROBE_WINDOW {
        std::thread::sleep(Duration::from_secs(5));
        time_wait.push(sockets_in_ns("time-wait")?);
    }
    let (a1, t1, secs) = (
        accepted.load(std::sync::atomic::Ordering::Relaxed),
        cpu_ticks(pid)?,
        w0.elapsed().as_secs_f64(),
    );
    Ok(ProbeWindow {
        probes_per_s: (a1 - a0) as f64 / secs,
        cpu_percent: (t1 - t0) as f64 / hz / secs * 100.0,
        time_wait,
        secs,
    })
}

fn probes() -> Result<()> {
    let (dir, mut cleanup, accepted) = probed_namespace("lb-probe-bench")?;
    let backends: String = (0..PROBED)
        .map(|i| format!("      - address: 10.1.{}.{}\n", i / 250, 1 + i % 250))
        .collect();
    let (pid, socket, started) = run_daemon(
        &dir,
        &mut cleanup,
        "flow_table_size: 65536\n  max_backends: 8192",
        "{ kind: tcp, interval: 200ms, timeout: 200ms }",
        &backends,
    )?;
    println!(
        "probe-bench: lb run serving in {:.2} s (1 VIP, {PROBED} backends, tcp checks every 200 ms)",
        started.elapsed().as_secs_f64()
    );
    // Every backend up (rise 2 by default).
    let deadline = Instant::now() + Duration::from_secs(30);
    let up = loop {
        let (_, st) = status(&socket)?;
        let up = st["vips"][0]["backends"]
            .as_array()
            .context("backends")?
            .iter()
            .filter(|b| b["health"] == "up")
            .count();
        if up == PROBED as usize || Instant::now() > deadline {
            break up;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "  {up} of {PROBED} backends up {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    ensure!(up == PROBED as usize, "not every backend came up");
    let w = probe_window(pid, &accepted)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let (median_ms, _) = status_times(&socket, 5, &["--all"])?;
    let (default_ms, _) = status_times(&socket, 5, &[])?;
    let (_, st) = status(&socket)?;
    let down = st["vips"][0]["backends"]
        .as_array()
        .context("backends")?
        .iter()
        .filter(|b| b["health"] != "up")
        .count();
    println!(
        "{}, {} MiB resident, {fds} open fds",
        w.line(&format!("of {:.0} due", f64::from(PROBED) / 0.2)),
        rss_kib(pid)? / 1024
    );
    println!(
        "  TCP sockets in TIME_WAIT in the namespace, every 5 s: {:?}; backends not up at the end: {down}",
        w.time_wait
    );
    println!(
        "  lb status --all --json with {PROBED} backends: median {:.1} ms; lb status --json (counts): {:.1} ms",
        median_ms, default_ms
    );
    drop(cleanup);
    Ok(())
}

/// `cargo xtask bench --scale`: VIPs and backend slots.
const SCALE_VIPS: u32 = 512;
/// Backends per VIP: 1000 (512 000 slots), or `LB_SCALE_BACKENDS`.
fn scale_backends() -> u32 {
    std::env::var("LB_SCALE_BACKENDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// The scale bench's pool file: `SCALE_VIPS` VIPs of `scale_backends()`
/// backends each (the same addresses behind every VIP, each VIP its own
/// slots), every other backend at `weight` and the rest at 100 (so that
/// a change of `weight` changes every table), health checks of kind
/// `check`, a 1M-entry flow table.
fn scale_pool(dir: &Path, socket: &Path, weight: u32, check: &str) -> String {
    let mut pool = format!(
        "instance: {INSTANCE}\ninterfaces: [eth0]\nxdp_mode: generic\n\
         encapsulation:\n  source_v4: 10.255.0.0/24\n\
         tables:\n  max_vips: {SCALE_VIPS}\n  max_backends: {}\n  max_backends_per_vip: {}\n  \
         flow_table_size: {FLOWS}\n\
         hash_secret_file: {}/secret\ncontrol_socket: {}\nvips:\n",
        SCALE_VIPS * scale_backends(),
        scale_backends(),
        dir.display(),
        socket.display()
    );
    for v in 0..SCALE_VIPS {
        pool.push_str(&format!(
            "  - name: v{v}\n    address: 10.100.{}.{}\n    port: 80\n    protocol: tcp\n    \
             health_check: {{ kind: {check} }}\n    backends:\n",
            v / 256,
            v % 256
        ));
        for b in 0..scale_backends() {
            pool.push_str(&format!(
                "      - {{ address: 10.1.{}.{}, weight: {} }}\n",
                b / 250,
                1 + b % 250,
                if b % 2 == 0 { weight } else { 100 }
            ));
        }
    }
    pool
}

/// Memory the process's BPF maps hold (`memlock` of each map descriptor),
/// with the flow table's chunks: the inner maps of an array of maps have
/// no descriptor of their own, each is one 32 KiB allocation.
fn maps_memlock(pid: u32) -> Result<u64> {
    const ARRAY_OF_MAPS: u64 = 12;
    // What the kernel allocates for one chunk (`lb_common::FlowChunk`, at
    // most 32 KiB with its header).
    const CHUNK_BYTES: u64 = 32768;
    let chunk_value = std::mem::size_of::<lb_common::FlowChunk>() as u64;
    let field = |text: &str, name: &str| -> Option<u64> {
        let l = text.lines().find(|l| l.starts_with(name))?;
        l.split_whitespace().nth(1)?.parse().ok()
    };
    // Each map once, however many descriptors the daemon holds for it.
    let mut maps = std::collections::HashMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let text = std::fs::read_to_string(e?.path()).unwrap_or_default();
        let Some(id) = field(&text, "map_id:") else {
            continue;
        };
        // A chunk the daemon holds open is counted with its table below.
        if field(&text, "value_size:") == Some(chunk_value) {
            continue;
        }
        let mut bytes = field(&text, "memlock:").unwrap_or(0);
        if field(&text, "map_type:") == Some(ARRAY_OF_MAPS) {
            bytes += field(&text, "max_entries:").unwrap_or(0) * CHUNK_BYTES;
        }
        maps.insert(id, bytes);
    }
    Ok(maps.values().sum())
}

/// A count summed over every VIP of a `--summary` answer
/// (`counts.backends`, `counts.up`, `counts.weight`, ...).
fn summed(st: &serde_json::Value, count: &str) -> u64 {
    st["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["counts"][count].as_u64())
        .sum()
}

/// Every backend of every VIP in `st`: (count, how many at `weight`).
fn backends_at(st: &serde_json::Value, weight: u64) -> (usize, usize) {
    let all: Vec<&serde_json::Value> = st["vips"]
        .as_array()
        .map(|v| {
            v.iter()
                .flat_map(|v| v["backends"].as_array().into_iter().flatten())
                .collect()
        })
        .unwrap_or_default();
    let at = all
        .iter()
        .filter(|b| b["weight"].as_u64() == Some(weight))
        .count();
    (all.len(), at)
}

fn scale() -> Result<()> {
    let (dir, mut cleanup, accepted) = probed_namespace("lb-scale-bench")?;
    let socket = dir.join("lb.sock");
    let per_vip = scale_backends();
    let slots = (SCALE_VIPS * per_vip) as usize;
    let (pid, socket, started) = spawn_daemon(
        &dir,
        &mut cleanup,
        &scale_pool(&dir, &socket, 100, "none"),
        &socket,
    )?;
    // Serving: every VIP and backend in place, as each VIP's counts say
    // (listing every backend would time this bench's own parse of 130 MB).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, st) = status_as(&socket, &["--summary"])?;
        let vips = st["vips"].as_array().map_or(0, Vec::len);
        if vips == SCALE_VIPS as usize && summed(&st, "backends") == slots as u64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not every VIP and backend in place after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "scale-bench: {SCALE_VIPS} VIPs x {per_vip} backends ({slots} slots), flow table {FLOWS}"
    );
    let cold = started.elapsed();
    let (_, st) = status(&socket)?;
    ensure!(
        backends_at(&st, 100) == (slots, slots),
        "not every backend listed at weight 100 once counted: {:?}",
        backends_at(&st, 100)
    );
    println!(
        "  cold start to serving every VIP: {:.2} s",
        cold.as_secs_f64()
    );
    println!(
        "  BPF maps: {} MiB (memlock of the daemon's map descriptors)",
        maps_memlock(pid)? / (1 << 20)
    );
    // A full reload: every other backend's weight changed, so every table
    // differs and is written.
    let at_200 = u64::from(SCALE_VIPS * per_vip.div_ceil(2));
    let pool = scale_pool(&dir, &socket, 200, "none");
    let tmp = dir.join("pool.yaml.tmp");
    std::fs::write(&tmp, pool)?;
    let reload = Instant::now();
    std::fs::rename(&tmp, dir.join("pool.yaml"))?;
    // The status calls made meanwhile: how long the daemon kept them
    // waiting while it read and applied the file.
    let mut during = Vec::new();
    loop {
        // Each VIP's weights summed: every other backend at 200.
        let (took, st) = status_as(&socket, &["--summary"])?;
        during.push(took);
        if summed(&st, "weight") == 200 * at_200 + 100 * (slots as u64 - at_200) {
            break;
        }
        ensure!(
            reload.elapsed() < Duration::from_secs(120),
            "the reload did not apply in 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let reloaded = reload.elapsed();
    let (_, st) = status(&socket)?;
    ensure!(
        backends_at(&st, 200) == (slots, at_200 as usize),
        "not every other backend listed at weight 200 once summed: {:?}",
        backends_at(&st, 200)
    );
    during.sort();
    println!(
        "  full reload (every other weight changed, {SCALE_VIPS} tables written), file to status: {:.2} s; \
         lb status --summary meanwhile: {} calls, median {:.0} ms, max {:.0} ms",
        reloaded.as_secs_f64(),
        during.len(),
        during[during.len() / 2].as_secs_f64() * 1000.0,
        during[during.len() - 1].as_secs_f64() * 1000.0
    );
    for (args, what) in [
        (&[][..], "lb status --json (each VIP's counts)"),
        (&["--vip", "v0"][..], "lb status --vip v0 --json"),
        (&["--all"][..], "lb status --all --json"),
    ] {
        let (median_ms, max_ms) = status_times(&socket, 10, args)?;
        println!(
            "  {what} ({slots} backends): median {:.1} ms, max {:.1} ms (10 calls)",
            median_ms, max_ms
        );
    }
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t0 = cpu_ticks(pid)?;
    std::thread::sleep(CPU_WINDOW);
    let t1 = cpu_ticks(pid)?;
    println!(
        "  daemon at rest over {} s: {:.1} % of one CPU; resident memory {} MiB",
        CPU_WINDOW.as_secs(),
        (t1 - t0) as f64 / hz / CPU_WINDOW.as_secs_f64() * 100.0,
        rss_kib(pid)? / 1024
    );
    // Health checks on every backend at the default interval: the same
    // addresses behind every VIP, each probed once.
    std::fs::write(&tmp, scale_pool(&dir, &socket, 200, "tcp"))?;
    let on = Instant::now();
    std::fs::rename(&tmp, dir.join("pool.yaml"))?;
    loop {
        let (_, st) = status_as(&socket, &["--summary"])?;
        if summed(&st, "up") == slots as u64 {
            break;
        }
        ensure!(
            on.elapsed() < Duration::from_secs(60),
            "{} of {slots} backends up 60 s after checks were turned on",
            summed(&st, "up")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "  tcp checks turned on for every backend (reload): all {slots} up after {:.2} s",
        on.elapsed().as_secs_f64()
    );
    let w = probe_window(pid, &accepted)?;
    let (_, st) = status(&socket)?;
    println!(
        "{}, {} MiB resident",
        w.line(&format!("{per_vip} addresses")),
        rss_kib(pid)? / 1024
    );
    let not_up = |st: &serde_json::Value| -> Vec<String> {
        st["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|v| v["backends"].as_array().into_iter().flatten())
            .filter(|b| b["health"] != "up")
            .map(|b| format!("{} {} ({})", b["address"], b["health"], b["last_probe"]))
            .collect()
    };
    let down = not_up(&st);
    ensure!(
        down.is_empty(),
        "{} of {slots} backends not up after {:.0} s of probes, e.g. {:?}",
        down.len(),
        w.secs,
        &down[..down.len().min(3)]
    );
    println!(
        "  TCP sockets in TIME_WAIT in the namespace, every 5 s: {:?}",
        w.time_wait
    );
    for (args, what) in [
        (&[][..], "lb status --json (each VIP's counts)"),
        (&["--all"][..], "lb status --all --json"),
    ] {
        let (median_ms, max_ms) = status_times(&socket, 10, args)?;
        println!(
            "  {what} with checks on: median {:.1} ms, max {:.1} ms (10 calls)",
            median_ms, max_ms
        );
    }
    // Each status answer is built on the daemon's main loop: while it
    // is, health results wait (probes time out only if their own tasks
    // starve).
    let (_, st) = status(&socket)?;
    let down = not_up(&st);
    println!(
        "  (VIP, backend) pairs not up after those calls: {}{}",
        down.len(),
        if down.is_empty() {
            String::new()
        } else {
            format!(", e.g. {:?}", &down[..down.len().min(3)])
        }
    );
    // What kept the daemon's main loop (and so `lb status`) waiting.
    let log = std::fs::read_to_string(dir.join("lb.log")).unwrap_or_default();
    let slow: Vec<&str> = log.lines().filter(|l| l.contains("main loop:")).collect();
    println!("  main-loop turns of 200 ms or more: {}", slow.len());
    for l in slow {
        println!("    {l}");
    }
    drop(cleanup);
    Ok(())
}
