//! `cargo xtask soak [SECONDS]` (default 300, at most 600; not in CI): the
//! end-to-end topology under churn. Clients make short HTTP requests and
//! hold long-lived connections while backends fail and recover their
//! health checks, weights change and the pool file is rewritten every few
//! seconds, and the daemon is killed (SIGKILL) and restarted twice.
//!
//! The health checks probe a port of their own on each backend (8081),
//! which the soak opens and closes, so a backend "fails" without its
//! service stopping: a failing backend takes no new flows, and its
//! established TCP connections stay on it. So every request must succeed
//! and every held connection must keep answering from the same backend;
//! the soak fails otherwise. It also samples the daemon's resident memory.
use anyhow::{ensure, Context, Result};
use lb_tests::topo::*;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BACKENDS: usize = 4;
const HELD: usize = 40;
const CLIENTS: usize = 3;
const T: Duration = Duration::from_secs(2);
const HEALTH_PORT: u16 = 8081;

/// The health listener of one backend: open while `up`.
struct HealthPort {
    up: Arc<AtomicBool>,
}

impl HealthPort {
    fn start(ns: &str) -> HealthPort {
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        let ns = ns.to_string();
        std::thread::spawn(move || {
            in_ns(&ns, move || loop {
                if !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let l = TcpListener::bind(("::", HEALTH_PORT)).expect("health port");
                l.set_nonblocking(true).unwrap();
                while flag.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                // Dropped: connections to the port are refused.
            })
        });
        HealthPort { up }
    }
}

fn pool(t: &Topology, weights: &[u32]) -> String {
    let hosts: Vec<_> = t
        .backends
        .iter()
        .zip(weights)
        .map(|(h, w)| (h, *w, "active"))
        .collect();
    let check = format!("health_check: {{ kind: tcp, port: {HEALTH_PORT} }}");
    pool_yaml(&t.tag, &t.dir, &hosts)
        .replace("health_check: { kind: http, path: / }", &check)
        .replace("health_check: { kind: tcp, port: 80 }", &check)
        .replace("health_check: { kind: udp, send: ping }", &check)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("SECONDS")?
        .unwrap_or(300);
    ensure!(
        (30..=600).contains(&secs),
        "the soak runs 30 to 600 seconds"
    );
    let duration = Duration::from_secs(secs);
    let server = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("backend-server");
    let mut t = Topology::new("lbsoak", BACKENDS, &server)?;
    let mut weights = vec![1u32; BACKENDS];
    t.write_pool(&pool(&t, &weights))?;
    let health: Vec<HealthPort> = t
        .backends
        .iter()
        .map(|b| HealthPort::start(&b.ns))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    t.start_daemon()?;
    println!(
        "soak: {secs} s, {BACKENDS} backends, {CLIENTS} HTTP clients, {HELD} held connections"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Default::default();
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (client, stop, ok, failed, errors) = (
            t.client.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
        );
        let web: SocketAddr = format!("{VIP4}:80").parse().unwrap();
        workers.push(std::thread::spawn(move || {
            in_ns(&client, move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(web, T) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            *errors.lock().unwrap().entry(e.to_string()).or_insert(0) += 1;
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        }));
    }
    // Long-lived connections: a line on each every two seconds, answered
    // by the same backend every time.
    let (held_rounds, broken) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let held = {
        let (client, stop, rounds, broken) = (
            t.client.clone(),
            stop.clone(),
            held_rounds.clone(),
            broken.clone(),
        );
        let hold: SocketAddr = format!("{VIP4}:9000").parse().unwrap();
        std::thread::spawn(move || {
            in_ns(&client, move || -> Result<BTreeMap<String, usize>> {
                let mut conns = Vec::new();
                for _ in 0..HELD {
                    conns.push((Held::open(hold, T)?, true));
                }
                let spread = conns.iter().fold(BTreeMap::new(), |mut m, c| {
                    *m.entry(c.0.backend.clone()).or_insert(0) += 1;
                    m
                });
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(2));
                    for (c, alive) in conns.iter_mut().filter(|c| c.1) {
                        if !c.still_served() {
                            *alive = false;
                            broken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                Ok(spread)
            })
        })
    };

    let start = Instant::now();
    let mut rng = fastrand::Rng::with_seed(secs);
    let (mut reloads, mut flaps, mut restarts) = (0u32, 0u32, 0u32);
    let mut rss: Vec<(u64, u64)> = Vec::new();
    let mut next_reload = Duration::from_secs(3);
    let mut next_flap = Duration::from_secs(2);
    let mut next_rss = Duration::ZERO;
    let mut kills = vec![duration / 3, 2 * duration / 3];
    while start.elapsed() < duration {
        let now = start.elapsed();
        if now >= next_flap {
            // Flip one backend's health; at most half are failing at once.
            let i = rng.usize(0..BACKENDS);
            let down = health
                .iter()
                .filter(|h| !h.up.load(Ordering::Relaxed))
                .count();
            let up = health[i].up.load(Ordering::Relaxed);
            if !up || down < BACKENDS / 2 {
                health[i].up.store(!up, Ordering::Relaxed);
                flaps += 1;
            }
            next_flap = now + Duration::from_secs(2);
        }
        if now >= next_reload {
            for w in &mut weights {
                *w = rng.u32(1..=5);
            }
            t.write_pool(&pool(&t, &weights))?;
            reloads += 1;
            next_reload = now + Duration::from_secs(3);
        }
        if kills.first().is_some_and(|k| now >= *k) {
            kills.remove(0);
            t.kill_daemon();
            std::thread::sleep(Duration::from_secs(1));
            t.start_daemon()?;
            restarts += 1;
            rss.clear();
            println!(
                "  {:>4} s: daemon killed with SIGKILL and restarted",
                now.as_secs()
            );
        }
        if now >= next_rss {
            if let Some(kib) = t.daemon_pid().and_then(rss_kib) {
                rss.push((now.as_secs(), kib));
            }
            next_rss = now + Duration::from_secs(10);
            println!(
                "  {:>4} s: {} requests ok, {} failed; held connections broken {}; {reloads} reloads, {flaps} health flips",
                now.as_secs(),
                ok.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                broken.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("client");
    }
    let spread = held.join().expect("held connections")?;
    let (ok, failed, broken) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        broken.load(Ordering::Relaxed),
    );
    println!("soak done after {} s:", start.elapsed().as_secs());
    println!(
        "  requests: {ok} ok, {failed} failed {:?}",
        errors.lock().unwrap()
    );
    println!(
        "  held connections: {HELD} on {spread:?}, {} rounds, {broken} broken or moved",
        held_rounds.load(Ordering::Relaxed)
    );
    println!("  {reloads} reloads, {flaps} health flips, {restarts} daemon restarts (SIGKILL)");
    println!("  daemon resident memory since its last start (s, KiB): {rss:?}");
    ensure!(failed == 0, "{failed} requests failed\n{}", t.log());
    ensure!(
        broken == 0,
        "{broken} held connections broke or moved\n{}",
        t.log()
    );
    ensure!(restarts == 2, "the daemon was restarted {restarts} times");
    // Flat: after its first sample, the last daemon grows by less than a
    // fifth (and at most 8 MiB).
    if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
        ensure!(
            last.1 <= first.1 + (first.1 / 5).min(8192),
            "daemon memory grew from {} KiB to {} KiB",
            first.1,
            last.1
        );
    }
    println!("soak passed");
    Ok(())
}
