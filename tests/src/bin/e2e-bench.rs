//! `cargo xtask bench --e2e`: what users see end to end, side by side in
//! one run, on the test topology (network namespaces on one machine):
//! this balancer (IPIP, `lb decap` on the backends), kernel netfilter DNAT
//! (nftables, with masquerade: what kube-proxy does), HAProxy in TCP mode,
//! and IPVS where the kernel has it; and the client talking to a backend
//! directly, the baseline the others are measured against.
//!
//! Each contender has a topology of its own (same addresses, its own
//! namespaces), all built before measuring; the workloads then run in
//! interleaved rounds, each contender in turn, so a noisy spell on the
//! host lands on every one alike. Workloads: short TCP connections (one
//! HTTP request each), UDP request/response (a new socket, so a new flow,
//! per request: as DNS clients do), and one long TCP stream (throughput).
//!
//! CPU per request is the machine's busy time (`/proc/stat`: user, system,
//! softirq and the rest, on both CPUs) over the requests answered. The
//! client and the backends are the same in every run, so what a contender
//! adds to the direct baseline is its own cost: its namespace's softirq
//! and process time, and the decapsulation it asks of the backends.
//! Latency is each request's, at the client; "added" is over the direct
//! baseline's at the same percentile. Every request must be answered by a
//! backend (its name), or the bench stops before it reports.
use anyhow::{bail, ensure, Context, Result};
use lb_tests::topo::{http_get, in_ns, sh, spawn_in_ns, Topology, LB4, VIP4};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Rounds of every (contender, workload), interleaved.
const ROUNDS: usize = 3;
/// How long each workload runs in a round.
const RUN: Duration = Duration::from_secs(2);
/// Client threads of the request workloads.
const THREADS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(2);
const BACKENDS: [&str; 3] = ["10.10.0.11", "10.10.0.12", "10.10.0.13"];
const STREAM_PORT: u16 = 9100;
/// The NAT contender's source addresses beside the balancer's own.
const NAT_MORE: [&str; 3] = ["10.10.0.5", "10.10.0.6", "10.10.0.7"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Direct,
    /// This balancer, with the VIPs' `forwarding`.
    Lb(&'static str),
    Nft,
    Haproxy,
    Ipvs,
}

/// This balancer's forwarding modes, each a contender: (mode, topology tag).
const MODES: [(&str, &str); 4] = [
    ("encap", "ebli"),
    ("gue", "ebgu"),
    ("dsr_l2", "ebl2"),
    ("nat", "ebna"),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct to one backend (baseline)",
            Kind::Lb("encap") => "lb, encap: IPIP (lb decap)",
            Kind::Lb("gue") => "lb, gue (lb decap)",
            Kind::Lb("dsr_l2") => "lb, dsr_l2",
            Kind::Lb(_) => "lb, nat",
            Kind::Nft => "nftables DNAT + masquerade",
            Kind::Haproxy => "HAProxy, mode tcp",
            Kind::Ipvs => "IPVS (NAT)",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Work {
    Short,
    Udp,
    Stream,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Short => "TCP, one request per connection",
            Work::Udp => "UDP request/response",
            Work::Stream => "TCP stream",
        }
    }
}

/// One contender: its topology and where its client sends.
struct Contender {
    kind: Kind,
    topo: Topology,
    /// The address the client uses (the VIP, or a backend for Direct).
    addr: std::net::IpAddr,
}

#[derive(Default, Clone)]
struct Sample {
    requests: u64,
    bytes: u64,
    secs: f64,
    busy_s: f64,
    lat_us: Vec<u32>,
}

/// Whether contender `name` runs: all of them, or those `LB_E2E_ONLY`
/// names (a comma-separated list of encap, gue, dsr_l2, nat, nft,
/// haproxy, ipvs; the direct baseline always runs).
fn wanted(name: &str) -> bool {
    std::env::var("LB_E2E_ONLY").map_or(true, |v| v.split(',').any(|n| n.trim() == name))
}

fn main() -> Result<()> {
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "e2e-bench needs root (network namespaces, XDP); run `cargo xtask bench --e2e` as root"
    );
    for bin in ["haproxy", "nft"] {
        ensure!(
            sh(&format!("command -v {bin} >/dev/null")).is_ok(),
            "`{bin}` is not installed; `cargo xtask bench --e2e` installs it (Debian's haproxy and nftables)"
        );
    }
    let server = std::env::current_exe()?
        .parent()
        .context("the bench's folder")?
        .join("backend-server");
    ensure!(
        server.exists(),
        "no backend-server beside the bench ({}); build the lb-tests bins (`cargo xtask bench --e2e` does)",
        server.display()
    );
    let mut all = vec![Contender {
        kind: Kind::Direct,
        addr: BACKENDS[0].parse()?,
        topo: Topology::new("ebdi", 3, &server)?,
    }];
    for (mode, tag) in MODES {
        if !wanted(mode) {
            continue;
        }
        let mut t = Topology::new(tag, 3, &server).context("a topology for lb")?;
        if mode == "nat" {
            for a in NAT_MORE {
                sh(&format!("ip -n {} addr add {a}/24 dev eth0", t.lb))?;
            }
        }
        t.write_pool(&pool(&t, mode))?;
        t.start_daemon()
            .with_context(|| format!("starting lb run ({mode})"))?;
        all.push(Contender {
            kind: Kind::Lb(mode),
            addr: VIP4.parse()?,
            topo: t,
        });
    }
    if wanted("nft") {
        let nft = Topology::new("ebnf", 3, &server)?;
        setup_nft(&nft)?;
        all.push(Contender {
            kind: Kind::Nft,
            addr: VIP4.parse()?,
            topo: nft,
        });
    }
    let mut haproxy = None;
    if wanted("haproxy") {
        let mut hap = Topology::new("ebha", 3, &server)?;
        haproxy = Some(start_haproxy(&mut hap)?);
        all.push(Contender {
            kind: Kind::Haproxy,
            addr: VIP4.parse()?,
            topo: hap,
        });
    }
    if !wanted("ipvs") {
    } else if std::path::Path::new("/proc/net/ip_vs").exists() {
        let ipvs = Topology::new("ebiv", 3, &server)?;
        setup_ipvs(&ipvs)?;
        all.push(Contender {
            kind: Kind::Ipvs,
            addr: VIP4.parse()?,
            topo: ipvs,
        });
    } else {
        println!("IPVS: skipped, this kernel has no IPVS (/proc/net/ip_vs is missing)");
    }

    // Every contender answers before anything is measured.
    for c in &all {
        warm(c).with_context(|| format!("{}: first requests", c.kind.name()))?;
    }
    let works: Vec<Work> = [Work::Short, Work::Udp, Work::Stream]
        .into_iter()
        .filter(|w| {
            let name = format!("{w:?}").to_lowercase();
            std::env::var("LB_E2E_WORK").map_or(true, |v| v.split(',').any(|n| n.trim() == name))
        })
        .collect();
    let result = measure_all(&all, &works);
    if let Some(s) = std::env::var("LB_E2E_HOLD_S")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        println!("holding the topologies for {s} s (LB_E2E_HOLD_S)");
        std::thread::sleep(Duration::from_secs(s));
    }
    let samples = result?;
    drop(haproxy);
    report(&all, &works, &samples);
    Ok(())
}

/// Every (contender, workload), in interleaved rounds.
fn measure_all(all: &[Contender], works: &[Work]) -> Result<Vec<Vec<Vec<Sample>>>> {
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); works.len()]; all.len()];
    for round in 0..ROUNDS {
        for (w, &work) in works.iter().enumerate() {
            for (i, c) in all.iter().enumerate() {
                if work == Work::Udp && c.kind == Kind::Haproxy {
                    continue;
                }
                let s = measure(c, work).with_context(|| {
                    // What the balancer counted, to tell a drop from a loss.
                    let counters = match c.kind {
                        Kind::Lb(_) => c.topo.status_json().map_or_else(
                            |e| format!("(lb status: {e})"),
                            |st| st["counters"].to_string(),
                        ),
                        _ => String::new(),
                    };
                    format!(
                        "{}, {}, round {round} {counters}",
                        c.kind.name(),
                        work.name()
                    )
                })?;
                samples[i][w].push(s);
            }
        }
    }
    Ok(samples)
}

/// An lb contender's pool: web (80), dns (53) and the stream, forwarded
/// by `mode` (NAT from the balancer's own address), with the default
/// tables.
fn pool(t: &Topology, mode: &str) -> String {
    let backends: String = t
        .backends
        .iter()
        .map(|b| format!("      - {{ address: {} }}\n", b.v4))
        .collect();
    // NAT: four source addresses (its most), each with its ports per
    // backend, and ports taken back 5 s after a flow ends or idles: with
    // one address and the defaults (a port held 60 s after a connection
    // closes, 30 s after a UDP datagram), this bench's rate of new flows
    // runs out of ports within seconds (`drop_nat_no_port`).
    let (nat, tables) = if mode == "nat" {
        let addrs: Vec<String> = std::iter::once(LB4)
            .chain(NAT_MORE)
            .map(|a| format!("\"{a}\""))
            .collect();
        (
            format!("    snat_addresses: [{}]\n", addrs.join(", ")),
            "tables:\n  nat_closed_timeout: 5s\n  udp_idle_timeout: 5s\n",
        )
    } else {
        (String::new(), "")
    };
    let vip = |name: &str, port: u16, proto: &str, check: &str| {
        format!(
            "  - name: {name}\n    address: {VIP4}\n    port: {port}\n    protocol: {proto}\n    \
             forwarding: {mode}\n{nat}    health_check: {check}\n    backends:\n{backends}"
        )
    };
    format!(
        "instance: {tag}\ninterfaces: [eth0]\nencapsulation:\n  source_v4: 10.255.0.0/24\n  \
         source_v6: \"fd00:255::/112\"\n{tables}hash_secret_file: {dir}/secret\ncontrol_socket: /run/lb/{tag}.sock\nvips:\n{}{}{}",
        vip("web", 80, "tcp", "{ kind: http, path: / }"),
        vip("dns", 53, "udp", "{ kind: udp, send: ping }"),
        vip("stream", STREAM_PORT, "tcp", "{ kind: tcp, port: 80 }"),
        tag = t.tag,
        dir = t.dir.display()
    )
}

/// Kernel NAT on the balancer's namespace: each new connection (or UDP
/// flow) DNATed to a backend at random, and masqueraded so the replies
/// come back through it (the client shares the backends' subnet).
fn setup_nft(t: &Topology) -> Result<()> {
    let map = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rules = format!(
        "table ip lbbench {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP4} tcp dport {{ 80, {STREAM_PORT} }} dnat to numgen random mod 3 map {{ {map} }}
    ip daddr {VIP4} udp dport 53 dnat to numgen random mod 3 map {{ {map} }}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat masquerade
  }}
}}
"
    );
    let file = t.dir.join("nft.rules");
    std::fs::write(&file, rules)?;
    let ns = &t.lb;
    sh(&format!(
        "ip netns exec {ns} sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0 \
         && ip netns exec {ns} nft -f {}",
        file.display()
    ))
    .context("loading the nftables rules")
}

/// IPVS in NAT mode (masqueraded, as nftables): round robin over the backends.
fn setup_ipvs(t: &Topology) -> Result<()> {
    let ns = &t.lb;
    let mut cmds = vec![format!(
        "ip netns exec {ns} sysctl -qw net.ipv4.vs.conntrack=1 net.ipv4.conf.all.send_redirects=0"
    )];
    for (proto, port) in [("-t", 80), ("-t", STREAM_PORT), ("-u", 53)] {
        cmds.push(format!(
            "ip netns exec {ns} ipvsadm -A {proto} {VIP4}:{port} -s rr"
        ));
        for b in BACKENDS {
            cmds.push(format!(
                "ip netns exec {ns} ipvsadm -a {proto} {VIP4}:{port} -r {b}:{port} -m"
            ));
        }
    }
    // Replies come back through the balancer: what it forwards to a
    // backend leaves from its own address.
    let backends = BACKENDS.join(", ");
    cmds.push(format!(
        "ip -n {ns} addr add {VIP4}/32 dev lo && ip netns exec {ns} nft add table ip ipvsnat \
         && ip netns exec {ns} nft 'add chain ip ipvsnat post {{ type nat hook postrouting priority srcnat; }}' \
         && ip netns exec {ns} nft 'add rule ip ipvsnat post ip daddr {{ {backends} }} masquerade'"
    ));
    sh(&cmds.join(" && ")).context("setting up IPVS")
}

/// HAProxy in the balancer's namespace, the VIP on its loopback; mode tcp,
/// round robin, one thread per CPU (its default).
fn start_haproxy(t: &mut Topology) -> Result<KillOnDrop> {
    let servers = |port: u16| {
        BACKENDS
            .iter()
            .enumerate()
            .map(|(i, b)| format!("  server b{} {b}:{port}\n", i + 1))
            .collect::<String>()
    };
    let cfg = format!(
        "global\n  maxconn 9000\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\n\
         frontend web\n  bind {VIP4}:80\n  default_backend web\n\nbackend web\n  balance roundrobin\n{}\n\
         frontend stream\n  bind {VIP4}:{STREAM_PORT}\n  default_backend stream\n\nbackend stream\n  balance roundrobin\n{}",
        servers(80),
        servers(STREAM_PORT)
    );
    let file = t.dir.join("haproxy.cfg");
    std::fs::write(&file, cfg)?;
    sh(&format!("ip -n {} addr add {VIP4}/32 dev lo", t.lb))?;
    let child = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.lb))
        .args(["haproxy", "-db", "-f"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(t.dir.join("haproxy.log"))?)
        .spawn()
        .context("starting haproxy")?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(KillOnDrop(child))
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A request of each kind (UDP but for HAProxy) until the contender answers (health checks
/// and ARP settle), for at most 20 s.
fn warm(c: &Contender) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = c.addr;
    let udp = c.kind != Kind::Haproxy;
    loop {
        let ok = in_ns(&c.topo.client, move || {
            let web = http_get(SocketAddr::new(addr, 80), TIMEOUT).is_ok_and(|b| is_backend(&b));
            web && (!udp || udp_request(SocketAddr::new(addr, 53)).is_ok())
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no answer within 20 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_backend(body: &str) -> bool {
    matches!(body, "b1" | "b2" | "b3")
}

/// One UDP request from a new socket (a new flow); the answer must be a
/// backend's name.
fn udp_request(addr: SocketAddr) -> Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.send_to(b"who", addr)?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf)?;
    let name = String::from_utf8_lossy(&buf[..n]);
    ensure!(is_backend(name.trim()), "answer {name:?}");
    Ok(())
}

/// Runs `work` against the contender for `RUN`, with the machine's busy
/// time around it.
fn measure(c: &Contender, work: Work) -> Result<Sample> {
    let addr = c.addr;
    let busy0 = busy_seconds()?;
    let t0 = Instant::now();
    let threads = if work == Work::Stream { 1 } else { THREADS };
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            spawn_in_ns(&c.topo.client, move || -> Result<(u64, u64, Vec<u32>)> {
                let end = Instant::now() + RUN;
                let mut lat = Vec::new();
                let mut bytes = 0u64;
                match work {
                    Work::Short => {
                        while Instant::now() < end {
                            let t = Instant::now();
                            let body = http_get(SocketAddr::new(addr, 80), TIMEOUT)?;
                            ensure!(is_backend(&body), "answer {body:?}");
                            lat.push(t.elapsed().as_micros() as u32);
                        }
                    }
                    Work::Udp => {
                        while Instant::now() < end {
                            let t = Instant::now();
                            udp_request(SocketAddr::new(addr, 53))?;
                            lat.push(t.elapsed().as_micros() as u32);
                        }
                    }
                    Work::Stream => {
                        use std::io::Read;
                        let mut s = std::net::TcpStream::connect_timeout(
                            &SocketAddr::new(addr, STREAM_PORT),
                            TIMEOUT,
                        )?;
                        s.set_read_timeout(Some(TIMEOUT))?;
                        let mut buf = vec![0u8; 1 << 18];
                        while Instant::now() < end {
                            let n = s.read(&mut buf)?;
                            ensure!(n > 0, "the stream ended");
                            bytes += n as u64;
                        }
                    }
                }
                Ok((lat.len() as u64, bytes, lat))
            })
        })
        .collect();
    let mut s = Sample::default();
    for h in handles {
        let (n, bytes, lat) = h.join().expect("client thread")?;
        s.requests += n;
        s.bytes += bytes;
        s.lat_us.extend(lat);
    }
    s.secs = t0.elapsed().as_secs_f64();
    s.busy_s = busy_seconds()? - busy0;
    Ok(s)
}

/// Busy seconds of every CPU so far (`/proc/stat`, all but idle and iowait).
fn busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    ensure!(v.len() == 8, "unexpected /proc/stat line {line:?}");
    let busy: u64 = v.iter().sum::<u64>() - v[3] - v[4];
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy as f64 / hz)
}

fn percentile(v: &mut [u32], p: usize) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Per (contender, workload): the rounds added up.
struct Figures {
    rate: f64,
    cpu_us: f64,
    p50: u32,
    p99: u32,
    gbit: f64,
    /// Busy CPU seconds per GB moved (the stream).
    cpu_s_per_gb: f64,
}

fn figures(rounds: &[Sample]) -> Option<Figures> {
    if rounds.is_empty() {
        return None;
    }
    let requests: u64 = rounds.iter().map(|s| s.requests).sum();
    let secs: f64 = rounds.iter().map(|s| s.secs).sum();
    let busy: f64 = rounds.iter().map(|s| s.busy_s).sum();
    let bytes: u64 = rounds.iter().map(|s| s.bytes).sum();
    let mut lat: Vec<u32> = rounds.iter().flat_map(|s| s.lat_us.clone()).collect();
    Some(Figures {
        rate: requests as f64 / secs,
        cpu_us: busy * 1e6 / requests.max(1) as f64,
        p50: percentile(&mut lat, 50),
        p99: percentile(&mut lat, 99),
        gbit: bytes as f64 * 8.0 / secs / 1e9,
        cpu_s_per_gb: busy / (bytes.max(1) as f64 / 1e9),
    })
}

fn report(all: &[Contender], works: &[Work], samples: &[Vec<Vec<Sample>>]) {
    println!();
    println!(
        "e2e-bench: {ROUNDS} interleaved rounds of {} s per contender and workload, {THREADS} client threads",
        RUN.as_secs()
    );
    for (w, work) in works.iter().enumerate() {
        println!();
        println!("{}:", work.name());
        let base = figures(&samples[0][w]);
        if *work == Work::Stream {
            println!(
                "  {:<34} {:>8} {:>16} {:>14}",
                "", "Gbit/s", "CPU s per GB", "added per GB"
            );
        } else {
            println!(
                "  {:<34} {:>8} {:>12} {:>13} {:>9} {:>9} {:>10} {:>10}",
                "",
                "req/s",
                "CPU us/req",
                "added us/req",
                "p50 us",
                "p99 us",
                "p50 added",
                "p99 added"
            );
        }
        for (i, c) in all.iter().enumerate() {
            let Some(f) = figures(&samples[i][w]) else {
                println!("  {:<34} (not measured: no UDP proxying)", c.kind.name());
                continue;
            };
            let b = base.as_ref().expect("baseline measured");
            if *work == Work::Stream {
                println!(
                    "  {:<34} {:>8.2} {:>16.3} {:>14.3}",
                    c.kind.name(),
                    f.gbit,
                    f.cpu_s_per_gb,
                    f.cpu_s_per_gb - b.cpu_s_per_gb
                );
            } else {
                println!(
                    "  {:<34} {:>8.0} {:>12.1} {:>13.1} {:>9} {:>9} {:>10} {:>10}",
                    c.kind.name(),
                    f.rate,
                    f.cpu_us,
                    f.cpu_us - b.cpu_us,
                    f.p50,
                    f.p99,
                    f.p50 as i64 - b.p50 as i64,
                    f.p99 as i64 - b.p99 as i64
                );
            }
        }
    }
    // The ratios: requests per balancer CPU second.
    println!();
    let Some(short) = works.iter().position(|w| *w == Work::Short) else {
        return;
    };
    let base = figures(&samples[0][short]).expect("baseline");
    let per_cpu_s =
        |i: usize| figures(&samples[i][short]).map(|f| 1e6 / (f.cpu_us - base.cpu_us).max(0.1));
    let lb = all
        .iter()
        .position(|c| c.kind == Kind::Lb("encap"))
        .unwrap_or(0);
    if let Some(lb_rate) = per_cpu_s(lb) {
        println!("short TCP requests per second of the balancer's own CPU (over the baseline):");
        for (i, c) in all.iter().enumerate().skip(1) {
            if let Some(r) = per_cpu_s(i) {
                println!(
                    "  {:<34} {:>10.0}   lb encap / this: {:.2}",
                    c.kind.name(),
                    r,
                    lb_rate / r
                );
            }
        }
    }
}
