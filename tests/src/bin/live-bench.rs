//! `cargo xtask bench --live`: forwarded packets per second, with frames
//! the kernel really transmits, not capped by any client's stack.
//!
//! BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES runs `lb_gen` (in the
//! object, on no packet path) on frames of a page pool "received" on `lg0`,
//! one end of a veth pair in a private namespace. `lb_gen` writes its
//! template back into the frame (the kernel recycles frames as the last
//! program left them), makes it packet `i`'s flow, and tail-calls the real
//! `lb_xdp`, whose XDP_TX the kernel carries out: the frame goes out of
//! `lg0` and arrives at `lg1`, where `lb_drop` counts and drops it.
//!
//! Set-up: one TCP VIP with 100 backends (IPIP, the gateway MAC: no
//! route), Maglev tables of 65 537 slots, a flow table of 1M entries.
//! Cases: the generator alone (`lb_gen` transmitting its template: the
//! floor of this machine's veth path), new flows (every packet a SYN of a
//! new connection: the table fills and the LRU evicts), the same with the
//! daemon's default insert cap (a SYN flood as users meet it: past the
//! cap, forwarded by the Maglev table and not stored), established (1000
//! connections, each packet an ACK and a flow-table hit). Each on one CPU, then on
//! both at once (a thread pinned to each). The bench checks the balancer's
//! counters (every packet forwarded with XDP_TX, new flows or hits as the
//! case says) and that `lg1` received what was sent.
use anyhow::{bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use lb_common::{counter, progs, Config, GenTemplate, VipInfo, GEN_F_BALANCE, PROTO_TCP};
use lb_tests::bench::{pin, SIZES};
use lb_tests::packets::{host_mask, Flow, GATEWAY_MAC};
use lb_tests::{backend, private_netns, vip_key, Balancer};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

/// Packets each CPU sends per case.
const PACKETS: u32 = 2_000_000;
/// Frames per batch (the kernel's most is 256).
const BATCH: u32 = 64;
const BACKENDS: u32 = 100;
const ESTABLISHED: u32 = 1000;
const VIP: &str = "10.100.0.1";

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Floor,
    NewFlows,
    /// New flows with the daemon's default insert cap: past it, a new
    /// flow is forwarded by the Maglev table and not stored.
    CappedFlood,
    Established,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Floor => "generator alone (XDP_TX, no lb_xdp)",
            Case::NewFlows => "TCP, every packet a new flow",
            Case::CappedFlood => "the same, with the default insert cap",
            Case::Established => "TCP, 1000 established flows",
        }
    }
}

fn main() -> Result<()> {
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "live-bench needs root (CAP_BPF, CAP_NET_ADMIN); run `cargo xtask bench --live` as root"
    );
    let cpus = std::thread::available_parallelism()?.get();
    private_netns().context("entering a private network namespace")?;
    sh(
        // No IPv6 on the pair: its neighbour and router solicitations would
        // reach lg1 beside the generator's frames.
        "ip link set lo up && ip link add lg0 numtxqueues 2 numrxqueues 2 type veth \
        peer name lg1 numtxqueues 2 numrxqueues 2 \
        && sysctl -qw net.ipv6.conf.lg0.disable_ipv6=1 net.ipv6.conf.lg1.disable_ipv6=1 \
        && ip link set lg0 up && ip link set lg1 up",
    )?;
    let ifindex = ifindex("lg0")?;
    let mut lb = Balancer::load(SIZES).context("loading lb_xdp")?;
    configure(&mut lb)?;
    lb.load_program(progs::GEN)?;
    let drop = lb.load_program(progs::DROP)?;
    let _link = drop
        .attach("lg1", XdpMode::Driver)
        .context("attaching lb_drop to lg1")?;

    // New flows start with a SYN, established ones carry ACKs; 64 bytes.
    let flow = Flow::tcp("198.18.0.1", 10000, VIP, 80);
    let (syn, ack) = (
        flow.packet("S", b"0123456789"),
        flow.packet("A", b"0123456789"),
    );
    ensure!(
        syn.len() == 64 && ack.len() == 64,
        "the template frames are 64 bytes"
    );
    // What the run hands the program: no metadata, the frame on lg0.
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(ack.len() as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes());

    println!("live-bench: lb_xdp on frames the kernel transmits (BPF_PROG_TEST_RUN, live frames)");
    println!(
        "  {} packets per CPU per case, batches of {BATCH}; 1 TCP VIP, {BACKENDS} backends, \
         flow table of {} entries; {cpus} CPUs",
        PACKETS, SIZES.flows
    );
    println!();
    println!(
        "  {:<38} {:>5} {:>12} {:>12} {:>10} {:>8}",
        "case", "CPUs", "Mpps", "per CPU", "ns/pkt/CPU", "lost"
    );
    let mut floor_ns = [0f64; 2];
    for case in [
        Case::Floor,
        Case::NewFlows,
        Case::CappedFlood,
        Case::Established,
    ] {
        lb.set_config(config(case == Case::CappedFlood))?;
        let frame = if case == Case::Established {
            &ack
        } else {
            &syn
        };
        for n in [1, cpus.min(2)] {
            let (flows, flags) = match case {
                Case::Floor => (1, 0),
                Case::NewFlows | Case::CappedFlood => (u32::MAX / 4, GEN_F_BALANCE),
                Case::Established => (ESTABLISHED, GEN_F_BALANCE),
            };
            set_template(&mut lb, frame, flows, flags)?;
            if case == Case::Established {
                // The connections first, so every measured packet is a hit.
                run_on(&lb, frame, &md, &[0], ESTABLISHED)?;
                if n > 1 {
                    run_on(&lb, frame, &md, &[1], ESTABLISHED)?;
                }
            }
            let before = lb.counters();
            let rx0 = xdp_drops("lg1")?;
            let cpu_list: Vec<usize> = (0..n).collect();
            let secs = run_on(&lb, frame, &md, &cpu_list, PACKETS)?;
            let sent = PACKETS as u64 * n as u64;
            let received = xdp_drops("lg1")? - rx0;
            let d = |c: u32| {
                let name = counter::NAMES[c as usize];
                let get = |v: &[(&str, u64)]| v.iter().find(|(k, _)| *k == name).map_or(0, |x| x.1);
                get(&lb.counters()) - get(&before)
            };
            match case {
                Case::Floor => {}
                Case::NewFlows => ensure!(
                    d(counter::TX) == sent && d(counter::NEW_FLOW) == sent,
                    "{}: {sent} sent with XDP_TX as new flows expected; tx {}, new_flow {}",
                    case.name(),
                    d(counter::TX),
                    d(counter::NEW_FLOW)
                ),
                Case::CappedFlood => ensure!(
                    d(counter::TX) == sent
                        && d(counter::NEW_FLOW) == sent
                        && d(counter::NEW_FLOW_NOT_STORED) > 0,
                    "{}: {sent} sent with XDP_TX as new flows, some past the cap, expected; \
                     tx {}, new_flow {}, new_flow_not_stored {}",
                    case.name(),
                    d(counter::TX),
                    d(counter::NEW_FLOW),
                    d(counter::NEW_FLOW_NOT_STORED)
                ),
                Case::Established => ensure!(
                    d(counter::TX) == sent && d(counter::FLOW_HIT) == sent,
                    "{}: {sent} flow hits sent with XDP_TX expected; tx {}, flow_hit {}",
                    case.name(),
                    d(counter::TX),
                    d(counter::FLOW_HIT)
                ),
            }
            // The veth's queue towards lg1 may overflow when the sender
            // outruns the receiver: what arrived is what was forwarded.
            ensure!(
                received <= sent && received * 100 >= sent * 99,
                "{}: lg1 received {received} of {sent} frames",
                case.name()
            );
            let lost = sent - received;
            let pps = received as f64 / secs;
            let ns = 1e9 / (pps / n as f64);
            if case == Case::Floor {
                floor_ns[n - 1] = ns;
            }
            println!(
                "  {:<38} {:>5} {:>12.2} {:>12.2} {:>10.0} {:>8}",
                case.name(),
                n,
                pps / 1e6,
                pps / 1e6 / n as f64,
                ns,
                lost
            );
        }
    }
    println!();
    println!(
        "ns/pkt/CPU: each CPU's time per forwarded packet, the generator's and the veth's \
         ({:.0} ns on one CPU, {:.0} on two) included. Mpps counts the frames that reached\n\
         lg1; lost: sent with XDP_TX, dropped by the veth's queue to lg1 (the receiver outrun).",
        floor_ns[0], floor_ns[1]
    );
    Ok(())
}

/// The balancer's maps: one TCP VIP over `BACKENDS` backends, IPIP with
/// the gateway MAC (the namespace has no routes).
fn configure(lb: &mut Balancer) -> Result<()> {
    lb.set_config(config(false))?;
    for i in 0..BACKENDS {
        let a = Ipv4Addr::new(10, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
        lb.set_backend(i + 1, backend(IpAddr::V4(a), 0, 0))?;
    }
    let ring: Vec<u32> = (0..SIZES.ring_size).map(|s| s % BACKENDS + 1).collect();
    lb.write_ring(0, 0, &ring)?;
    lb.add_vip(
        vip_key(VIP.parse()?, 80, PROTO_TCP),
        VipInfo {
            vip_id: 0,
            ..VipInfo::default()
        },
    )
}

/// IPIP with the gateway MAC; with `cap`, the flow-insert cap the daemon
/// sets by default (its rate and burst), else none.
fn config(cap: bool) -> Config {
    let (interval, tolerance) = if cap {
        (
            1_000_000_000 / lb_userspace::config::DEFAULT_NEW_FLOWS_PER_CPU as u64,
            lb_userspace::config::NEW_FLOW_BURST.as_nanos() as u64,
        )
    } else {
        (0, 0)
    };
    Config {
        hash_key: [0x5eed_0123_4567_89ab, 0x0ddb_a11c_afe0_f00d],
        ring_size: SIZES.ring_size,
        flags: lb_common::CONFIG_F_GATEWAY_MAC | lb_common::CONFIG_F_SRC_V4,
        src_v4: u32::from_ne_bytes([10, 255, 0, 0]),
        src_v4_mask: host_mask(8),
        mtu: 1500,
        gateway_mac: GATEWAY_MAC,
        udp_idle_timeout_ns: lb_userspace::config::DEFAULT_UDP_IDLE_TIMEOUT.as_nanos() as u64,
        new_flow_interval_ns: interval,
        new_flow_tolerance_ns: tolerance,
        ..Config::default()
    }
}

fn set_template(lb: &mut Balancer, frame: &[u8], flows: u32, flags: u32) -> Result<()> {
    let mut t = GenTemplate {
        len: frame.len() as u32,
        flows,
        saddr_off: 14 + 12,
        sport_off: 14 + 20,
        flags,
        // Two CPUs send different connections.
        cpu_stride: if flows == u32::MAX / 4 {
            u32::MAX / 4
        } else {
            ESTABLISHED
        },
        ..GenTemplate::default()
    };
    t.data[..frame.len()].copy_from_slice(frame);
    let mut m: aya::maps::Array<_, GenTemplate> =
        aya::maps::Array::try_from(lb.ebpf_map_mut("GEN").context("no GEN map")?)?;
    m.set(0, t, 0)?;
    Ok(())
}

/// Runs `packets` through `lb_gen` on each CPU of `cpus` at once (a pinned
/// thread each); the wall time of the slowest, in seconds.
fn run_on(lb: &Balancer, frame: &[u8], md: &[u8], cpus: &[usize], packets: u32) -> Result<f64> {
    let prog: &Xdp = lb
        .ebpf()
        .program(progs::GEN)
        .context("no lb_gen")?
        .try_into()?;
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                s.spawn(move || -> Result<()> {
                    pin(cpu)?;
                    prog.test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(md),
                        repeat: packets,
                        attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                        ..TestRunOptions::default()
                    })
                    .context("BPF_PROG_TEST_RUN in live-frames mode")?;
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("bench thread")?;
        }
        Ok(())
    })?;
    Ok(start.elapsed().as_secs_f64())
}

fn sh(cmd: &str) -> Result<()> {
    let st = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()?;
    ensure!(st.success(), "`{cmd}` failed");
    Ok(())
}

/// The interface's index in this namespace (sysfs still shows the one
/// the process started in).
fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no interface {name}: {}", std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// Frames `lb_drop` dropped on `iface` so far (the veth's XDP statistics).
fn xdp_drops(iface: &str) -> Result<u64> {
    let out = std::process::Command::new("ethtool")
        .args(["-S", iface])
        .output()
        .context("ethtool -S")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| l.trim_start().starts_with("rx_queue_") && l.contains("_xdp_drops:"))
        .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u64>().ok())
        .sum())
}
