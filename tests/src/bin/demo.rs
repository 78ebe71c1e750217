//! `cargo xtask demo`: the load balancer on a built-in topology of network
//! namespaces. Real servers, real clients, the real daemon with
//! deploy/demo.yaml; shows the spread, `lb status`, a failover and the
//! recovery, then removes everything.
use anyhow::{Context, Result};
use lb_tests::topo::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(2);

fn spread(t: &Topology, what: &str, n: u16, f: impl Fn(u16) -> Result<String> + Send + 'static) {
    let started = Instant::now();
    let seen: BTreeMap<String, usize> = in_ns(&t.client, move || {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let k = match f(i) {
                Ok(b) => b,
                Err(e) => format!("FAILED ({e})"),
            };
            *seen.entry(k).or_insert(0) += 1;
        }
        seen
    });
    println!(
        "  {what}: {n} requests in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for (k, v) in &seen {
        println!(
            "    {k:<12} {v:>5}  {:5.1}%  {}",
            *v as f64 * 100.0 / n as f64,
            "#".repeat(*v * 40 / n as usize)
        );
    }
}

fn main() -> Result<()> {
    let server = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("backend-server");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pool = std::fs::read_to_string(root.join("deploy/demo.yaml"))?;
    std::fs::create_dir_all("/tmp/lb-demo")?;

    println!("== 1. topology: a client, the balancer, three backends (network namespaces)");
    let mut t = Topology::new("lbdemo", 3, &server)?;
    println!(
        "  client 10.10.0.10 routes the VIPs 10.100.0.1 and fd00:100::1 via the balancer 10.10.0.2"
    );
    println!("  backends b1..b3 (10.10.0.11-13): VIPs on loopback, `lb decap` on eth0, HTTP :80 and UDP :53 answering their name");

    println!("\n== 2. `lb run --config deploy/demo.yaml` in the balancer's namespace");
    t.write_pool(&pool)?;
    t.start_daemon()?;
    for l in t.log().lines() {
        println!("  | {l}");
    }

    println!("\n== 3. traffic (weights b1:b2:b3 = 1:1:2 for web)");
    let web: SocketAddr = "10.100.0.1:80".parse()?;
    let dns: SocketAddr = "10.100.0.1:53".parse()?;
    let web6: SocketAddr = "[fd00:100::1]:80".parse()?;
    spread(&t, "HTTP  10.100.0.1:80   ", 1000, move |_| {
        http_get(web, T)
    });
    spread(&t, "UDP   10.100.0.1:53   ", 600, move |i| {
        udp_query(dns, 30000 + i, T)
    });
    spread(&t, "HTTP  [fd00:100::1]:80", 300, move |_| {
        http_get(web6, T)
    });

    println!("\n== 4. lb status");
    std::thread::sleep(Duration::from_millis(1100));
    print!("{}", t.status_text());

    println!("\n== 5. failover: kill b2's servers; health checks take it out");
    t.kill_server("b2");
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    println!("  {:.1}s after the kill:", killed.elapsed().as_secs_f64());
    spread(&t, "HTTP  10.100.0.1:80   ", 600, move |_| http_get(web, T));
    for l in t.log().lines().filter(|l| l.contains("is down")) {
        println!("  | {l}");
    }

    println!("\n== 6. recovery: b2 back; it takes new flows after `rise` good probes");
    t.start_server("b2")?;
    std::thread::sleep(Duration::from_millis(1000));
    spread(&t, "HTTP  10.100.0.1:80   ", 600, move |_| http_get(web, T));
    for l in t.log().lines().filter(|l| l.contains("is up")) {
        println!("  | {l}");
    }
    print!("{}", t.status_text());

    println!("\n== 7. cleaning up (lb stop, namespaces removed)");
    drop(t);
    println!("done.");
    Ok(())
}
