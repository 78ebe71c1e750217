//! Test support: loads the real XDP object, fills its maps through the
//! daemon's own map writer (`lb_userspace::dataplane::BpfDataPlane`, loaded
//! unpinned), runs packets through BPF_PROG_TEST_RUN, and reads the maps
//! and counters back.
//!
//! Root tests call [`root_env`] first: it skips (printing why) when the
//! kernel side cannot be reached, unless `LB_REQUIRE_ROOT_TESTS=1` (set by
//! `cargo xtask test`), in which case a missing prerequisite is a failure.
use anyhow::{bail, Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::{
    counter, decap_counter, maps, progs, AddrKey, Backend, BackendStats, Config, DataPathClock,
    FlowKey, FlowValue, VipInfo, VipKey, VipStats,
};
use lb_userspace::dataplane::{BpfDataPlane, DataPlane};
use std::net::IpAddr;
use std::path::PathBuf;

pub mod bench;
pub mod fuzz;
pub mod packets;
pub mod topo;

/// Path of the eBPF object: `$LB_EBPF_OBJECT`, or where `cargo xtask build-ebpf` puts it.
pub fn ebpf_object() -> PathBuf {
    std::env::var_os("LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bpfel-unknown-none/release/lb-ebpf")
        })
}

/// Returns `Some(())` when root tests can run; prints why not and returns
/// `None` otherwise. Panics instead when `LB_REQUIRE_ROOT_TESTS=1`.
pub fn root_env(test: &str) -> Option<()> {
    let required = std::env::var("LB_REQUIRE_ROOT_TESTS").as_deref() == Ok("1");
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("needs root (CAP_BPF, CAP_NET_ADMIN)".to_string())
    } else if !ebpf_object().exists() {
        Some(format!(
            "no eBPF object at {}; run `cargo xtask build-ebpf`",
            ebpf_object().display()
        ))
    } else {
        None
    };
    match why {
        None => Some(()),
        Some(why) if required => panic!("{test}: {why}"),
        Some(why) => {
            eprintln!("skipped {test}: {why} (cargo xtask test runs it)");
            None
        }
    }
}

/// Moves the calling thread into a new, empty network namespace, so FIB
/// lookups made by the program see no routes but those the test adds.
pub fn private_netns() -> Result<()> {
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Map sizes for a test load.
pub type Sizes = lb_common::MapSizes;

/// Small maps for tests.
pub fn test_sizes() -> Sizes {
    Sizes {
        max_vips: 8,
        max_backends: 64,
        ring_size: 1009,
        flows: 4096,
        persist: 1024,
        stateless_vips: 2,
        max_vip_backends: 64,
    }
}

/// The loaded object with one program ready for BPF_PROG_TEST_RUN. Every
/// map write goes through `dp`, the daemon's writer.
pub struct Balancer {
    loaded: Loaded,
    pub sizes: Sizes,
    prog: &'static str,
    /// The measured tick, written into every `set_config` as the daemon does.
    pub clock: DataPathClock,
    /// The flow table, opened once.
    flows: std::cell::OnceCell<lb_userspace::dataplane::FlowTable>,
}

/// The balancer with its map writer, or the object loaded for another
/// program (the decapsulator, the trivial program).
enum Loaded {
    Balancer(Box<BpfDataPlane>),
    Other(Ebpf),
}

/// The kernel's tick, measured once per test process (it is a property of
/// the kernel, not of one loaded object).
static CLOCK: std::sync::OnceLock<DataPathClock> = std::sync::OnceLock::new();

pub use lb_common::addr_words;

pub fn vip_key(ip: IpAddr, port: u16, proto: u8) -> VipKey {
    let (addr, family) = addr_words(ip);
    VipKey {
        addr,
        port: port.to_be(),
        proto,
        family,
    }
}

pub fn addr_key(ip: IpAddr) -> AddrKey {
    let (addr, family) = addr_words(ip);
    AddrKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// A used backend slot of VIP `vip_id`.
pub fn backend(ip: IpAddr, flags: u8, vip_id: u32) -> Backend {
    let (addr, family) = addr_words(ip);
    Backend {
        addr,
        family,
        flags: flags | lb_common::BACKEND_F_USED,
        vip_id: vip_id as u16,
        gen: 0,
    }
}

/// What one run returned.
#[derive(Debug)]
pub struct Outcome {
    pub action: u32,
    pub data: Vec<u8>,
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

impl Balancer {
    /// Loads the balancer (`lb_xdp`) with the given sizes.
    pub fn load(sizes: Sizes) -> Result<Self> {
        Self::load_prog(sizes, progs::BALANCER)
    }

    /// Loads the backend decapsulator (`lb_decap`), accepting tunnels from
    /// any source.
    pub fn load_decap() -> Result<Self> {
        Self::load_prog(test_sizes(), progs::DECAP)
    }

    /// Loads the trivial XDP_PASS program.
    pub fn load_pass() -> Result<Self> {
        Self::load_prog(test_sizes(), progs::PASS)
    }

    /// Loads the balancer from another object file (a bench's B side).
    pub fn load_object(path: &std::path::Path, sizes: Sizes) -> Result<Self> {
        Self::load_from(path, sizes, progs::BALANCER)
    }

    fn load_prog(sizes: Sizes, prog: &'static str) -> Result<Self> {
        Self::load_from(&ebpf_object(), sizes, prog)
    }

    fn load_from(path: &std::path::Path, sizes: Sizes, prog: &'static str) -> Result<Self> {
        let object = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let what = || format!("loading {}", path.display());
        let (loaded, clock) = if prog == progs::DECAP {
            let ebpf = lb_userspace::dataplane::load_decap_unpinned(&object).with_context(what)?;
            (Loaded::Other(ebpf), DataPathClock::default())
        } else {
            // The kernel's tick is measured once per test process (it is
            // a property of the kernel, not of one loaded object).
            let dp = BpfDataPlane::load_unpinned(&object, sizes, CLOCK.get().copied())
                .with_context(what)?;
            let clock = *CLOCK.get_or_init(|| dp.clock());
            (Loaded::Balancer(Box::new(dp)), clock)
        };
        let mut b = Balancer {
            loaded,
            sizes,
            prog,
            clock,
            flows: std::cell::OnceCell::new(),
        };
        if let (Loaded::Balancer(dp), progs::BALANCER) = (&mut b.loaded, prog) {
            // `lb_xdp` and `lb_stateless`, linked for their tail calls.
            dp.load_programs()?;
            return Ok(b);
        }
        let p: &mut Xdp = b
            .ebpf_mut()
            .program_mut(prog)
            .with_context(|| format!("no program {prog}"))?
            .try_into()?;
        p.load().map_err(verifier_log)?;
        Ok(b)
    }

    /// The map writer, to read through or grow the flow table with while
    /// other threads run the program.
    pub fn data_plane(&self) -> &BpfDataPlane {
        match &self.loaded {
            Loaded::Balancer(dp) => dp,
            Loaded::Other(_) => panic!("{} has no balancer map writer", self.prog),
        }
    }

    /// The daemon's map writer over the loaded balancer.
    pub fn dp(&mut self) -> &mut BpfDataPlane {
        match &mut self.loaded {
            Loaded::Balancer(dp) => dp,
            Loaded::Other(_) => panic!("{} has no balancer map writer", self.prog),
        }
    }

    fn ebpf_mut(&mut self) -> &mut Ebpf {
        match &mut self.loaded {
            Loaded::Balancer(dp) => dp.ebpf_mut(),
            Loaded::Other(e) => e,
        }
    }

    /// The loaded object.
    pub fn ebpf(&self) -> &Ebpf {
        match &self.loaded {
            Loaded::Balancer(dp) => dp.ebpf(),
            Loaded::Other(e) => e,
        }
    }

    fn map(&self, name: &str) -> &aya::maps::Map {
        self.ebpf()
            .map(name)
            .unwrap_or_else(|| panic!("no map {name}"))
    }

    /// Writes `cfg` with the calibrated clock, as the daemon does.
    pub fn set_config(&mut self, cfg: Config) -> Result<()> {
        let clock = self.clock;
        self.dp().set_clock(clock);
        Ok(self.dp().set_config(&cfg)?)
    }

    /// Writes `cfg` with the coarse-clock fallback (`jiffy_ns` 0), as the
    /// daemon does when the tick cannot be measured.
    pub fn set_config_raw(&mut self, cfg: Config) -> Result<()> {
        self.dp().set_clock(DataPathClock::default());
        Ok(self.dp().set_config(&cfg)?)
    }

    /// Adds a VIP and marks its address (and any-port flag), as the
    /// daemon's controller does.
    pub fn add_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        self.dp().set_vip(&key, &info)?;
        let ak = AddrKey {
            addr: key.addr,
            family: key.family,
            _pad: [0; 3],
        };
        let a: HashMap<&MapData, AddrKey, u32> = HashMap::try_from(self.map(maps::VIP_ADDRS))?;
        let mut flags = a.get(&ak, 0).unwrap_or(0) | lb_common::ADDR_F_VIP;
        if key.port == 0 {
            flags |= lb_common::ADDR_F_ANY_PORT;
        }
        self.dp().set_vip_addr(&ak, flags)?;
        if key.port == 0 {
            // Tell the data path to try port 0 on a miss.
            let c: aya::maps::Array<&MapData, Config> =
                aya::maps::Array::try_from(self.map(maps::CONFIG))?;
            let mut cfg = c.get(&0, 0)?;
            cfg.flags |= lb_common::CONFIG_F_ANY_PORT;
            // Keep the clock the config was written with.
            let clock = if cfg.jiffy_ns == 0 {
                DataPathClock::default()
            } else {
                self.clock
            };
            self.dp().set_clock(clock);
            self.dp().set_config(&cfg)?;
        }
        Ok(())
    }

    /// Removes a VIP (its address stays marked), as the daemon does.
    pub fn remove_vip(&mut self, key: VipKey) -> Result<()> {
        Ok(self.dp().remove_vip(&key)?)
    }

    pub fn set_backend(&mut self, id: u32, b: Backend) -> Result<()> {
        Ok(self.dp().set_backend(id, &b)?)
    }

    /// Writes one of a VIP's two Maglev buffers (a table of the room's
    /// size, or of a VIP's own smaller one).
    pub fn write_ring(&mut self, vip_id: u32, ring: u8, slots: &[u32]) -> Result<()> {
        assert!(slots.len() as u32 <= self.sizes.ring_size);
        Ok(self.dp().write_ring(vip_id, ring, slots)?)
    }

    pub fn vip_info(&self, key: &VipKey) -> Result<VipInfo> {
        let v: HashMap<&MapData, VipKey, VipInfo> = HashMap::try_from(self.map(maps::VIPS))?;
        Ok(v.get(key, 0)?)
    }

    /// Grows the flow table as the daemon's census does with `held` flows
    /// found (`grow_flow_table`); `begin_only`: only its first step, as a
    /// daemon stopped in the middle leaves it. Sets before and after.
    pub fn grow_flows(&mut self, held: u64, begin_only: bool) -> Option<(u32, u32)> {
        // Opened again with the new sets.
        self.flows = std::cell::OnceCell::new();
        let dp = self.dp();
        if begin_only {
            dp.begin_flow_growth(held).expect("growth begins")
        } else {
            let g = dp.grow_flow_table(held).expect("the table grows")?;
            assert_eq!(g.sets_unmoved, 0, "no packet in flight");
            Some((g.from, g.to))
        }
    }

    /// The flow table, opened (once).
    pub fn flows(&self) -> &lb_userspace::dataplane::FlowTable {
        self.flows.get_or_init(|| match &self.loaded {
            Loaded::Balancer(dp) => dp.flow_table().expect("the flow table opens"),
            Loaded::Other(_) => panic!("{} has no balancer map writer", self.prog),
        })
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows().get(key).expect("the flow table reads")
    }

    /// Removes a flow from the table, as an eviction would.
    pub fn forget_flow(&mut self, key: &FlowKey) -> Result<()> {
        anyhow::ensure!(self.flows().remove(key)?, "no flow {key:?}");
        Ok(())
    }

    /// Active connections counted on backend `id` (`LOADS`).
    pub fn load_of(&mut self, id: u32) -> u64 {
        use lb_userspace::dataplane::DataPlane;
        self.dp().load(id).unwrap()
    }

    /// Writes backend `id`'s weight and connection limit (0: none).
    pub fn set_limit(&mut self, id: u32, weight: u32, max_conns: u32) {
        use lb_userspace::dataplane::DataPlane;
        let l = lb_common::BackendLimit {
            weight,
            max_conns,
            ..Default::default()
        };
        self.dp().set_limit(id, &l).unwrap();
    }

    pub fn flow_count(&self) -> usize {
        self.flows().len().expect("the flow table reads")
    }

    /// Counter `idx` of `map`, summed over CPUs; 0 where the object has
    /// no such counter (an older object in a bench's A/B run).
    fn percpu_sum(&self, map: &str, idx: u32) -> u64 {
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(map)).unwrap();
        if idx >= a.len() {
            return 0;
        }
        a.get(&idx, 0).unwrap().iter().sum()
    }

    /// A balancer counter (`lb_common::counter::*`), summed over CPUs.
    pub fn counter(&self, idx: u32) -> u64 {
        self.percpu_sum(maps::COUNTERS, idx)
    }

    /// A decapsulator counter (`lb_common::decap_counter::*`).
    pub fn decap_counter(&self, idx: u32) -> u64 {
        self.percpu_sum(maps::DECAP_COUNTERS, idx)
    }

    /// Every non-zero balancer counter, by name (for failure messages).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        (0..counter::COUNT)
            .map(|i| (counter::NAMES[i as usize], self.counter(i)))
            .filter(|(_, v)| *v != 0)
            .collect()
    }

    pub fn decap_counters(&self) -> Vec<(&'static str, u64)> {
        (0..decap_counter::COUNT)
            .map(|i| (decap_counter::NAMES[i as usize], self.decap_counter(i)))
            .filter(|(_, v)| *v != 0)
            .collect()
    }

    pub fn vip_stats(&self, vip_id: u32) -> VipStats {
        let a: PerCpuArray<&MapData, VipStats> =
            PerCpuArray::try_from(self.map(maps::VIP_STATS)).unwrap();
        a.get(&vip_id, 0).unwrap().iter().sum()
    }

    /// Read slot by slot, and checked against what the daemon's batch
    /// read (`lb status`) finds.
    pub fn backend_stats(&self, id: u32) -> BackendStats {
        let a: PerCpuArray<&MapData, BackendStats> =
            PerCpuArray::try_from(self.map(maps::BACKEND_STATS)).unwrap();
        let s = a.get(&id, 0).unwrap().iter().sum();
        if let Loaded::Balancer(dp) = &self.loaded {
            let all = dp.all_backend_stats().unwrap();
            assert_eq!(all.len(), a.len() as usize, "every slot read");
            assert_eq!(all[id as usize], s, "slot {id}: the batch read differs");
        }
        s
    }

    /// Writes the decapsulator's maps as `lb decap` does: the VIPs and the
    /// accepted outer sources (replacing the earlier ones; none: any).
    pub fn set_decap(
        &mut self,
        vips: &[lb_userspace::dataplane::DecapVip],
        sources: &[(IpAddr, u8)],
    ) -> Result<()> {
        let gue = lb_common::DEFAULT_GUE_PORT;
        lb_userspace::dataplane::write_decap_maps(self.ebpf_mut(), vips, sources, gue)?;
        Ok(())
    }

    /// Loads (verifies) another XDP program of the same object, sharing
    /// its maps: the live-frames bench's `lb_gen` and `lb_drop`.
    pub fn load_program(&mut self, name: &str) -> Result<&mut Xdp> {
        let p: &mut Xdp = self
            .ebpf_mut()
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        p.load().map_err(verifier_log)?;
        Ok(p)
    }

    /// A map of the loaded object, to write (the live-frames bench's `GEN`).
    pub fn ebpf_map_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.ebpf_mut().map_mut(name)
    }

    fn program(&self) -> &Xdp {
        self.ebpf()
            .program(self.prog)
            .expect("program loaded")
            .try_into()
            .expect("an XDP program")
    }

    /// Runs one packet through the program.
    pub fn run(&self, data: &[u8]) -> Result<Outcome> {
        let mut out = vec![0u8; data.len() + 512];
        let r = self.program().test_run(TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok(Outcome {
            action: r.return_value,
            data: out,
        })
    }

    /// Runs a packet `repeat` times in the kernel; returns the mean time per run.
    pub fn time(&self, data: &[u8], repeat: u32) -> Result<std::time::Duration> {
        let mut out = vec![0u8; data.len() + 512];
        let r = self.program().test_run(TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok(r.duration)
    }
}

/// Turns a load failure into an error that carries the verifier log.
fn verifier_log(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            anyhow::anyhow!("verifier rejected the program: {io_error}\n{verifier_log}")
        }
        other => other.into(),
    }
}

/// A test's time budget: if the guard is still alive when the budget runs
/// out, the test process prints which test overran and exits with failure,
/// so a broken data path (clients waiting out their timeouts) fails the run
/// in bounded time instead of hanging it. Dropping the guard disarms it.
pub struct Budget {
    done: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Budget {
    pub fn start(test: &str, budget: std::time::Duration) -> Budget {
        let done = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let (watch, test) = (done.clone(), test.to_string());
        std::thread::spawn(move || {
            let (lock, cvar) = &*watch;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (finished, _) = cvar
                .wait_timeout_while(guard, budget, |done| !*done)
                .unwrap_or_else(|e| e.into_inner());
            if !*finished {
                // Past libtest's output capture, which a process exit loses.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\ntest {test} FAILED: still running after its budget of {} s; \
                     stopping the test process (its remaining tests do not run)",
                    budget.as_secs()
                );
                std::process::exit(101);
            }
        });
        Budget { done }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }
}
