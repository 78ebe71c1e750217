//! Project tasks: toolchain set-up, eBPF build, tests, benchmarks, the demo,
//! and `run` (build, then start the daemon attached to a NIC).
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Parser)]
#[command(about = "Build, test and run the load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, bpf-linker (LLVM 22), ethtool.
    Setup,
    /// Build the eBPF object (target/bpfel-unknown-none/release/lb-ebpf).
    BuildEbpf,
    /// Set up, build, and run every test: unit, packet (BPF_PROG_TEST_RUN), end to end.
    Test,
    /// Per-packet cost through BPF_PROG_TEST_RUN, and the Maglev build time.
    Bench {
        /// Instead: the flow table at 1M flows on every CPU: filled from
        /// both CPUs, established on the CPU that stored the flow and on
        /// the other, new flows into a full table.
        #[arg(long)]
        flows: bool,
        /// Instead: the real daemon with a full 1M-entry flow table and no
        /// traffic: `lb status` time, CPU and memory at rest.
        #[arg(long, conflicts_with = "flows")]
        rest: bool,
        /// Instead: the real daemon probing 5000 backends every 200 ms:
        /// probes sustained, CPU, sockets, TIME_WAIT.
        #[arg(long, conflicts_with_all = ["flows", "rest"])]
        probes: bool,
        /// Instead: end to end on the test topology, side by side in one
        /// run: lb, nftables DNAT, HAProxy (mode tcp), IPVS where the
        /// kernel has it, and the direct baseline; requests per second,
        /// CPU per request, latency added, stream throughput.
        #[arg(long, conflicts_with_all = ["flows", "rest", "probes"])]
        e2e: bool,
        /// Instead: forwarded packets per second with frames the kernel
        /// really transmits (BPF_PROG_TEST_RUN live frames into a veth),
        /// new flows and established, on one CPU and on two.
        #[arg(long, conflicts_with_all = ["flows", "rest", "probes", "e2e"])]
        live: bool,
        /// Instead: lb_xdp beside Katran's balancer in one run, call by
        /// call, at production sizes; KATRAN is the path of Katran's
        /// balancer.bpf.o, built from Katran's sources (BENCHMARKS.md says how).
        #[arg(long, value_name = "KATRAN", conflicts_with_all = ["flows", "rest", "probes", "e2e", "live"])]
        katran: Option<std::path::PathBuf>,
        /// Instead: the daemon with 512 VIPs of 127 backends each (the most
        /// 16-bit table ids name): cold start, map memory, a full reload,
        /// `lb status` time, CPU and memory at rest.
        #[arg(long, conflicts_with_all = ["flows", "rest", "probes", "e2e", "live"])]
        scale: bool,
    },
    /// Random and mutated packets through the loaded program (default a
    /// million), each checked; the packet tests run a short version.
    Fuzz {
        #[arg(default_value_t = 1_000_000)]
        packets: u64,
        /// Seed (default: the time, printed).
        seed: Option<u64>,
    },
    /// The end-to-end topology under churn for SECONDS (default 300, at
    /// most 600): health flaps, weight changes, reloads, two SIGKILLs of
    /// the daemon; fails on any failed request or broken connection. Not in CI.
    Soak {
        #[arg(default_value_t = 300)]
        seconds: u64,
    },
    /// cargo fmt --check and clippy in two passes (userspace, then lb-ebpf for its BPF target).
    Lint,
    /// The load balancer on a built-in topology of network namespaces: real
    /// servers, clients and daemon; spread, status, failover, recovery.
    Demo,
    /// Build, then run `lb` with the given arguments (e.g. `run -- run --config deploy/pool.yaml`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::Test => test(),
        Cmd::Bench { flows: true, .. } => bench_bin("flow-bench", &[]),
        Cmd::Bench { rest: true, .. } => bench_daemon(&[]),
        Cmd::Bench { probes: true, .. } => bench_daemon(&["probes"]),
        Cmd::Bench { scale: true, .. } => bench_daemon(&["scale"]),
        Cmd::Bench { e2e: true, .. } => bench_e2e(),
        Cmd::Bench { live: true, .. } => bench_live(),
        Cmd::Bench {
            katran: Some(object),
            ..
        } => bench_katran(&object),
        Cmd::Bench { .. } => bench(),
        Cmd::Demo => demo(),
        Cmd::Fuzz { packets, seed } => fuzz(packets, seed),
        Cmd::Soak { seconds } => soak(seconds),
        Cmd::Lint => lint(),
        Cmd::Run { args } => {
            setup()?;
            build_ebpf()?;
            run(Command::new("cargo").args(["build", "--release", "-p", "lb-userspace"]))?;
            run(Command::new("target/release/lb").args(args))
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Installs what this project needs and is missing. Idempotent and quick when
/// everything is there.
fn setup() -> Result<()> {
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !src.exists() {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        install_bpf_linker(&sysroot)?;
    }
    // promtool (Debian's `prometheus` package) checks the metrics
    // exposition and the alert rules in the tests; BIRD (`bird2`) runs the
    // scale-out test's BGP.
    install_missing(
        &[
            ("ethtool", "ethtool"),
            ("bpftool", "bpftool"),
            ("promtool", "prometheus"),
            ("bird", "bird2"),
        ],
        "the network tests",
    )
}

/// Installs Debian's `(command, package)` pairs whose command is missing
/// (as root; otherwise says what is missing, for `what`).
fn install_missing(tools: &[(&str, &str)], what: &str) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| !succeeds(Command::new("sh").args(["-c", &format!("command -v {bin}")])))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("note: missing {missing:?}; run as root (or apt-get install them) for {what}");
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(&missing))
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// bpf-linker must use the nightly's own LLVM (22): build it against the
/// nightly's libLLVM rather than a system LLVM.
fn install_bpf_linker(sysroot: &str) -> Result<()> {
    let lib = Path::new(sysroot).join("lib");
    let name = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {}", lib.display()))?;
    let name = name.trim_start_matches("lib").trim_end_matches(".so");
    let lib = lib.display();
    let flags = format!("-L {lib} -l dylib={name} -C link-arg=-Wl,-rpath,{lib}");
    let major = name
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .unwrap_or("22");
    run(Command::new("cargo")
        .env("RUSTFLAGS", flags)
        .args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major},no-llvm-linking")]))
}

/// Where `build_ebpf` puts the object.
const EBPF_OBJECT: &str = "target/bpfel-unknown-none/release/lb-ebpf";

fn build_ebpf() -> Result<()> {
    run(Command::new("cargo")
        .args(["+nightly", "build", "--release", "-p", "lb-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER"))?;
    eprintln!("eBPF object: {EBPF_OBJECT}");
    Ok(())
}

/// Builds `lb` (with the eBPF object embedded) and the test binaries.
fn build_lb() -> Result<PathBuf> {
    let object = workspace_root().join(EBPF_OBJECT);
    run(Command::new("cargo")
        .args(["build", "-p", "lb-userspace", "-p", "lb-tests", "--bins"])
        .env("LB_EBPF_OBJECT", &object))?;
    Ok(workspace_root().join("target/debug/lb"))
}

fn lint() -> Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("cargo")
        .args(["+nightly", "clippy", "-p", "lb-ebpf", "--release"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
}

fn soak(seconds: u64) -> Result<()> {
    setup()?;
    build_ebpf()?;
    let lb = build_lb()?;
    run(Command::new(workspace_root().join("target/debug/soak"))
        .arg(seconds.to_string())
        .env("LB_BIN", &lb)
        .env("LB_EBPF_OBJECT", workspace_root().join(EBPF_OBJECT)))
}

fn demo() -> Result<()> {
    setup()?;
    build_ebpf()?;
    let lb = build_lb()?;
    run(Command::new(workspace_root().join("target/debug/demo"))
        .env("LB_BIN", &lb)
        .env("LB_EBPF_OBJECT", workspace_root().join(EBPF_OBJECT)))
}

fn test() -> Result<()> {
    setup()?;
    build_ebpf()?;
    let lb = build_lb()?;
    // Unit tests, then the packet tests, then end to end: the precise
    // packet-test failures come before the end-to-end symptoms of the same
    // bug. Every stage runs whatever an earlier one did (`--no-fail-fast`
    // within each), and every failing stage is named at the end.
    let stages: [(&str, &[&str]); 5] = [
        (
            "unit",
            &[
                "--workspace",
                "--exclude",
                "lb-ebpf",
                "--exclude",
                "lb-tests",
            ],
        ),
        ("test support", &["-p", "lb-tests", "--lib", "--bins"]),
        ("packet", &["-p", "lb-tests", "--test", "packet"]),
        (
            "stateless packet",
            &["-p", "lb-tests", "--test", "stateless"],
        ),
        ("end to end", &["-p", "lb-tests", "--test", "e2e"]),
    ];
    let (mut passed, mut failed, mut failing) = (0u64, 0u64, Vec::new());
    for (name, args) in stages {
        let (p, f, ok) = cargo_test(args, &lb)?;
        passed += p;
        failed += f;
        if !ok {
            // A test process that died (a test over its time budget) has
            // no summary line: count it as one failure.
            failed += u64::from(f == 0);
            failing.push(name);
        }
    }
    // One closing line over every test binary.
    println!("tests: {passed} passed, {failed} failed");
    if !failing.is_empty() {
        bail!("failing: {}", failing.join(", "));
    }
    Ok(())
}

/// Runs `cargo test ARGS` with the environment the root tests need; returns
/// the tests passed and failed (from libtest's summaries) and whether cargo
/// succeeded.
fn cargo_test(args: &[&str], lb: &Path) -> Result<(u64, u64, bool)> {
    let object = workspace_root().join(EBPF_OBJECT);
    let mut cmd = Command::new("cargo");
    // The test harness finds the object through LB_EBPF_OBJECT and `lb`
    // through LB_BIN.
    cmd.arg("test")
        .args(args)
        .arg("--no-fail-fast")
        .env("LB_EBPF_OBJECT", &object)
        .env("LB_BIN", lb)
        // Root tests may not skip here: a missing prerequisite is a failure.
        .env("LB_REQUIRE_ROOT_TESTS", "1")
        .args(["--", "--test-threads=1"]);
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    Ok((passed, failed, child.wait()?.success()))
}

/// The number just before `word` in a libtest summary ("ok. 3 passed; 0 failed; ...").
fn count_before(s: &str, word: &str) -> u64 {
    s.find(word)
        .and_then(|i| s[..i].rsplit([' ', '.']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn fuzz(packets: u64, seed: Option<u64>) -> Result<()> {
    setup()?;
    build_ebpf()?;
    let mut cmd = Command::new("cargo");
    cmd.args(["run", "--release", "-p", "lb-tests", "--bin", "fuzz", "--"])
        .arg(packets.to_string())
        .args(seed.map(|s| s.to_string()))
        .env("LB_EBPF_OBJECT", workspace_root().join(EBPF_OBJECT));
    run(&mut cmd)
}

/// `bench --rest` and `--probes`: the release `lb` (with the object), then
/// `rest-bench` with `args`.
fn bench_daemon(args: &[&str]) -> Result<()> {
    setup()?;
    build_ebpf()?;
    let root = workspace_root();
    run(Command::new("cargo")
        .args(["build", "--release", "-p", "lb-userspace"])
        .env("LB_EBPF_OBJECT", root.join(EBPF_OBJECT)))?;
    run(Command::new("cargo")
        .args([
            "run",
            "--release",
            "-p",
            "lb-tests",
            "--bin",
            "rest-bench",
            "--",
        ])
        .args(args)
        .env("LB_BIN", root.join("target/release/lb")))
}

/// `bench --katran OBJECT`: the object, then `katran-bench` beside Katran's.
fn bench_katran(katran: &std::path::Path) -> Result<()> {
    let katran = std::fs::canonicalize(katran)
        .map_err(|e| anyhow::anyhow!("Katran's object {}: {e}", katran.display()))?;
    bench_bin("katran-bench", &[("LB_BENCH_KATRAN", katran)])
}

/// `bench --live`: the object, then `live-bench`.
fn bench_live() -> Result<()> {
    bench_bin("live-bench", &[])
}

/// Set-up and the object, then the lb-tests bench `bin` (release) with the
/// object and `env`.
fn bench_bin(bin: &str, env: &[(&str, std::path::PathBuf)]) -> Result<()> {
    setup()?;
    build_ebpf()?;
    let mut cmd = Command::new("cargo");
    cmd.args(["run", "--release", "-p", "lb-tests", "--bin", bin])
        .env("LB_EBPF_OBJECT", workspace_root().join(EBPF_OBJECT));
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// `bench --e2e`: the peers (Debian's HAProxy and nftables, ipvsadm where
/// the kernel has IPVS), the release `lb` with the object, then `e2e-bench`.
fn bench_e2e() -> Result<()> {
    setup()?;
    let mut peers = vec![("haproxy", "haproxy"), ("nft", "nftables")];
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        peers.push(("ipvsadm", "ipvsadm"));
    }
    install_missing(&peers, "the end-to-end bench")?;
    build_ebpf()?;
    let root = workspace_root();
    run(Command::new("cargo")
        .args(["build", "--release", "-p", "lb-userspace"])
        .env("LB_EBPF_OBJECT", root.join(EBPF_OBJECT)))?;
    run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "lb-tests",
        "--bin",
        "backend-server",
        "--bin",
        "e2e-bench",
    ]))?;
    run(Command::new(root.join("target/release/e2e-bench"))
        .env("LB_BIN", root.join("target/release/lb")))
}

fn bench() -> Result<()> {
    setup()?;
    build_ebpf()?;
    let object = workspace_root().join(EBPF_OBJECT);
    run(Command::new("cargo")
        .args([
            "run",
            "--release",
            "-p",
            "lb-tests",
            "--bin",
            "packet-bench",
        ])
        .env("LB_EBPF_OBJECT", &object))?;
    run(Command::new("cargo").args([
        "run",
        "--release",
        "-p",
        "lb-userspace",
        "--example",
        "maglev_bench",
    ]))
}
