//! End to end: namespaces, the real daemon with a real pool file, real
//! servers and clients. Each test asserts what the clients saw.
use lb_tests::root_env;
use lb_tests::topo::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

/// Each test's time budget, from building its topology to removing it. The
/// slowest passes in about 8 s; a broken data path makes clients wait out
/// their timeouts, and this fails the run instead of letting it hang.
const BUDGET: Duration = Duration::from_secs(90);

/// A client loop stops after this many failed requests: the test fails
/// either way, and a broken data path would otherwise cost a timeout per
/// request.
const MAX_FAILURES: usize = 5;

fn topo(tag: &str, weights: &[u32]) -> Option<Topology> {
    root_env("end-to-end tests")?;
    let budget = lb_tests::Budget::start(tag, BUDGET);
    let mut t = Topology::new(
        tag,
        weights.len(),
        std::path::Path::new(env!("CARGO_BIN_EXE_backend-server")),
    )
    .expect("topology");
    t.budget = Some(budget);
    t.write_pool(&weighted_pool(&t, weights)).unwrap();
    Some(t)
}

/// The test pool with the topology's backends, all active, at `weights`.
fn weighted_pool(t: &Topology, weights: &[u32]) -> String {
    let hosts: Vec<_> = t
        .backends
        .iter()
        .zip(weights)
        .map(|(h, w)| (h, *w, "active"))
        .collect();
    pool_yaml(&t.tag, &t.dir, &hosts)
}

fn vip<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VIP {name} in {st}"))
}

fn web() -> SocketAddr {
    format!("{VIP4}:80").parse().unwrap()
}

/// Runs `request(i)` for i in 0..n; counts answers per backend (failures
/// under "error: ...", by message), stopping after `MAX_FAILURES` failures.
fn tally(
    n: usize,
    mut request: impl FnMut(usize) -> anyhow::Result<String>,
) -> (BTreeMap<String, usize>, usize) {
    let mut seen = BTreeMap::new();
    let mut failed = 0;
    for i in 0..n {
        match request(i) {
            Ok(b) => *seen.entry(b).or_insert(0) += 1,
            Err(e) => {
                failed += 1;
                *seen.entry(format!("error: {e}")).or_insert(0) += 1;
                if failed == MAX_FAILURES {
                    break;
                }
            }
        }
    }
    (seen, failed)
}

/// `n` short HTTP connections from the client (see [`tally`]).
fn spread_http(t: &Topology, addr: SocketAddr, n: usize) -> (BTreeMap<String, usize>, usize) {
    in_ns(&t.client, move || tally(n, |_| http_get(addr, T)))
}

fn assert_shares(seen: &BTreeMap<String, usize>, weights: &[u32], n: usize) {
    let total: u32 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let name = format!("b{}", i + 1);
        let got = *seen.get(&name).unwrap_or(&0) as f64 / n as f64 * 100.0;
        let want = *w as f64 / total as f64 * 100.0;
        // Flows land on slots by a keyed hash: a binomial spread around the
        // share. Five standard deviations (4 points for 25% of 3000) keep
        // false alarms rare; a weighting error (33% for 25%) is far beyond.
        let p = want / 100.0;
        let bound = 5.0 * (p * (1.0 - p) / n as f64).sqrt() * 100.0;
        assert!(
            (got - want).abs() <= bound,
            "{name}: {got:.1}% of {n}, weighted share {want:.1}% (bound {bound:.1} points) ({seen:?})"
        );
    }
}

/// `n` short HTTP connections to `web` and `n` DNS queries (each from a
/// source port of its own) to the `dns` VIP: every one answered, each
/// spread by `weights`.
fn assert_web_and_dns_spread(t: &Topology, web: SocketAddr, weights: &[u32], n: usize) {
    let (seen, failed) = spread_http(t, web, n);
    let counters = || {
        t.status_json()
            .map(|s| s["counters"].clone())
            .unwrap_or_default()
    };
    assert_eq!(failed, 0, "{seen:?}\n{}\n{}", counters(), t.log());
    assert_shares(&seen, weights, n);
    let dns: SocketAddr = format!("{VIP4}:53").parse().unwrap();
    let (useen, ufailed) = in_ns(&t.client, move || {
        tally(n, |i| udp_query(dns, 20000 + i as u16, T))
    });
    assert_eq!(ufailed, 0, "{useen:?}");
    assert_shares(&useen, weights, n);
}

#[test]
fn tcp_and_udp_spread_by_weight() {
    let weights = [1, 1, 2];
    let Some(mut t) = topo("e2sp", &weights) else {
        return;
    };
    t.start_daemon().unwrap();
    assert_web_and_dns_spread(&t, web(), &weights, 3000);
    let st = t.status_json().unwrap();
    let web = vip(&st, "web");
    assert!(web["new_flows"].as_u64().unwrap() >= 3000, "{web}");
    // The data path's decision log is off unless asked for.
    assert!(!t.log().contains("new flow:"), "{}", t.log());
}

#[test]
fn debug_datapath_logs_each_new_flow_and_its_backend() {
    let Some(mut t) = topo("e2dl", &[1, 1]) else {
        return;
    };
    t.start_daemon_with(&["--debug-datapath"]).unwrap();
    let n = 40;
    let (seen, failed) = spread_http(&t, web(), n);
    assert_eq!(failed, 0, "{seen:?}");
    // The records reach the daemon's log asynchronously.
    std::thread::sleep(Duration::from_millis(500));
    let log = t.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("new flow: proto 6 port") && l.contains("-> 80, vip"))
        .collect();
    assert_eq!(lines.len(), n, "one record per connection:\n{log}");
    let ports: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.split("port ").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(ports.len(), n, "each from its own client port: {lines:?}");
    let backends: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.rsplit("to backend ").next())
        .collect();
    assert_eq!(backends.len(), 2, "both backends chosen: {lines:?}");
    // The daemon says which VIP and backends those ids are.
    let ids = log
        .lines()
        .find_map(|l| {
            l.split("data path ids: ")
                .nth(1)
                .filter(|r| r.contains("`web`"))
        })
        .unwrap_or_else(|| panic!("no ids for `web` in the log:\n{log}"));
    let vip_id = ids.trim_start_matches("vip ").split(' ').next().unwrap();
    for l in &lines {
        assert!(
            l.contains(&format!("vip {vip_id} to")),
            "{l} is not `web` ({ids})"
        );
    }
    for b in &backends {
        let addr = ids
            .split(&format!(" {b} = "))
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or_else(|| panic!("backend {b} not among {ids}"));
        assert!(
            t.backends.iter().any(|h| h.v4.to_string() == addr.trim()),
            "backend {b} = {addr}: not a backend of the topology"
        );
    }
}

#[test]
fn ipv6_vip_and_v4_vip_with_v6_backends_work() {
    let Some(mut t) = topo("e2v6", &[1, 1, 1]) else {
        return;
    };
    t.start_daemon().unwrap();
    let v6: SocketAddr = format!("[{VIP6}]:80").parse().unwrap();
    let mixed: SocketAddr = format!("{VIP4_MIXED}:80").parse().unwrap();
    for addr in [v6, mixed] {
        let (seen, failed) = spread_http(&t, addr, 300);
        assert_eq!(
            failed,
            0,
            "{addr}: {seen:?}\n{}\n{}",
            t.log(),
            t.status_text()
        );
        assert_eq!(
            seen.len(),
            3,
            "{addr}: all backends answer: {seen:?}\n{}",
            t.status_text()
        );
    }
}

#[test]
fn failover_within_a_second_and_recovery_after_rise() {
    let Some(mut t) = topo("e2fo", &[1, 1, 1]) else {
        return;
    };
    t.start_daemon().unwrap();
    t.kill_server("b2");
    // Default health: interval 200ms, timeout 200ms, fall 2: down in well
    // under a second. From one second on, no new connection may fail.
    std::thread::sleep(Duration::from_millis(1000));
    let (seen, failed) = spread_http(&t, web(), 300);
    assert_eq!(
        failed,
        0,
        "no failures one second after the kill: {seen:?}\n{}",
        t.log()
    );
    assert!(!seen.contains_key("b2"), "{seen:?}");
    // A VIP added now by a reload, over the same backends and with the
    // same check as `hold` (tcp to port 80): its backends start up, and
    // the running probers, steady since b2 went down, still tell the new
    // pairs: b2 down, the others up.
    let backends: String = t
        .backends
        .iter()
        .map(|h| format!("      - {{ address: {} }}\n", h.v4))
        .collect();
    let pool = weighted_pool(&t, &[1, 1, 1]).replacen(
        "  - name: hold\n",
        &format!(
            "  - name: web2\n    address: {VIP4}\n    port: 8080\n    protocol: tcp\n    \
             health_check: {{ kind: tcp, port: 80 }}\n    backends:\n{backends}  - name: hold\n"
        ),
        1,
    );
    t.write_pool(&pool).unwrap();
    let b2_addr = t.backends[1].v4.to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = t.status_json().unwrap();
        let health: Vec<(String, String)> = st["vips"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "web2")
            .map(|v| {
                v["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        let a = b["address"].as_str().unwrap_or("").to_string();
                        (a, b["health"].as_str().unwrap_or("").to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let right = health.len() == 3
            && health
                .iter()
                .all(|(a, h)| h == if *a == b2_addr { "down" } else { "up" });
        if right {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "web2 5 s after the reload: {health:?}, b2 ({b2_addr}) down and the rest up expected\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t.start_server("b2").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let (seen, failed) = spread_http(&t, web(), 300);
    assert_eq!(failed, 0);
    assert!(
        seen.contains_key("b2"),
        "b2 takes new flows again: {seen:?}"
    );
    // Down after exactly `fall` (2) failed probes, on every VIP b2 serves.
    let log = t.log();
    let b2 = &t.backends[1];
    for (vip, addr) in [
        ("web", b2.v4.to_string()),
        ("hold", b2.v4.to_string()),
        ("dns", b2.v4.to_string()),
        ("web6", b2.v6.to_string()),
    ] {
        // One line for the address, naming every VIP it serves.
        let down = format!("backend {addr} is down after 2 failed probes");
        assert!(
            log.lines()
                .any(|l| l.contains(&down) && l.contains(&format!("`{vip}`"))),
            "`{down}` for `{vip}` not in the log:\n{log}"
        );
    }
    // `web6` and `mixed` check b2's IPv6 address the same way: one probe,
    // one line.
    let b2_down = format!("backend {} is down after 2 failed probes", b2.v6);
    assert!(
        log.lines()
            .any(|l| l.contains(&b2_down) && l.contains("for VIPs `web6`, `mixed`")),
        "one line for b2 naming `web6` and `mixed`:\n{log}"
    );
    assert!(
        log.contains("is up after 2 passed probes"),
        "up after rise (2): {log}"
    );
}

#[test]
fn daemon_sigkill_and_restart_break_no_request() {
    let Some(mut t) = topo("e2ck", &[1, 1, 1]) else {
        return;
    };
    t.start_daemon().unwrap();
    let client = t.client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let worker = std::thread::spawn(move || {
        in_ns(&client, move || {
            let (mut ok, mut failed) = (0, 0);
            while !s2.load(std::sync::atomic::Ordering::Relaxed) && failed < MAX_FAILURES {
                match http_get(web(), T) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    t.kill_daemon();
    std::thread::sleep(Duration::from_millis(700));
    // While it is down, `lb status` says so, and that XDP still forwards.
    let out = std::process::Command::new(&t.lb_bin)
        .args(["status", "--config"])
        .arg(t.pool_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not running") && err.contains("still pinned"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(800));
    t.start_daemon().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = worker.join().unwrap();
    assert!(ok > 50, "requests made: {ok}, failed {failed}\n{}", t.log());
    assert_eq!(failed, 0, "{ok} ok\n{}", t.log());
    let st = t.status_json().unwrap();
    assert_eq!(st["vips"].as_array().unwrap().len(), 5);
    assert!(t.log().contains("adopted the XDP link"), "{}", t.log());
    // With no traffic now, one more restart: a flow the table holds is
    // found where it was, with its backend (the table and its hash key
    // are kept; a closed flow keeps its entry until its place is taken).
    // The table keeps no key: the flow is the same entry, and its set the
    // same, as the table's hash key is.
    let tag = t.tag.clone();
    let held = || {
        let table = lb_userspace::dataplane::pinned_flow_table(&tag).unwrap();
        let mut held = None;
        table
            .each(1, |i, ident, v| held = Some((i, ident, v.backend)))
            .unwrap();
        (held.expect("a flow in the table"), table.seed())
    };
    let before = held();
    t.kill_daemon();
    t.start_daemon().unwrap();
    assert_eq!(held(), before);
}

/// Connections to the `hold` VIP held open from the client's namespace by
/// a thread of their own.
struct HeldConnections {
    /// Connections per backend when opened.
    first: BTreeMap<String, usize>,
    ask: std::sync::mpsc::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
    worker: std::thread::JoinHandle<Vec<(usize, String)>>,
}

impl HeldConnections {
    fn open(t: &Topology, n: usize) -> Self {
        let hold: SocketAddr = format!("{VIP4}:9000").parse().unwrap();
        let client = t.client.clone();
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (opened, first) = std::sync::mpsc::channel();
        let (answered, done) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            in_ns(&client, move || {
                let mut conns: Vec<Held> = (0..n).map(|_| Held::open(hold, T).unwrap()).collect();
                let first: BTreeMap<String, usize> =
                    conns.iter().fold(BTreeMap::new(), |mut m, c| {
                        *m.entry(c.backend.clone()).or_insert(0) += 1;
                        m
                    });
                opened.send(first).unwrap();
                let mut broken = Vec::new();
                // Each round: every connection must still answer, from the
                // same backend.
                while asked.recv().is_ok() {
                    for (i, c) in conns.iter_mut().enumerate() {
                        if !c.still_served() {
                            broken.push((i, c.backend.clone()));
                        }
                    }
                    answered.send(()).unwrap();
                }
                broken
            })
        });
        HeldConnections {
            first: first.recv().unwrap(),
            ask,
            done,
            worker,
        }
    }

    /// Asks every connection once more.
    fn round(&self) {
        self.ask.send(()).unwrap();
        self.done.recv().unwrap();
    }

    /// The connections that broke or moved in a round (index, backend).
    fn broken(self) -> Vec<(usize, String)> {
        drop(self.ask);
        self.worker.join().unwrap()
    }
}

/// The flow table's entries in use, and in all, as `lb status` shows
/// them (`None` before the first count).
fn table_in_use(t: &Topology) -> Option<(u64, u64)> {
    let st = t.status_json().ok()?;
    let ft = &st["flow_table"];
    Some((ft["in_use"].as_u64()?, ft["entries"].as_u64()?))
}

/// Waits up to 10 s for `lb status` to show `in_use` table entries in use.
fn wait_in_use(t: &Topology, in_use: u64) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while table_in_use(t).map(|u| u.0) != Some(in_use) {
        assert!(
            std::time::Instant::now() < until,
            "status shows {:?}, not {in_use} entries in use\n{}",
            table_in_use(t),
            t.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `lb status` to show `to` table entries in use, and checks
/// that the daemon logged the growth from `from`.
fn wait_grown(t: &Topology, from: u64, to: u64) {
    wait_in_use(t, to);
    let said = format!("flow table grown from {from} to {to} entries in use");
    assert!(t.log().contains(&said), "{}", t.log());
}

#[test]
fn the_flow_table_grows_under_live_connections_and_a_restart_finishes_a_growth() {
    // The test pool's table is made for 65 536 flows (131 072 entries);
    // a quarter is in use at first. 9000 UDP flows and 40 held TCP
    // connections fill more than a quarter of that: the daemon grows the
    // table while the connections run. Then it is killed with a growth
    // just begun (as a kill in the middle of one leaves it), XDP serves on
    // alone, and the next daemon finishes it. No connection breaks or
    // moves.
    let Some(mut t) = topo("e2fg", &[1, 1, 1]) else {
        return;
    };
    t.start_daemon().unwrap();
    wait_in_use(&t, 32_768);
    assert_eq!(table_in_use(&t).unwrap().1, 131_072);
    let held = HeldConnections::open(&t, 40);
    assert!(held.first.len() > 1, "connections on several backends");
    let round = || held.round();
    // 9000 UDP flows, one query each from its own port.
    let dns: SocketAddr = format!("{VIP4}:53").parse().unwrap();
    let failed = in_ns(&t.client, move || {
        (20_000..29_000u16)
            .filter(|p| udp_query(dns, *p, T).is_err())
            .count()
    });
    assert_eq!(failed, 0);
    // 9040 flows: 32 768 entries in use would be over a quarter full.
    wait_grown(&t, 32_768, 65_536);
    round();
    // b2 and b3 drain: a held connection of theirs that the table missed
    // would go to b1.
    let b = |i: usize| &t.backends[i];
    let drain = pool_yaml(
        &t.tag,
        &t.dir,
        &[(b(0), 1, "active"), (b(1), 1, "drain"), (b(2), 1, "drain")],
    );
    t.write_pool(&drain).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    round();
    t.kill_daemon();
    assert_eq!(
        lb_userspace::dataplane::begin_growth_pinned(&t.tag, 1 << 30, 16_384).unwrap(),
        Some((8192, 16_384))
    );
    // Half begun, no daemon: flows not moved are found at their old sets.
    round();
    t.start_daemon().unwrap();
    wait_grown(&t, 65_536, 131_072);
    round();
    let answered = in_ns(&t.client, move || {
        (20_000..20_100u16)
            .filter(|p| udp_query(dns, *p, T).is_ok())
            .count()
    });
    assert_eq!(answered, 100);
    let broken = held.broken();
    assert!(
        broken.is_empty(),
        "connections broken or moved: {broken:?}\n{}",
        t.log()
    );
}

#[test]
fn a_restart_over_pins_of_another_layout_is_refused() {
    // Maps pinned by another version of lb whose layout differs with the
    // same sizes: adopting them would misread every entry.
    let Some(mut t) = topo("e2ly", &[1]) else {
        return;
    };
    t.start_daemon().unwrap();
    t.kill_daemon();
    let pin = std::path::Path::new("/sys/fs/bpf")
        .join(&t.tag)
        .join(lb_common::maps::LAYOUT);
    let data = aya::maps::MapData::from_pin(&pin).unwrap();
    let mut a: aya::maps::Array<aya::maps::MapData, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    assert_eq!(a.get(&0, 0).unwrap(), lb_common::LAYOUT_VERSION);
    a.set(0, lb_common::LAYOUT_VERSION + 1, 0).unwrap();
    let err = t.start_daemon().unwrap_err().to_string();
    assert!(err.contains("made by another version of lb"), "{err}");
    assert!(err.contains("run `lb stop` first"), "{err}");
}

#[test]
fn a_second_instance_on_an_interface_is_refused_and_leaves_nothing() {
    let Some(mut t) = topo("e2si", &[1]) else {
        return;
    };
    t.start_daemon().unwrap();
    let other = std::fs::read_to_string(t.pool_path())
        .unwrap()
        .replace("instance: e2si", "instance: e2six")
        .replace("/run/lb/e2si.sock", "/run/lb/e2six.sock")
        .replace("/secret", "/secret2");
    let path = t.dir.join("other.yaml");
    std::fs::write(&path, other).unwrap();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.lb))
        .arg(&t.lb_bin)
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("another XDP program is attached to `eth0`") && err.contains("`e2si`"),
        "{err}"
    );
    assert!(
        !std::path::Path::new("/sys/fs/bpf/e2six").exists(),
        "the failed start left its pins"
    );
    // The first instance carries on.
    let (seen, failed) = spread_http(&t, web(), 20);
    assert_eq!(failed, 0, "{seen:?}");
    // `ip netns exec` gives lb a private /sys without bpffs: refused with
    // the fix, rather than pinning into a bpffs that vanishes with it.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &t.lb])
        .arg(&t.lb_bin)
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("ip netns exec") && err.contains("nsenter --net="),
        "{err}"
    );
}

#[test]
fn lb_decap_needs_the_balancers_prefixes_or_an_explicit_any() {
    if root_env("end-to-end tests").is_none() {
        return;
    }
    // Refused before anything is loaded or attached.
    let out = std::process::Command::new(lb_bin())
        .args(["decap", "--interface", "lo", "--vip", "10.100.0.1:80/tcp"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--from any"), "{err}");
    // A VIP is an address, a port and a protocol: a bare address would
    // open every service of the backend to tunnels.
    let out = std::process::Command::new(lb_bin())
        .args([
            "decap",
            "--interface",
            "lo",
            "--from",
            "any",
            "--vip",
            "10.100.0.1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ADDRESS:PORT/PROTOCOL"), "{err}");
}

#[test]
fn bad_reload_keeps_the_running_configuration() {
    let Some(mut t) = topo("e2br", &[1, 1, 1]) else {
        return;
    };
    t.start_daemon().unwrap();
    let good = std::fs::read_to_string(t.pool_path()).unwrap();
    let bad = good
        .replace("weight: 1,", "weight: 0,")
        .replace("port: 53", "port: 53\n    bogus: 1");
    t.write_pool(&bad).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (seen, failed) = spread_http(&t, web(), 200);
    assert_eq!(failed, 0);
    assert_eq!(seen.len(), 3);
    let log = t.log();
    assert!(log.contains("reload rejected"), "{log}");
    assert!(
        log.contains("bogus"),
        "the error names the unknown field: {log}"
    );
    let st = t.status_json().unwrap();
    assert_eq!(vip(&st, "web")["backends"][0]["weight"], 1);
}

#[test]
fn a_reload_with_one_error_applies_none_of_its_valid_changes() {
    // A valid weight change to `web` and an error in `dns`, in one file:
    // the file is rejected whole, so `web` keeps its weights too.
    let Some(mut t) = topo("e2bp", &[1, 1, 1]) else {
        return;
    };
    t.start_daemon().unwrap();
    let good = std::fs::read_to_string(t.pool_path()).unwrap();
    let b1 = format!("address: {}, weight: 1,", t.backends[0].v4);
    assert_eq!(good.matches(&b1).count(), 3, "b1 in web, hold and dns");
    // Only web's b1 (its first occurrence) gets weight 8.
    let mut bad = good.replacen(
        &b1,
        &format!("address: {}, weight: 8,", t.backends[0].v4),
        1,
    );
    bad = bad.replace("protocol: udp", "protocol: udp\n    bogus: 1");
    assert_ne!(bad, good);
    t.write_pool(&bad).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let st = t.status_json().unwrap();
    let weights: Vec<_> = vip(&st, "web")["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [1, 1, 1], "web keeps its weights: {st}");
    // And the data path still spreads evenly: with weight 8, b1 would take
    // 80% of the connections.
    let n = 300;
    let (seen, failed) = spread_http(&t, web(), n);
    assert_eq!(failed, 0, "{seen:?}");
    assert_shares(&seen, &[1, 1, 1], n);
    let log = t.log();
    assert!(log.contains("reload rejected"), "{log}");
    assert!(log.contains("bogus"), "the error names the field: {log}");
}

#[test]
fn reloads_that_cannot_apply_whole_are_rejected_and_said_so() {
    let Some(mut t) = topo("e2rj", &[1, 1]) else {
        return;
    };
    t.start_daemon().unwrap();
    let good = std::fs::read_to_string(t.pool_path()).unwrap();
    let b1 = format!("address: {}, weight: 1,", t.backends[0].v4);
    let heavier = good.replacen(
        &b1,
        &format!("address: {}, weight: 9,", t.backends[0].v4),
        1,
    );
    let web_weights = |t: &Topology| -> Vec<u64> {
        let st = t.status_json().unwrap();
        vip(&st, "web")["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["weight"].as_u64().unwrap())
            .collect()
    };
    let cases = [
        // A valid weight change with a new hash secret file: one typo would
        // move flows away from the rest of an ECMP group.
        (
            heavier.replace("/secret", "/other-secret"),
            "`hash_secret_file` cannot change while running",
        ),
        (
            heavier.replace("xdp_mode: auto", "xdp_mode: generic"),
            "`xdp_mode` cannot change while running",
        ),
        // An interface that does not exist: nothing of the file is applied.
        (
            heavier.replace("interfaces: [eth0]", "interfaces: [eth0, nosuch0]"),
            "interface `nosuch0` not found",
        ),
        // Not text at all.
        (
            String::from_utf8_lossy(&[0xff, 0xfe]).into_owned(),
            "is not UTF-8 text",
        ),
    ];
    for (text, want) in cases {
        let bytes = match want {
            "is not UTF-8 text" => vec![0u8, 1, 0xff, 0xfe, b'\n'],
            _ => text.into_bytes(),
        };
        std::fs::write(t.pool_path(), bytes).unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        let log = t.log();
        assert!(log.contains(want), "`{want}` not in the log:\n{log}");
        assert_eq!(web_weights(&t), [1, 1], "nothing applied ({want})");
    }
    assert!(
        !std::path::Path::new(&t.dir.join("other-secret")).exists(),
        "no new secret was made"
    );
    // The file put right applies.
    t.write_pool(&heavier).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(web_weights(&t), [9, 1]);
    assert!(t.log().contains("tables rewritten"), "{}", t.log());
}

#[test]
fn the_control_socket_is_root_only_and_the_daemon_deletes_only_its_own() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let Some(mut t) = topo("e2sk", &[1]) else {
        return;
    };
    t.start_daemon().unwrap();
    let mode = std::fs::metadata(t.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // Another user: told permission denied, and cannot stop the daemon.
    let lb = t.dir.join("lb-copy");
    std::fs::copy(&t.lb_bin, &lb).unwrap();
    for args in [
        vec!["status", "--socket", t.socket().to_str().unwrap()],
        vec!["stop", "--instance", &t.tag],
    ] {
        let out = std::process::Command::new(&lb)
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} as nobody succeeded");
        assert!(err.contains("permission denied"), "{args:?}: {err}");
    }
    assert!(t.status_json().is_ok(), "the daemon still runs");
    let out = std::process::Command::new(&t.lb_bin)
        .args(["status", "--json", "--instance", &t.tag])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A pool whose control_socket is a file that is not a socket: refused,
    // the file left alone.
    let file = t.dir.join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let pool = std::fs::read_to_string(t.pool_path())
        .unwrap()
        .replace(&format!("instance: {}", t.tag), "instance: e2skx")
        .replace(&format!("/run/lb/{}.sock", t.tag), file.to_str().unwrap());
    let other = t.dir.join("other.yaml");
    std::fs::write(&other, pool).unwrap();
    let out = std::process::Command::new(&t.lb_bin)
        .args(["run", "--config", other.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn long_lived_connections_survive_pool_changes_and_drain() {
    let Some(mut t) = topo("e2cs", &[1, 1, 1]) else {
        return;
    };
    // Start with b1 and b2 only; then the steps below.
    let b = |i: usize| &t.backends[i];
    let yaml = |v: &[(&Host, u32, &str)]| pool_yaml(&t.tag, &t.dir, v);
    let initial = yaml(&[(b(0), 1, "active"), (b(1), 1, "active")]);
    let steps = [
        // (a) add b3
        yaml(&[
            (b(0), 1, "active"),
            (b(1), 1, "active"),
            (b(2), 1, "active"),
        ]),
        // (b) remove b1: its established connections carry on
        yaml(&[(b(1), 1, "active"), (b(2), 1, "active")]),
        // (c) change a weight
        yaml(&[(b(1), 3, "active"), (b(2), 1, "active")]),
        // drain b2: its connections carry on, new ones avoid it
        yaml(&[(b(1), 3, "drain"), (b(2), 1, "active")]),
    ];
    t.write_pool(&initial).unwrap();
    t.start_daemon().unwrap();
    let held = HeldConnections::open(&t, 40);
    assert_eq!(
        held.first.len(),
        2,
        "connections on both b1 and b2: {:?}",
        held.first
    );
    for step in steps {
        t.write_pool(&step).unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        held.round();
    }
    let (seen, failed) = spread_http(&t, web(), 100);
    assert_eq!(failed, 0);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["b3".to_string()],
        "new connections go to b3 only (b1 removed, b2 draining): {seen:?}"
    );
    // b1, removed from the file in step (b), is shown with the
    // connections it still carries.
    let st = t.status_json().unwrap();
    let b1 = t.backends[0].v4.to_string();
    let removed = vip(&st, "hold")["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == b1.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("b1 not shown: {st}"));
    assert_eq!(removed["state"], "removed", "{removed}");
    assert!(removed["active_flows"].as_u64().unwrap() > 0, "{removed}");
    let broken = held.broken();
    assert!(
        broken.is_empty(),
        "connections broken or moved: {broken:?}\n{}",
        t.log()
    );
}

#[test]
fn with_every_probe_failing_a_vip_in_panic_mode_keeps_serving() {
    // The checks are wrong, the servers are fine (as when an overloaded
    // network times every probe out): with a panic threshold the VIP keeps
    // sending to all its backends instead of dropping everything.
    let Some(mut t) = topo("e2pn", &[1, 1, 1]) else {
        return;
    };
    let yaml = std::fs::read_to_string(t.pool_path()).unwrap().replacen(
        "health_check: { kind: http, path: / }",
        "health_check: { kind: tcp, port: 81 }\n    panic_threshold: 50",
        1,
    );
    t.write_pool(&yaml).unwrap();
    t.start_daemon().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let st = t.status_json().unwrap();
    let web_status = vip(&st, "web");
    assert_eq!(web_status["state"], "panic", "{web_status}");
    assert!(
        web_status["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["health"] == "down"),
        "{web_status}"
    );
    let (seen, failed) = spread_http(&t, web(), 300);
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(seen.len(), 3, "every backend serves: {seen:?}");
    assert!(t.log().contains("panic threshold of 50%"), "{}", t.log());
}

#[test]
fn backends_next_hops_are_resolved_without_probes_and_released_on_stop() {
    let Some(mut t) = topo("e2nb", &[1, 1]) else {
        return;
    };
    // One VIP and no health checks: nothing on the balancer's own stack
    // talks to the backends, so only the daemon can get their MACs into
    // the neighbour table that the data path's FIB lookups read.
    let pool = std::fs::read_to_string(t.pool_path()).unwrap();
    let web_only = pool.split("  - name: hold").next().unwrap().replace(
        "health_check: { kind: http, path: / }",
        "health_check: { kind: none }",
    );
    t.write_pool(&web_only).unwrap();
    let neigh = |lb: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", lb, "neigh", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    sh(&format!("ip -n {} neigh flush all", t.lb)).unwrap();
    t.start_daemon().unwrap();
    let addrs: Vec<String> = t.backends.iter().map(|b| b.v4.to_string()).collect();
    let resolved = |shown: &str| {
        addrs.iter().all(|a| {
            shown.lines().any(|l| {
                l.starts_with(&format!("{a} ")) && l.contains("lladdr") && l.contains("managed")
            })
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !resolved(&neigh(&t.lb)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(resolved(&neigh(&t.lb)), "{}\n{}", neigh(&t.lb), t.log());
    // Every request reaches a backend, from the first.
    let (seen, failed) = spread_http(&t, web(), 200);
    assert_eq!(failed, 0, "{seen:?}\n{}", t.log());
    assert_eq!(seen.len(), 2, "{seen:?}");
    let st = t.status_json().unwrap();
    assert!(st["counters"]["drop_no_neigh"].is_null(), "{st}");
    // `lb stop` removes the entries the daemon made.
    let out = std::process::Command::new(&t.lb_bin)
        .args(["stop", "--instance", &t.tag])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!neigh(&t.lb).contains("managed"), "{}", neigh(&t.lb));
}

#[test]
fn passive_health_takes_out_a_backend_whose_syns_go_unanswered() {
    let Some(mut t) = topo("e2ph", &[1, 1]) else {
        return;
    };
    // b1's answers to the client go nowhere (a blackhole route on b1), while
    // its health checks, from the balancer, pass: only the clients' SYN
    // retransmissions show it.
    let pool = std::fs::read_to_string(t.pool_path()).unwrap();
    let with_passive = pool.replacen(
        "health_check: { kind: http, path: / }",
        "health_check: { kind: http, path: / }\n    passive_health: { window: 4s, min_samples: 5, failure_ratio: 0.5 }",
        1,
    );
    assert_ne!(pool, with_passive);
    t.write_pool(&with_passive).unwrap();
    // Logged as JSON lines, for log shippers.
    t.start_daemon_with(&["--log-format", "json"]).unwrap();
    let b1 = t.backends[0].ns.clone();
    sh(&format!("ip -n {b1} route add blackhole 10.10.0.10/32")).unwrap();
    // 30 connections at once: those Maglev gives b1 see no SYN-ACK, so
    // their clients retransmit the SYN after a second. (Once b1 is out,
    // a retransmitted SYN of a handshake that never completed is scheduled
    // anew, so some of them still succeed.)
    in_ns(&t.client, || {
        let handles: Vec<_> = (0..30)
            .map(|_| std::thread::spawn(|| http_get(web(), Duration::from_millis(2500))))
            .collect();
        for h in handles {
            let _ = h.join().unwrap();
        }
    });
    let b1_addr = t.backends[0].v4.to_string();
    let health_of = |t: &Topology| {
        let st = t.status_json().unwrap();
        vip(&st, "web")["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == b1_addr.as_str())
            .map(|b| b["health"].as_str().unwrap().to_string())
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while health_of(&t) != "down" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(health_of(&t), "down", "{}", t.log());
    let st = t.status_json().unwrap();
    let retransmits = |name: &str| {
        let addr = t
            .backends
            .iter()
            .find(|b| b.name == name)
            .unwrap()
            .v4
            .to_string();
        vip(&st, "web")["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == addr.as_str())
            .unwrap()["syn_retransmits"]
            .as_u64()
            .unwrap()
    };
    assert!(retransmits("b1") >= 5, "{st}");
    assert_eq!(retransmits("b2"), 0, "{st}");
    let lines: Vec<serde_json::Value> = t
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "WARN"
            && l["msg"].as_str().unwrap().contains("passive health:")
            && l["ts"].as_str().is_some()),
        "{}",
        t.log()
    );
    // Out: every new connection goes to b2 and succeeds.
    let (seen, failed) = spread_http(&t, web(), 50);
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec!["b2"], "{seen:?}");
    // b1 answers again: after the window and passing probes it is back.
    sh(&format!("ip -n {b1} route del blackhole 10.10.0.10/32")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while health_of(&t) != "up" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(health_of(&t), "up", "{}", t.log());
    let (seen, failed) = spread_http(&t, web(), 100);
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// The value of the sample `name{labels}` (labels exactly as exported:
/// in alphabetical order).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_endpoint_counts_what_the_clients_sent_and_passes_promtool() {
    let Some(mut t) = topo("e2mx", &[1, 1]) else {
        return;
    };
    let pool = std::fs::read_to_string(t.pool_path()).unwrap();
    let with_metrics = pool.replacen(
        "control_socket:",
        "metrics:\n  listen: \"127.0.0.1:9477\"\ncontrol_socket:",
        1,
    );
    t.write_pool(&with_metrics).unwrap();
    t.start_daemon().unwrap();
    let scrape = |t: &Topology| {
        in_ns(&t.lb, || {
            http_get_path("127.0.0.1:9477".parse().unwrap(), "/metrics", T)
        })
        .unwrap()
    };
    let n = 200;
    let (seen, failed) = spread_http(&t, web(), n);
    assert_eq!(failed, 0, "{seen:?}");
    // A rejected reload is counted too.
    t.write_pool(&with_metrics.replace("port: 53", "port: 53\n    bogus: 1"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let text = scrape(&t);
    let web_new = sample(&text, "lb_vip_new_flows_total", "vip=\"web\"");
    assert_eq!(web_new, Some(n as f64), "{text}");
    let pkts = sample(&text, "lb_vip_packets_total", "vip=\"web\"").unwrap();
    assert!(pkts >= 4.0 * n as f64, "{pkts} packets for {n} connections");
    // The backends' new flows add up to the VIP's, each as its clients saw.
    for b in &t.backends {
        let labels = format!("backend=\"{}\",vip=\"web\"", b.v4);
        let got = sample(&text, "lb_backend_new_flows_total", &labels).unwrap_or(0.0);
        assert_eq!(
            got,
            *seen.get(&b.name).unwrap_or(&0) as f64,
            "{labels}\n{text}"
        );
        assert_eq!(sample(&text, "lb_backend_up", &labels), Some(1.0));
        assert_eq!(sample(&text, "lb_backend_weight", &labels), Some(1.0));
    }
    assert_eq!(sample(&text, "lb_vip_up", "vip=\"web\""), Some(1.0));
    // The VIP's backends by health: the series kept at any size.
    assert_eq!(
        sample(&text, "lb_vip_backends", "health=\"up\",vip=\"web\""),
        Some(t.backends.len() as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lb_vip_backends", "health=\"down\",vip=\"web\""),
        Some(0.0)
    );
    assert_eq!(sample(&text, "lb_flow_table_capacity", ""), Some(65536.0));
    assert_eq!(
        sample(&text, "lb_reloads_total", "result=\"rejected\""),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, "lb_datapath_packets_total", "reason=\"new_flow\"").unwrap() >= n as f64);
    let probes_ok = format!(
        "backend=\"{}\",check=\"http:80/\",result=\"success\"",
        t.backends[0].v4
    );
    assert!(
        sample(&text, "lb_probes_total", &probes_ok).unwrap_or(0.0) > 0.0,
        "{text}"
    );
    assert!(text.contains("lb_probe_duration_seconds_bucket{"), "{text}");
    assert!(text.contains("lb_build_info{version="), "{text}");
    // Every exported name is listed for the dashboard's test, and the
    // exposition passes promtool's checks.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            lb_userspace::daemon::METRIC_NAMES.contains(&name),
            "{name} is exported but not in METRIC_NAMES"
        );
    }
    // (`http_get_path` trims the body; the exposition ends with a newline.)
    promtool(&["check", "metrics"], Some(&format!("{text}\n")));

    // `lb top` over the control socket while a client sends requests: two
    // plain frames, 80 columns, the VIP's rate seen.
    let client = t.client.clone();
    let load = std::thread::spawn(move || {
        in_ns(&client, || {
            let until = std::time::Instant::now() + Duration::from_millis(2800);
            while std::time::Instant::now() < until {
                let _ = http_get(web(), T);
            }
        })
    });
    let out = std::process::Command::new(&t.lb_bin)
        .args(["top", "--iterations", "2", "--socket"])
        .arg(t.socket())
        .output()
        .unwrap();
    load.join().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.lines().all(|l| l.chars().count() <= 80), "{shown}");
    let frames: Vec<&str> = shown.split("\n\n").collect();
    assert_eq!(frames.len(), 2, "{shown}");
    let web_row = frames[1]
        .lines()
        .find(|l| l.starts_with("web 10.100.0.1:80/tcp"))
        .unwrap_or_else(|| panic!("{shown}"));
    let pps: f64 = web_row
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches('k')
        .parse()
        .unwrap();
    assert!(pps > 0.0, "{web_row}");
    for b in &t.backends {
        assert!(frames[1].contains(&format!("  {} ", b.v4)), "{shown}");
    }
    // On a terminal it is a full-screen view that `q` quits.
    let started = std::time::Instant::now();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(sleep 1.5; printf p; sleep 0.5; printf q) | script -qec '{} top --socket {}' /dev/null",
            t.lb_bin.display(),
            t.socket().display()
        ))
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(screen.contains("sort: packets/s"), "{screen}");
    assert!(
        screen.contains("\x1b[?1049h"),
        "no alternate screen: {screen}"
    );
}

/// Runs promtool (Debian's `prometheus` package, which `cargo xtask test`
/// installs); asserts it passes. Skipped with a note without promtool
/// outside `cargo xtask test`.
fn promtool(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("LB_REQUIRE_ROOT_TESTS").is_none(),
            "promtool is missing (apt-get install prometheus)"
        );
        eprintln!("promtool not installed: check skipped");
        return;
    }
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn all_backends_down_drops_fast_and_status_shows_it() {
    let Some(mut t) = topo("e2dn", &[1, 1]) else {
        return;
    };
    t.start_daemon().unwrap();
    t.kill_server("b1");
    t.kill_server("b2");
    std::thread::sleep(Duration::from_millis(1200));
    let r = in_ns(&t.client, || http_get(web(), Duration::from_millis(500)));
    assert!(r.is_err(), "no backend: the connection cannot succeed");
    let st = t.status_json().unwrap();
    assert_eq!(vip(&st, "web")["state"], "down", "{st}");
    assert!(
        st["counters"]["drop_no_backend"].as_u64().unwrap_or(0) > 0,
        "{st}"
    );
    assert_eq!(vip(&st, "web")["listed"], true, "a small pool is listed");
    // The other scopes: counts only, and one VIP.
    let status = |args: &[&str]| {
        let out = std::process::Command::new(&t.lb_bin)
            .arg("status")
            .args(args)
            .arg("--socket")
            .arg(t.socket())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = status(&["--summary", "--json"]);
    assert!(ok, "{out}");
    let sum: serde_json::Value = serde_json::from_str(&out).unwrap();
    let web_sum = vip(&sum, "web");
    assert_eq!(web_sum["listed"], false, "{out}");
    assert_eq!(
        web_sum["backends"].as_array().map(Vec::len),
        Some(0),
        "{out}"
    );
    assert_eq!(web_sum["counts"]["backends"], 2, "{out}");
    assert_eq!(web_sum["counts"]["down"], 2, "{out}");
    assert_eq!(web_sum["counts"]["up"], 0, "{out}");
    let weights: u64 = vip(&st, "web")["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["weight"].as_u64())
        .sum();
    assert_eq!(web_sum["counts"]["weight"], weights, "{out}");
    let (ok, out) = status(&["--summary"]);
    assert!(
        ok && out.contains("2 down") && out.contains("backends not listed"),
        "{out}"
    );
    let (ok, out) = status(&["--vip", "web", "--json"]);
    assert!(ok, "{out}");
    let one: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = one["vips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["web"], "{out}");
    let addresses = |v: &serde_json::Value| -> Vec<String> {
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["address"].to_string())
            .collect()
    };
    assert_eq!(
        addresses(vip(&one, "web")),
        addresses(vip(&st, "web")),
        "{out}"
    );
    assert_eq!(addresses(vip(&one, "web")).len(), 2, "{out}");
    let (ok, out) = status(&["--vip", "nope"]);
    assert!(!ok && out.contains("no VIP named `nope`"), "{out}");
    // Into a pipe whose reader is gone (`lb status | head`): a quiet end.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} status --socket {} | true",
            t.lb_bin.display(),
            t.socket().display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

#[test]
fn source_hash_sends_a_client_to_one_backend_through_either_node() {
    let Some(mut t) = topo("e2sh", &[1, 1, 1]) else {
        return;
    };
    let with_source_hash = |yaml: String| {
        yaml.replacen(
            "    port: 80\n    protocol: tcp\n",
            "    port: 80\n    protocol: tcp\n    scheduler: source_hash\n",
            1,
        )
    };
    let pool = with_source_hash(std::fs::read_to_string(t.pool_path()).unwrap());
    assert!(pool.contains("scheduler: source_hash"));
    t.write_pool(&pool).unwrap();
    t.start_daemon().unwrap();
    t.add_second_balancer().unwrap();
    let hosts: Vec<_> = t.backends.iter().map(|h| (h, 1, "active")).collect();
    let tag2 = format!("{}2", t.tag);
    let yaml2 = with_source_hash(pool_yaml(&tag2, &t.dir, &hosts));
    let sock2 = std::path::PathBuf::from(format!("/run/lb/{tag2}.sock"));
    t.start_second_daemon(&yaml2, &sock2).unwrap();
    // Every connection of the one client (its own source ports) reaches
    // one backend, through node 1 and then through node 2.
    let (via1, failed) = spread_http(&t, web(), 60);
    assert_eq!(failed, 0, "{via1:?}");
    t.route_via(LB4_2, LB6_2).unwrap();
    let (via2, failed) = spread_http(&t, web(), 60);
    assert_eq!(failed, 0, "{via2:?}");
    assert_eq!(via1.len(), 1, "one client, one backend: {via1:?}");
    assert_eq!(
        via1.keys().collect::<Vec<_>>(),
        via2.keys().collect::<Vec<_>>(),
        "{via1:?} {via2:?}"
    );
}

#[test]
fn two_balancers_sharing_pool_and_secret_send_a_flow_to_the_same_backend() {
    // Scale-out behind ECMP: whichever node a flow reaches, it must reach the
    // same backend. The second node has never seen these flows.
    let Some(mut t) = topo("e2ec", &[1, 1, 2]) else {
        return;
    };
    t.start_daemon().unwrap();
    t.add_second_balancer().unwrap();
    let hosts: Vec<_> = t
        .backends
        .iter()
        .zip([1, 1, 2])
        .map(|(h, w)| (h, w, "active"))
        .collect();
    let tag2 = format!("{}2", t.tag);
    let yaml2 = pool_yaml(&tag2, &t.dir, &hosts);
    let sock2 = std::path::PathBuf::from(format!("/run/lb/{tag2}.sock"));
    t.start_second_daemon(&yaml2, &sock2).unwrap();

    let ask = |t: &Topology| {
        let dns: SocketAddr = format!("{VIP4}:53").parse().unwrap();
        in_ns(&t.client, move || {
            let mut failed = 0;
            (0..400u16)
                .map_while(|i| {
                    let r = udp_query(dns, 41000 + i, T);
                    failed += r.is_err() as usize;
                    (failed <= MAX_FAILURES).then(|| r.unwrap_or_else(|e| format!("error: {e}")))
                })
                .collect::<Vec<String>>()
        })
    };
    let via1 = ask(&t);
    t.route_via(LB4_2, LB6_2).unwrap();
    let via2 = ask(&t);
    assert!(via1.iter().all(|b| b.starts_with('b')), "{via1:?}");
    let spread: std::collections::BTreeSet<&String> = via1.iter().collect();
    assert_eq!(spread.len(), 3, "all backends take flows: {spread:?}");
    let differ: Vec<(usize, &String, &String)> = via1
        .iter()
        .zip(&via2)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, a, b))
        .collect();
    assert!(
        differ.is_empty(),
        "flows that changed backend with the node: {differ:?}"
    );
    // And the second node really carried them.
    let st2: serde_json::Value = serde_json::from_slice(
        &std::process::Command::new(&t.lb_bin)
            .args(["status", "--json", "--socket"])
            .arg(&sock2)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        vip(&st2, "dns")["new_flows"].as_u64().unwrap() >= 400,
        "{st2}"
    );
}

/// The client's route to `VIP4`, as `ip route` shows it.
fn vip_route(t: &Topology) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", &t.client, "route", "show", VIP4])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the client's route to `VIP4` goes via exactly `nodes`;
/// returns how long that took.
fn wait_route(t: &Topology, nodes: &[&str]) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let r = vip_route(t);
        let via: Vec<&str> = [LB4, LB4_2]
            .into_iter()
            .filter(|a| r.contains(&format!("via {a} ")))
            .collect();
        if via == nodes {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "route to {VIP4} is {r:?}, waiting for via {nodes:?}\nrouter: {}",
            t.birdc(&t.client, "show protocols")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn behind_ecmp_and_bgp_losing_a_node_breaks_no_connection() {
    // The client's namespace is the router: BIRD (deploy/bird/router.conf)
    // learns the VIP from both balancer nodes over BGP (with BFD) and
    // installs one ECMP route hashed on ports. Each node runs BIRD
    // (deploy/bird/bird.conf) and `lb` with the same pool and secret.
    if std::process::Command::new("bird")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("LB_REQUIRE_ROOT_TESTS").is_none(),
            "bird is missing (apt-get install bird2)"
        );
        return;
    }
    let Some(mut t) = topo("e2bg", &[1, 1, 1]) else {
        return;
    };
    t.add_second_balancer().unwrap();
    let lb2 = t.lb2.clone().unwrap();
    let (lb1, client) = (t.lb.clone(), t.client.clone());
    sh(&format!(
        "ip -n {client} route del 10.100.0.0/24 && ip netns exec {client} sysctl -qw net.ipv4.fib_multipath_hash_policy=1"
    ))
    .unwrap();
    let node_conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/bird/bird.conf"
    ))
    .unwrap();
    let router_conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/bird/router.conf"
    ))
    .unwrap();
    let announce = |t: &Topology, node: &str| {
        format!(
            "announce:\n  bird_include: {}/{node}-vips.conf\n  bird_socket: {}\ncontrol_socket:",
            t.dir.display(),
            t.bird_socket(node).display()
        )
    };
    let pool1 = std::fs::read_to_string(t.pool_path()).unwrap().replacen(
        "control_socket:",
        &announce(&t, &lb1),
        1,
    );
    t.write_pool(&pool1).unwrap();
    let hosts: Vec<_> = t.backends.iter().map(|h| (h, 1, "active")).collect();
    let tag2 = format!("{}2", t.tag);
    let pool2 =
        pool_yaml(&tag2, &t.dir, &hosts).replacen("control_socket:", &announce(&t, &lb2), 1);
    let sock2 = std::path::PathBuf::from(format!("/run/lb/{tag2}.sock"));
    // Each node's BIRD includes the file its daemon writes (a pattern, so
    // BIRD starts before the daemon has written it).
    let dir = t.dir.clone();
    let node_bird = |node: &str, id: &str| {
        let pattern = dir.join(format!("{node}-vips.con[f]"));
        node_conf
            .replace("/run/bird/lb-lb0.con[f]", pattern.to_str().unwrap())
            .replace("router id 10.10.0.2;", &format!("router id {id};"))
    };
    for (node, id) in [(lb1.clone(), LB4), (lb2.clone(), LB4_2)] {
        let conf = node_bird(&node, id);
        t.start_bird(&node, &conf).unwrap();
    }
    t.start_bird(&client, &router_conf).unwrap();
    t.start_daemon().unwrap();
    t.start_second_daemon(&pool2, &sock2).unwrap();
    let took = wait_route(&t, &[LB4, LB4_2]);
    eprintln!("ECMP route through both nodes after {took:?}");

    // Long-lived connections, spread over both nodes by the router.
    let hold: SocketAddr = format!("{VIP4}:9000").parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (rtx, rrx) = std::sync::mpsc::channel::<Vec<usize>>();
    let c2 = client.clone();
    let worker = std::thread::spawn(move || {
        in_ns(&c2, move || {
            use std::io::{BufRead, BufReader, Write};
            let mut conns = Vec::new();
            for _ in 0..40 {
                let s = std::net::TcpStream::connect_timeout(&hold, T).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                writeln!(w, "hi").unwrap();
                let mut name = String::new();
                r.read_line(&mut name).unwrap();
                conns.push((w, r, name.trim().to_string()));
            }
            rtx.send(vec![]).unwrap();
            // Each round: the indices of connections that broke or moved.
            while rx.recv().is_ok() {
                let mut broken = Vec::new();
                for (i, (w, r, first)) in conns.iter_mut().enumerate() {
                    let mut name = String::new();
                    if writeln!(w, "again").is_err()
                        || r.read_line(&mut name).is_err()
                        || name.trim() != first
                    {
                        broken.push(i);
                    }
                }
                rtx.send(broken).unwrap();
            }
        })
    });
    rrx.recv().unwrap();
    // Short requests all along; when each failure happened.
    let stop_requests = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, c3) = (stop_requests.clone(), client.clone());
    let requests = std::thread::spawn(move || {
        in_ns(&c3, move || {
            let (mut ok, mut failed_at) = (0usize, Vec::new());
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                match http_get(web(), T) {
                    Ok(_) => ok += 1,
                    Err(_) => failed_at.push(std::time::Instant::now()),
                }
            }
            (ok, failed_at)
        })
    });
    let round = |what: &str| {
        tx.send(()).unwrap();
        let broken = rrx.recv().unwrap();
        assert!(
            broken.is_empty(),
            "{what}: held connections broken or moved: {broken:?}"
        );
    };
    round("both nodes up");
    let new_flows = |sock: &std::path::Path| {
        let out = std::process::Command::new(&t.lb_bin)
            .args(["status", "--json", "--socket"])
            .arg(sock)
            .output()
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        vip(&st, "hold")["new_flows"].as_u64().unwrap()
    };
    let (on1, on2) = (new_flows(&t.socket()), new_flows(&sock2));
    assert!(
        on1 > 0 && on2 > 0,
        "ECMP sends connections to both nodes: {on1} and {on2}"
    );

    // (1) Node 1 dies: its link first (so no FIN from its dying BIRD tells
    // the router: BFD must notice), then its daemon and BIRD.
    let died = std::time::Instant::now();
    sh(&format!("ip -n {lb1} link set eth0 down")).unwrap();
    t.kill_daemon();
    t.kill_bird(&lb1);
    wait_route(&t, &[LB4_2]);
    let converged = died.elapsed();
    eprintln!("node 1 lost: the router sends everything to node 2 after {converged:?}");
    round("after node 1 died");
    let (seen, failed) = spread_http(&t, web(), 50);
    assert_eq!(failed, 0, "new connections after convergence: {seen:?}");

    // (2) Node 1 comes back (its daemon adopts the pinned state).
    sh(&format!("ip -n {lb1} link set eth0 up")).unwrap();
    // As after a reboot: nothing to announce until the daemon says so.
    std::fs::remove_file(t.dir.join(format!("{lb1}-vips.conf"))).unwrap();
    let conf = node_bird(&lb1, LB4);
    t.start_bird(&lb1, &conf).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        vip_route(&t).matches("via").count(),
        1,
        "node 1's BIRD announced before its daemon ran: {}",
        vip_route(&t)
    );
    t.start_daemon().unwrap();
    let back = wait_route(&t, &[LB4, LB4_2]);
    eprintln!("node 1 back in the ECMP route after {back:?}");
    round("after node 1 came back");

    // (3) Node 2 drains: withdrawn, still forwarding what arrives.
    let out = std::process::Command::new(&t.lb_bin)
        .args(["drain-node", "--socket"])
        .arg(&sock2)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_route(&t, &[LB4]);
    round("after node 2 drained");
    let out = std::process::Command::new(&t.lb_bin)
        .args(["drain-node", "--undo", "--socket"])
        .arg(&sock2)
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_route(&t, &[LB4, LB4_2]);
    round("after node 2 announced again");

    // (4) Every backend fails node 1's checks (their answers to node 1 go
    // nowhere): node 1 withdraws the VIP address; node 2 still serves it.
    for b in &t.backends {
        sh(&format!("ip -n {} route add blackhole {LB4}/32", b.ns)).unwrap();
    }
    wait_route(&t, &[LB4_2]);
    round("after node 1 lost its backends");
    // Healthy again: announced again.
    for b in &t.backends {
        sh(&format!("ip -n {} route del blackhole {LB4}/32", b.ns)).unwrap();
    }
    wait_route(&t, &[LB4, LB4_2]);
    round("after node 1's backends came back");
    stop_requests.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed_at) = requests.join().unwrap();
    // New connections failed only while the router had not yet noticed the
    // dead node (and their client's timeout ran out).
    let late: Vec<Duration> = failed_at
        .iter()
        .map(|f| f.saturating_duration_since(died))
        .filter(|d| *d > converged + T + Duration::from_millis(500))
        .collect();
    eprintln!(
        "{ok} short requests succeeded, {} failed around the node's loss",
        failed_at.len()
    );
    assert!(ok > 50, "{ok} requests");
    assert!(
        late.is_empty() && failed_at.iter().all(|f| *f >= died),
        "failures outside the convergence: {late:?}"
    );
    drop(tx);
    worker.join().unwrap();
    // `lb stop` on node 2 withdraws its announcement: node 1 is left.
    let out = std::process::Command::new(&t.lb_bin)
        .args(["stop", "--instance", &tag2])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_route(&t, &[LB4]);
}

/// The pool file of `t` with `setting` (YAML lines, indented as a VIP's
/// fields) added to the VIP on `port`/tcp.
fn with_vip_setting(yaml: &str, port: u16, setting: &str) -> String {
    let at = format!("    port: {port}\n    protocol: tcp\n");
    assert!(yaml.contains(&at), "no VIP on port {port}");
    yaml.replacen(&at, &format!("{at}{setting}"), 1)
}

/// One short conversation with the `hold` VIP: the backend's name.
fn hold_once(addr: SocketAddr) -> anyhow::Result<String> {
    Held::open(addr, T).map(|h| h.backend)
}

/// The `connections` `lb status` shows for each backend of VIP `name`.
fn connections(t: &Topology, name: &str) -> BTreeMap<String, u64> {
    let st = t.status_json().unwrap();
    vip(&st, name)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let c = b["connections"].as_u64();
            (
                b["address"].as_str().unwrap().to_string(),
                c.unwrap_or_else(|| panic!("{b}")),
            )
        })
        .collect()
}

#[test]
fn least_connections_sends_short_connections_around_a_backend_holding_long_ones() {
    let Some(mut t) = topo("e2lc", &[1, 1, 1]) else {
        return;
    };
    let hold: SocketAddr = format!("{VIP4}:9000").parse().unwrap();
    let lc = "    scheduler: least_connections\n";
    let only_b1 = pool_yaml(&t.tag, &t.dir, &[(&t.backends[0], 1, "active")]);
    t.write_pool(&with_vip_setting(&only_b1, 9000, lc)).unwrap();
    t.start_daemon().unwrap();
    // 20 long-lived connections, all on b1 (the only backend yet).
    let client = t.client.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (rtx, rrx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        in_ns(&client, move || {
            let mut conns: Vec<Held> = (0..20).map(|_| Held::open(hold, T).unwrap()).collect();
            rtx.send(conns.iter().map(|c| c.backend.clone()).collect::<Vec<_>>())
                .unwrap();
            rx.recv().unwrap();
            conns
                .iter_mut()
                .map(|c| c.still_served())
                .filter(|ok| !ok)
                .count()
        })
    });
    let names = rrx.recv().unwrap();
    assert!(names.iter().all(|n| n == "b1"), "{names:?}");
    let all = pool_yaml(
        &t.tag,
        &t.dir,
        &t.backends
            .iter()
            .map(|h| (h, 1, "active"))
            .collect::<Vec<_>>(),
    );
    t.write_pool(&with_vip_setting(&all, 9000, lc)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let b1 = t.backends[0].v4.to_string();
    let held = connections(&t, "hold");
    assert_eq!(held[&b1], 20, "{held:?}");
    // 90 short connections, one after another: b1, holding 20, gets one
    // only when both choices fall on it (about 1 in 9).
    let (seen, failed) = in_ns(&t.client, move || tally(90, |_| hold_once(hold)));
    assert_eq!(failed, 0, "{seen:?}");
    let on_b1 = *seen.get("b1").unwrap_or(&0);
    assert!(on_b1 <= 20, "b1 got {on_b1} of 90: {seen:?}");
    assert!(
        seen.get("b2").is_some_and(|n| *n >= 25) && seen.get("b3").is_some_and(|n| *n >= 25),
        "{seen:?}"
    );
    // The short ones ended (the clients' FINs): only the long ones count.
    std::thread::sleep(Duration::from_millis(300));
    let after = connections(&t, "hold");
    assert_eq!(after[&b1], 20, "{after:?}");
    assert_eq!(after.values().sum::<u64>(), 20, "{after:?}");
    tx.send(()).unwrap();
    assert_eq!(
        worker.join().unwrap(),
        0,
        "long connections broken or moved"
    );
    // Closed: nothing counted.
    std::thread::sleep(Duration::from_millis(300));
    let closed = connections(&t, "hold");
    assert_eq!(closed.values().sum::<u64>(), 0, "{closed:?}");
}

#[test]
fn persistence_keeps_a_client_on_one_backend_across_connections_and_pool_changes() {
    let Some(mut t) = topo("e2ps", &[1, 1, 1]) else {
        return;
    };
    let sticky = "    persistence: { timeout: 300s }\n";
    let (tag, dir, backends) = (t.tag.clone(), t.dir.clone(), t.backends.clone());
    // Probes that a loaded host cannot fail by lateness: a backend that
    // went down for two late probes would move the client, rightly, and
    // this test is about persistence, not health.
    let patient = "health_check: { kind: http, path: /, interval: 500ms, timeout: 500ms, fall: 5 }";
    let pool = |w: &[(u32, &'static str)]| {
        let hosts: Vec<_> = backends
            .iter()
            .zip(w)
            .map(|(h, (w, s))| (h, *w, *s))
            .collect();
        let yaml = pool_yaml(&tag, &dir, &hosts);
        let yaml = yaml.replacen("health_check: { kind: http, path: / }", patient, 1);
        assert!(
            yaml.contains(patient),
            "the web VIP's check is not where it was"
        );
        with_vip_setting(&yaml, 80, sticky)
    };
    let first_pool = pool(&[(1, "active"), (1, "active"), (1, "active")]);
    t.write_pool(&first_pool).unwrap();
    t.start_daemon().unwrap();
    // 100 connections of the one client: one backend.
    let (seen, failed) = spread_http(&t, web(), 100);
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(seen.len(), 1, "one client, one backend: {seen:?}");
    let home = seen.keys().next().unwrap().clone();
    // Until `web` shows backend `i` with `weight` and `state`: the reload
    // applied (waiting on it, not on a fixed time: a loaded host reloads
    // later).
    let applied = |i: usize, weight: u64, state: &str| {
        let addr = t.backends[i].v4.to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let st = t.status_json().unwrap();
            let b = vip(&st, "web")["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["address"] == addr.as_str())
                .cloned()
                .unwrap_or_default();
            if b["weight"] == weight && b["state"] == state {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "backend {addr} not at weight {weight}, {state} 10 s after the reload: {b}\n{}",
                t.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The Maglev table changes (new weights): the client stays.
    t.write_pool(&pool(&[(1, "active"), (3, "active"), (2, "active")]))
        .unwrap();
    applied(1, 3, "active");
    let (seen, failed) = spread_http(&t, web(), 50);
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec![&home], "{seen:?}");
    // Its backend is drained: the client moves, to one other backend.
    let mut w = [(1, "active"), (3, "active"), (2, "active")];
    let i: usize = home[1..].parse::<usize>().unwrap() - 1;
    w[i].1 = "drain";
    t.write_pool(&pool(&w)).unwrap();
    applied(i, w[i].0 as u64, "drain");
    let (seen, failed) = spread_http(&t, web(), 50);
    // What the daemon saw and did, should the client have moved twice.
    let why = || {
        let st = t.status_json().unwrap_or_default();
        format!("{}\n{}\n{}", vip(&st, "web"), st["counters"], t.log())
    };
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(seen.len(), 1, "{seen:?}\n{}", why());
    assert!(!seen.contains_key(&home), "{seen:?}\n{}", why());
}

#[test]
fn l2_direct_return_and_gue_spread_by_weight_and_an_off_link_backend_is_refused() {
    let weights = [1, 1, 2];
    let Some(mut t) = topo("e2fm", &weights) else {
        return;
    };
    // web by L2 direct return, dns by GUE (the backends' `lb decap` takes
    // GUE on its default port, as the balancer's default gue_port).
    let pool = with_vip_setting(
        &std::fs::read_to_string(t.pool_path()).unwrap(),
        80,
        "    forwarding: dsr_l2\n",
    )
    .replacen(
        "    port: 53\n    protocol: udp\n",
        "    port: 53\n    protocol: udp\n    forwarding: gue\n",
        1,
    );
    assert!(pool.contains("forwarding: gue"));
    t.write_pool(&pool).unwrap();
    t.start_daemon().unwrap();
    assert_web_and_dns_spread(&t, web(), &weights, 1200);
    let dns: SocketAddr = format!("{VIP4}:53").parse().unwrap();
    // Without the backends' decapsulators, L2 direct return still serves
    // (nothing is tunnelled), and GUE does not (it is).
    t.remove_decap().unwrap();
    let (seen, failed) = spread_http(&t, web(), 100);
    assert_eq!(failed, 0, "{seen:?}");
    let short = Duration::from_millis(300);
    let lost = in_ns(&t.client, move || udp_query(dns, 31000, short).is_err());
    assert!(lost, "a GUE packet was answered without a decapsulator");
    // A dsr_l2 backend off this segment: the reload is refused, with why.
    let off = pool.replacen(
        &format!("      - {{ address: {}, weight: 1, state: active }}\n", t.backends[0].v4),
        &format!(
            "      - {{ address: {}, weight: 1, state: active }}\n      - {{ address: 10.99.0.1 }}\n",
            t.backends[0].v4
        ),
        1,
    );
    assert_ne!(off, pool);
    t.write_pool(&off).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let log = t.log();
    assert!(
        log.contains("backend 10.99.0.1 of VIP `web` (forwarding: dsr_l2) is not on a network"),
        "{log}"
    );
    let (seen, failed) = spread_http(&t, web(), 100);
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// `yaml` with VIP `name` forwarded by NAT from `snat`, its port `vport`
/// and its backends' `bport`.
fn natted(yaml: &str, name: &str, snat: &str, vport: u16, bport: u16) -> String {
    let start = yaml.find(&format!("  - name: {name}\n")).expect("the VIP");
    let end = yaml[start + 4..]
        .find("  - name: ")
        .map_or(yaml.len(), |i| start + 4 + i);
    let block = &yaml[start..end];
    let proto_line = block
        .lines()
        .find(|l| l.starts_with("    protocol: "))
        .unwrap();
    let port_line = block.lines().find(|l| l.starts_with("    port: ")).unwrap();
    let new = block
        .replacen(port_line, &format!("    port: {vport}"), 1)
        .replacen(
            proto_line,
            &format!("{proto_line}\n    forwarding: nat\n    snat_addresses: [\"{snat}\"]"),
            1,
        )
        .replace(
            " state: active }",
            &format!(" state: active, port: {bport} }}"),
        );
    format!("{}{new}{}", &yaml[..start], &yaml[end..])
}

#[test]
fn nat_serves_backends_that_have_nothing_configured_and_keeps_connections() {
    let weights = [1, 1, 2];
    let Some(mut t) = topo("e2nt", &weights) else {
        return;
    };
    t.strip_backends().unwrap();
    // web on 8080 to the backends' 80, web6 likewise; dns, hold and the
    // backend server's stream on their own ports; all from the balancer's
    // own addresses.
    let nat = |yaml: &str| {
        let y = natted(&with_stream_vip(yaml), "web", LB4, 8080, 80);
        let y = natted(&y, "web6", LB6, 8080, 80);
        let y = natted(&y, "dns", LB4, 53, 53);
        let y = natted(&y, "hold", LB4, 9000, 9000);
        natted(&y, "stream", LB4, 9100, 9100)
    };
    let pool = nat(&std::fs::read_to_string(t.pool_path()).unwrap());
    t.write_pool(&pool).unwrap();
    t.start_daemon().unwrap();
    let web8080: SocketAddr = format!("{VIP4}:8080").parse().unwrap();
    let n = 900;
    assert_web_and_dns_spread(&t, web8080, &weights, n);
    let web6: SocketAddr = format!("[{VIP6}]:8080").parse().unwrap();
    let (seen6, failed) = spread_http(&t, web6, 300);
    assert_eq!(
        failed,
        0,
        "{seen6:?}\n{}",
        t.status_json().unwrap()["counters"]
    );
    assert_eq!(seen6.len(), 3, "{seen6:?}");
    // 20 long-lived connections through NAT, through a pool change and a
    // daemon SIGKILL and restart: the NAT state lives in pinned maps.
    let held = Holding::open(&t, format!("{VIP4}:9000").parse().unwrap(), 20);
    t.write_pool(&nat(&weighted_pool(&t, &[3, 1, 1]))).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    held.check("a weight change");
    t.kill_daemon();
    std::thread::sleep(Duration::from_millis(500));
    held.check("the daemon killed");
    t.start_daemon().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    held.check("the daemon restarted");
    held.finish();
    // A bulk stream back through NAT: every segment's checksum rewritten
    // right (it crawled at a few KB/s when the balancer's veth was handed
    // merged segments with unfinished checksums).
    let stream: SocketAddr = format!("{VIP4}:9100").parse().unwrap();
    let (bytes, secs) = in_ns(&t.client, move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&stream, T).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let (start, mut n, mut buf) = (std::time::Instant::now(), 0usize, vec![0u8; 1 << 16]);
        while n < 64 << 20 && start.elapsed() < Duration::from_secs(20) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        (n, start.elapsed().as_secs_f64())
    });
    assert!(
        bytes >= 64 << 20,
        "{bytes} bytes through NAT in {secs:.1} s"
    );
    let (seen, failed) = spread_http(&t, web8080, 200);
    assert_eq!(
        failed,
        0,
        "{seen:?}\n{}",
        t.status_json().unwrap()["counters"]
    );
    let st = t.status_json().unwrap();
    let replies = st["counters"]["nat_reply"].as_u64().unwrap_or(0);
    assert!(replies > 2 * n as u64, "{st}");
    // The handshakes the data path timed, per backend (sampled each second).
    std::thread::sleep(Duration::from_millis(1500));
    let (_, failed) = spread_http(&t, web8080, 100);
    assert_eq!(failed, 0);
    std::thread::sleep(Duration::from_millis(1500));
    let st = t.status_json().unwrap();
    for b in vip(&st, "web")["backends"].as_array().unwrap() {
        let ms = b["handshake_ms"].as_f64().unwrap_or_else(|| panic!("{b}"));
        assert!(ms > 0.0 && ms < 100.0, "{b}");
        assert_eq!(b["refused"], 0, "{b}");
    }
}

#[test]
fn nat_two_armed_clients_and_backends_on_separate_interfaces() {
    // Clients on eth0, backends on a network of their own behind eth1:
    // a new flow leaves by the other interface (a redirect), and each
    // reply is sent back out of the interface its flow came in on.
    let weights = [1, 1, 2];
    let Some(mut t) = topo("e2n2", &weights) else {
        return;
    };
    t.strip_backends().unwrap();
    t.two_armed().unwrap();
    let pool =
        weighted_pool(&t, &weights).replace("interfaces: [eth0]", "interfaces: [eth0, eth1]");
    let pool = natted(&pool, "web", LB4_BACK, 8080, 80);
    let pool = natted(&pool, "web6", LB6_BACK, 8080, 80);
    let pool = natted(&pool, "dns", LB4_BACK, 53, 53);
    t.write_pool(&pool).unwrap();
    t.start_daemon().unwrap();
    let web8080: SocketAddr = format!("{VIP4}:8080").parse().unwrap();
    let n = 600;
    assert_web_and_dns_spread(&t, web8080, &weights, n);
    let web6: SocketAddr = format!("[{VIP6}]:8080").parse().unwrap();
    let (seen6, failed) = spread_http(&t, web6, 300);
    assert_eq!(failed, 0, "{seen6:?}");
    assert_eq!(seen6.len(), 3, "{seen6:?}");
    let st = t.status_json().unwrap();
    let c = &st["counters"];
    // Every forwarded packet and every reply changed interface: each was
    // redirected, none left by the one it came in on (zero counters are
    // left out of the report).
    let n_of = |name: &str| c[name].as_u64().unwrap_or(0);
    assert_eq!(n_of("tx"), 0, "{c}");
    assert!(n_of("nat_reply") > 2 * n as u64, "{c}");
    assert_eq!(
        n_of("redirect"),
        n_of("new_flow") + n_of("flow_hit") + n_of("nat_reply"),
        "{c}"
    );
}

/// `yaml` with a VIP `stream`: the `hold` VIP's block on port 9100 (the
/// backend server's stream).
fn with_stream_vip(yaml: &str) -> String {
    let start = yaml.find("  - name: hold\n").expect("the hold VIP");
    let end = yaml[start + 4..]
        .find("  - name: ")
        .map_or(yaml.len(), |i| start + 4 + i);
    let block = yaml[start..end]
        .replacen("  - name: hold\n", "  - name: stream\n", 1)
        .replacen("    port: 9000\n", "    port: 9100\n", 1);
    format!("{yaml}{block}")
}

/// `yaml` with VIP `name` stateless (GUE, its slots' previous backends).
fn stateless(yaml: &str, name: &str) -> String {
    let start = yaml.find(&format!("  - name: {name}\n")).expect("the VIP");
    let at = start + yaml[start..].find("    protocol: tcp\n").unwrap() + 18;
    format!(
        "{}    forwarding: gue\n    state: stateless\n{}",
        &yaml[..at],
        &yaml[at..]
    )
}

/// `yaml` with VIP `name`'s own table of `size` slots (`maglev_size`).
fn table_size(yaml: &str, name: &str, size: u32) -> String {
    let start = yaml.find(&format!("  - name: {name}\n")).expect("the VIP");
    let at = start + yaml[start..].find("    protocol: tcp\n").unwrap() + 18;
    format!("{}    maglev_size: {size}\n{}", &yaml[..at], &yaml[at..])
}

#[test]
fn stateless_connections_survive_pool_changes_and_a_restart_with_no_flow_table() {
    // Four backends, three in the pool at first.
    let Some(mut t) = topo("e2sl", &[1, 1, 1, 1]) else {
        return;
    };
    t.forwarding_backends().unwrap();
    let pool_of = |t: &Topology, hosts: &[(usize, u32, &str)]| {
        let hosts: Vec<_> = hosts
            .iter()
            .map(|(i, w, s)| (&t.backends[*i], *w, *s))
            .collect();
        let y = pool_yaml(&t.tag, &t.dir, &hosts);
        // The held connections' VIP with a small table of its own.
        table_size(&stateless(&stateless(&y, "hold"), "web"), "hold", 1009)
    };
    let three = [(0, 1, "active"), (1, 1, "active"), (2, 1, "active")];
    t.write_pool(&pool_of(&t, &three)).unwrap();
    t.start_daemon().unwrap();
    let (seen, failed) = spread_http(&t, web(), 300);
    assert_eq!(failed, 0, "{seen:?}\n{}", t.log());
    assert_eq!(seen.len(), 3, "{seen:?}");
    // 40 long-lived connections, asked again after each change.
    let held = Holding::open(&t, format!("{VIP4}:9000").parse().unwrap(), 40);
    let check = |what: &str| held.check(what);
    let settle = || std::thread::sleep(Duration::from_millis(1200));
    // A backend added: a quarter of the slots move to it.
    let four = [
        (0, 1, "active"),
        (1, 1, "active"),
        (2, 1, "active"),
        (3, 1, "active"),
    ];
    t.write_pool(&pool_of(&t, &four)).unwrap();
    settle();
    check("adding a backend");
    let st = t.status_json().unwrap();
    let named = st["counters"]["stateless_prev"].as_u64().unwrap_or(0);
    assert!(named > 0, "no packet named a previous backend: {st}");
    let slots = |name: &str| {
        let mut vips = st["vips"].as_array().unwrap().iter();
        vips.find(|v| v["name"] == name).unwrap()["table_slots"].as_u64()
    };
    assert_eq!((slots("hold"), slots("web")), (Some(1009), Some(65537)));
    // Weights changed.
    let weighted = [
        (0, 3, "active"),
        (1, 1, "active"),
        (2, 1, "active"),
        (3, 2, "active"),
    ];
    t.write_pool(&pool_of(&t, &weighted)).unwrap();
    settle();
    check("a weight change");
    // One taken out gracefully: its slots move, its connections go on.
    let drained = [
        (0, 3, "active"),
        (1, 1, "drain"),
        (2, 1, "active"),
        (3, 2, "active"),
    ];
    t.write_pool(&pool_of(&t, &drained)).unwrap();
    settle();
    check("draining a backend");
    // The balancer restarted.
    t.kill_daemon();
    std::thread::sleep(Duration::from_millis(300));
    check("the daemon killed");
    t.start_daemon().unwrap();
    settle();
    check("the daemon restarted");
    held.finish();
    // No flow was stored for either VIP.
    let st = t.status_json().unwrap();
    assert_no_flows(&st, &["web", "hold"]);
    assert_eq!(st["counters"]["flow_miss"].as_u64().unwrap_or(0), 0, "{st}");
    assert!(st["counters"]["stateless"].as_u64().unwrap() > 1000, "{st}");
}

/// No backend of VIPs `names` holds a flow.
fn assert_no_flows(st: &serde_json::Value, names: &[&str]) {
    for name in names {
        let v = vip(st, name);
        for b in v["backends"].as_array().unwrap() {
            assert_eq!(b["active_flows"], 0, "{v}");
        }
    }
}

/// Long-lived connections from the client, held by a thread of their own
/// and asked again at each `check`: every one must still answer, from the
/// backend that answered it first.
struct Holding {
    ask: std::sync::mpsc::Sender<()>,
    broken: std::sync::mpsc::Receiver<usize>,
    worker: std::thread::JoinHandle<usize>,
}

impl Holding {
    fn open(t: &Topology, addr: SocketAddr, n: usize) -> Holding {
        let client = t.client.clone();
        let (ask, rx) = std::sync::mpsc::channel::<()>();
        let (rtx, broken) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            in_ns(&client, move || {
                let mut conns: Vec<Held> = (0..n).map(|_| Held::open(addr, T).unwrap()).collect();
                rtx.send(0).unwrap();
                let mut broken = 0;
                while rx.recv().is_ok() {
                    broken += conns
                        .iter_mut()
                        .map(|c| c.still_served())
                        .filter(|ok| !ok)
                        .count();
                    rtx.send(broken).unwrap();
                }
                broken
            })
        });
        broken.recv().unwrap();
        Holding {
            ask,
            broken,
            worker,
        }
    }

    fn check(&self, what: &str) {
        self.ask.send(()).unwrap();
        assert_eq!(self.broken.recv().unwrap(), 0, "after {what}");
    }

    fn finish(self) {
        drop(self.ask);
        assert_eq!(self.worker.join().unwrap(), 0);
    }
}

#[test]
fn stateless_connections_moved_by_ecmp_to_a_second_balancer_keep_their_backend() {
    // Two nodes with the same pool file and secret, and no state shared.
    let Some(mut t) = topo("e2se", &[1, 1, 1, 1]) else {
        return;
    };
    t.forwarding_backends().unwrap();
    let pool_of = |t: &Topology, tag: &str, n: usize| {
        let hosts: Vec<_> = t.backends[..n].iter().map(|h| (h, 1, "active")).collect();
        stateless(&stateless(&pool_yaml(tag, &t.dir, &hosts), "hold"), "web")
    };
    t.write_pool(&pool_of(&t, &t.tag, 3)).unwrap();
    t.start_daemon().unwrap();
    t.add_second_balancer().unwrap();
    let tag2 = format!("{}2", t.tag);
    let sock2 = std::path::PathBuf::from(format!("/run/lb/{tag2}.sock"));
    t.start_second_daemon(&pool_of(&t, &tag2, 3), &sock2)
        .unwrap();
    // Connections opened through node 1; then a fourth backend on both
    // nodes (each moves the same quarter of the slots and names the same
    // previous backends); then ECMP moves every flow to node 2.
    let held = Holding::open(&t, format!("{VIP4}:9000").parse().unwrap(), 40);
    t.write_pool(&pool_of(&t, &t.tag, 4)).unwrap();
    t.write_second_pool(&pool_of(&t, &tag2, 4)).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    held.check("a backend added on both nodes");
    t.route_via(LB4_2, LB6_2).unwrap();
    held.check("ECMP moving the flows to node 2");
    let (seen, failed) = spread_http(&t, web(), 200);
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(seen.len(), 4, "node 2 spreads new connections: {seen:?}");
    held.finish();
    // Node 2 carried the held connections, naming previous backends, with
    // no flow of its own.
    let st = t.status_json_at(&sock2).unwrap();
    let n = |name: &str| st["counters"][name].as_u64().unwrap_or(0);
    assert!(n("stateless_prev") > 0, "{st}");
    assert!(n("stateless") > 200, "{st}");
    assert_eq!(n("flow_miss"), 0, "{st}");
    assert_no_flows(&st, &["web", "hold"]);
}
