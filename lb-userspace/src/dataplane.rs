//! The data plane: loads the XDP object, pins its maps and links under
//! `/sys/fs/bpf/<instance>/`, adopts them after a restart, and writes the maps.
//! This is the only module that touches aya; the control loop sees the
//! [`DataPlane`] trait, so it is tested against an in-memory fake.
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use lb_common::{
    maps, progs, AddrKey, Backend, BackendStats, Config, FlowKey, FlowValue, VipInfo, VipKey,
    VipStats,
};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("{0}")]
    Setup(String),
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, DataPlaneError>;

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataPlaneError {
    move |source| DataPlaneError::Map { map, source }
}

/// What the control loop writes and reads. Ids are indices into the
/// kernel's arrays (VIP ids index rings and VIP stats, backend ids the
/// BACKENDS array).
pub trait DataPlane {
    fn set_config(&mut self, cfg: &Config) -> Result<()>;
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<()>;
    /// Writes buffer `ring` (0 or 1) of VIP `vip_id`.
    fn write_ring(&mut self, vip_id: u32, ring: u8, slots: &[u32]) -> Result<()>;
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    fn set_vip_addr(&mut self, key: &AddrKey, flags: u32) -> Result<()>;
    fn remove_vip_addr(&mut self, key: &AddrKey) -> Result<()>;
    /// Every VIP in the kernel (for adoption after a restart).
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>>;
    /// Every used backend slot (for adoption after a restart).
    /// Slots in use (`BACKEND_F_USED`), and released ones that were ever
    /// used (their generation counts on).
    fn backends(&self) -> Result<Vec<(u32, Backend)>>;
    fn vip_stats(&self, vip_id: u32) -> Result<VipStats>;
    fn backend_stats(&self, id: u32) -> Result<BackendStats>;
    fn counters(&self) -> Result<Vec<u64>>;
}

/// The reader of the data path's aya-log records.
pub type DecisionLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Sizes of the maps, from the pool file.
pub type Sizes = lb_common::MapSizes;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Auto,
    Driver,
    Generic,
}

const ALL_MAPS: [&str; 10] = [
    maps::LAYOUT,
    maps::VIPS,
    maps::VIP_ADDRS,
    maps::BACKENDS,
    maps::RINGS,
    maps::FLOWS,
    maps::CONFIG,
    maps::VIP_STATS,
    maps::BACKEND_STATS,
    maps::COUNTERS,
];

/// `/sys/fs/bpf/<instance>`.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(instance)
}

fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

/// Mounts bpffs on /sys/fs/bpf if it is not mounted.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    if let Some(why) = private_mount_namespace() {
        return Err(DataPlaneError::Setup(format!(
            "bpffs is not mounted on /sys/fs/bpf here, and this process runs in a mount \
             namespace its parent does not share ({why}), as under `ip netns exec`, which \
             gives the command a private /sys: a bpffs mounted here would vanish with the \
             process, and with it the pinned maps and XDP links (a crash would detach XDP). \
             Enter only the network namespace instead: `nsenter --net=/run/netns/NAME lb ...`; \
             in a container, mount the host's bpffs on /sys/fs/bpf"
        )));
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    let src = std::ffi::CString::new("bpf").unwrap();
    let dst = std::ffi::CString::new("/sys/fs/bpf").unwrap();
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DataPlaneError::Setup(format!(
            "bpffs is not mounted on /sys/fs/bpf and mounting it failed ({}); mount it with `mount -t bpf bpf /sys/fs/bpf`",
            std::io::Error::last_os_error()
        )));
    }
    log::info!("mounted bpffs on /sys/fs/bpf");
    Ok(())
}

/// The aya-log level the data path logs at: its decision log is off (0)
/// unless asked for. The level is read-only data, so with it off the
/// verifier removes the logging code and the data path pays nothing.
const LOG_LEVEL: &str = "AYA_LOG_LEVEL";
const LOG_OFF: u8 = 0;
const LOG_INFO: u8 = 3;

/// The layout version held by a pinned `LAYOUT` map, if there is one.
fn read_layout_pin(path: &Path) -> Option<u32> {
    let data = MapData::from_pin(path).ok()?;
    let map = aya::maps::Map::Array(data);
    let a: Array<MapData, u32> = Array::try_from(map).ok()?;
    a.get(&0, 0).ok()
}

/// A loader with the balancer's map sizes and log level; the
/// decapsulator's maps, unused on a balancer, stay tiny.
fn balancer_loader(sizes: Sizes, log_decisions: bool) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    lb_common::size_maps(&mut loader, sizes);
    loader
        .map_max_entries(maps::DECAP_VIPS, 1)
        .map_max_entries(maps::DECAP_COUNTERS, lb_common::decap_counter::COUNT);
    let level = if log_decisions { &LOG_INFO } else { &LOG_OFF };
    // An object without the log (an older build) loads as well, unless the
    // log is asked for.
    loader.override_global(LOG_LEVEL, level, log_decisions);
    loader
}

/// When this process's mount namespace differs from its parent's (what
/// `ip netns exec` does), the two namespace ids.
fn private_mount_namespace() -> Option<String> {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let parent = unsafe { libc::getppid() }.to_string();
    match (ns("self"), ns(&parent)) {
        (Some(mine), Some(theirs)) if mine != theirs => Some(format!(
            "{} here, {} in its parent",
            mine.display(),
            theirs.display()
        )),
        _ => None,
    }
}

/// The loaded balancer and the one writer of its maps: the daemon's (maps
/// and links pinned), the packet tests' and the benches' (unpinned).
pub struct BpfDataPlane {
    ebpf: Ebpf,
    ring: RingMmap,
    sizes: Sizes,
    /// Where maps and links are pinned; `None` for an unpinned load (the
    /// packet tests and benches), which cannot attach.
    dir: Option<PathBuf>,
    /// Links adopted from pins: this process holds them too, so detaching
    /// takes both the pin and this.
    adopted: std::collections::HashMap<String, aya::programs::xdp::XdpLinkId>,
    /// Written into every `Config` (`Config::jiffy_ns`).
    clock: lb_common::DataPathClock,
    filter: lb_common::VipFilter,
    /// A filter write failed: `filter` is ahead of the maps, and the next
    /// change writes all of it.
    filter_stale: bool,
    /// The data path's decision log, when asked for and not yet taken.
    log: Option<DecisionLog>,
}

/// The data of the maps this program pins.
fn map_data(m: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match m {
        Map::Array(d) | Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuArray(d) => Some(d),
        _ => None,
    }
}

/// The RINGS array, mapped into our memory (BPF_F_MMAPABLE): a table is
/// written with plain stores rather than one syscall per slot. Elements are
/// `u64`, packed slots (`lb_common::pack_ring`).
struct RingMmap {
    ptr: *mut u64,
    len: usize,
}

/// Bytes per RINGS element in the kernel's layout.
const RING_STRIDE: usize = 8;

// SAFETY: the mapping is owned by this struct and only written through &mut self.
unsafe impl Send for RingMmap {}

impl RingMmap {
    fn new(map: &MapData, entries: usize) -> Result<Self> {
        let fd = map.fd().as_fd().as_raw_fd();
        let bytes = entries * RING_STRIDE;
        let page = 4096;
        let len = bytes.div_ceil(page) * page;
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataPlaneError::Io {
                what: "mmap of the RINGS map".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(RingMmap {
            ptr: ptr as *mut u64,
            len: entries,
        })
    }

    /// Writes `slots` from element `start` on.
    fn write(&mut self, start: usize, slots: &[u32]) -> Result<()> {
        let n = lb_common::ring_elems(slots.len() as u32) as usize;
        if start + n > self.len {
            return Err(DataPlaneError::Setup(format!(
                "ring write past the end of RINGS ({start} + {n} > {})",
                self.len
            )));
        }
        // SAFETY: in bounds (checked above); packets read only the buffer
        // that is active, and the controller writes the other one.
        for (i, e) in lb_common::pack_ring(slots).enumerate() {
            unsafe { self.ptr.add(start + i).write_volatile(e) };
        }
        Ok(())
    }
}

impl Drop for RingMmap {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(
                self.ptr as *mut _,
                (self.len * RING_STRIDE).div_ceil(4096) * 4096,
            )
        };
    }
}

impl BpfDataPlane {
    /// Loads the object, reusing maps pinned by an earlier run of the same
    /// instance (so flows and tables survive a daemon restart), and pins
    /// whatever is new.
    ///
    /// `log_decisions`: the data path logs each new flow's backend and each
    /// drop for want of one (`lb run --debug-datapath`); read them with
    /// [`BpfDataPlane::take_decision_log`].
    pub fn load(object: &[u8], instance: &str, sizes: Sizes, log_decisions: bool) -> Result<Self> {
        ensure_bpffs()?;
        let dir = pin_dir(instance);
        std::fs::create_dir_all(&dir).map_err(|source| DataPlaneError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let pins: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, dir.join(m))).collect();
        // Pins of an earlier run: their layout version must be this one's.
        let earlier = pins.iter().any(|(_, p)| p.exists());
        let layout = read_layout_pin(&dir.join(maps::LAYOUT));
        if earlier && layout != Some(lb_common::LAYOUT_VERSION) {
            return Err(DataPlaneError::Setup(format!(
                "the maps pinned under {} were made by another version of lb (layout {}, this \
                 one needs {}); run `lb stop` first to start afresh (established flows are then \
                 forgotten)",
                dir.display(),
                layout.map_or("unknown".to_string(), |v| v.to_string()),
                lb_common::LAYOUT_VERSION
            )));
        }
        let mut loader = balancer_loader(sizes, log_decisions);
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| DataPlaneError::Setup(format!("loading the eBPF object: {e}")))?;
        let log =
            match log_decisions {
                true => Some(aya_log::EbpfLogger::init(&mut ebpf).map_err(|e| {
                    DataPlaneError::Setup(format!("reading the data path's log: {e}"))
                })?),
                false => None,
            };
        let mut dp = Self::loaded(ebpf, sizes, Some(dir), None)?;
        dp.log = log;
        let mut a: Array<&mut MapData, u32> =
            Array::try_from(dp.map_mut(maps::LAYOUT)).map_err(map_err(maps::LAYOUT))?;
        a.set(0, lb_common::LAYOUT_VERSION, 0)
            .map_err(map_err(maps::LAYOUT))?;
        Ok(dp)
    }

    /// Loads the object without pinning anything: the same map writer for
    /// the packet tests and benches, which run the programs with
    /// BPF_PROG_TEST_RUN. `clock`: a tick already measured in this process
    /// (`None` measures it, as `load` does).
    pub fn load_unpinned(
        object: &[u8],
        sizes: Sizes,
        clock: Option<lb_common::DataPathClock>,
    ) -> Result<Self> {
        let ebpf = balancer_loader(sizes, false)
            .load(object)
            .map_err(|e| DataPlaneError::Setup(format!("loading the eBPF object: {e}")))?;
        Self::loaded(ebpf, sizes, None, clock)
    }

    /// Checks the maps of a loaded object, maps the rings, measures the
    /// clock and rebuilds the VIP filter from the VIPs found.
    fn loaded(
        ebpf: Ebpf,
        sizes: Sizes,
        dir: Option<PathBuf>,
        clock: Option<lb_common::DataPathClock>,
    ) -> Result<Self> {
        let pins = dir.clone().unwrap_or_default();
        // A reused pin must be what this pool file and this program need:
        // the kernel would otherwise take writes past its end, or packets
        // would read values of another layout.
        let entries = lb_common::rings_entries(sizes.max_vips, sizes.ring_size) as usize;
        let expected: [(&'static str, u32, usize); 9] = [
            (maps::VIPS, sizes.max_vips, size_of::<VipInfo>()),
            (maps::VIP_ADDRS, sizes.max_vips, size_of::<u32>()),
            (maps::VIP_STATS, sizes.max_vips, size_of::<VipStats>()),
            (maps::BACKENDS, sizes.max_backends, size_of::<Backend>()),
            (
                maps::BACKEND_STATS,
                sizes.max_backends,
                size_of::<BackendStats>(),
            ),
            (maps::RINGS, entries as u32, size_of::<u64>()),
            (maps::FLOWS, sizes.flows, size_of::<FlowValue>()),
            (maps::CONFIG, 1, size_of::<Config>()),
            (maps::COUNTERS, lb_common::counter::COUNT, size_of::<u64>()),
        ];
        // (An unpinned load made its maps just now, from this object.)
        for (name, max, value) in expected.into_iter().filter(|_| dir.is_some()) {
            let m = ebpf.map(name).and_then(map_data).ok_or_else(|| {
                DataPlaneError::Setup(format!("map `{name}` missing from the eBPF object"))
            })?;
            let info = m.info().map_err(map_err(name))?;
            if info.max_entries() != max || info.value_size() as usize != value {
                return Err(DataPlaneError::Setup(format!(
                    "the pinned map {} was made for another pool or version ({} entries of {} bytes; this one needs {max} of {value}); run `lb stop` first to start afresh (established flows are then forgotten)",
                    pins.join(name).display(),
                    info.max_entries(),
                    info.value_size()
                )));
            }
        }
        let data = ebpf
            .map(maps::RINGS)
            .and_then(map_data)
            .expect("checked above");
        let ring = RingMmap::new(data, entries)?;
        let mut ebpf = ebpf;
        let clock = match clock.map(Ok).unwrap_or_else(|| data_path_clock(&mut ebpf)) {
            Ok(c) => {
                log::debug!("data path clock: {} ns per jiffy", c.jiffy_ns);
                c
            }
            Err(e) => {
                log::warn!("cannot calibrate the data path's jiffies clock ({e}); it reads the coarse clock instead, about 30 ns more per packet");
                lb_common::DataPathClock::default()
            }
        };
        let mut dp = BpfDataPlane {
            ebpf,
            ring,
            sizes,
            dir,
            adopted: std::collections::HashMap::new(),
            clock,
            filter: lb_common::VipFilter::new(),
            filter_stale: false,
            log: None,
        };
        // The filter is not pinned (a fresh load's is all zero): rebuild it
        // from the VIPs an earlier run left, if any.
        let vips = dp.vips()?;
        for (key, info) in &vips {
            dp.filter.set(*key, *info);
        }
        if !vips.is_empty() {
            lb_common::write_vip_filter_all(&mut dp.ebpf, &dp.filter)
                .map_err(DataPlaneError::Setup)?;
        }
        Ok(dp)
    }

    /// The `lb_xdp` program of the loaded object.
    fn balancer(&mut self) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(progs::BALANCER)
            .expect("lb_xdp in the object")
            .try_into()
            .map_err(|e| DataPlaneError::Setup(format!("lb_xdp: {e}")))
    }

    /// Whether an earlier run left a pinned link on `iface` (which `attach`
    /// then adopts).
    pub fn link_pinned(&self, iface: &str) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|d| link_pin(d, iface).exists())
    }

    /// The pin directory; attaching needs one.
    fn pins(&self) -> Result<&Path> {
        self.dir.as_deref().ok_or_else(|| {
            DataPlaneError::Setup("the balancer was loaded unpinned; it cannot be attached".into())
        })
    }

    /// The data path's decision log (loaded with `log_decisions`), for the
    /// caller to drain: `flush` hands its records to the `log` crate.
    pub fn take_decision_log(&mut self) -> Option<DecisionLog> {
        self.log.take()
    }

    /// The loaded object, for running and reading its programs and maps.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The tick the data path's clock was calibrated with (written into
    /// every `Config`); the default means the coarse-clock fallback.
    pub fn clock(&self) -> lb_common::DataPathClock {
        self.clock
    }

    /// Replaces the clock written into the next `Config`s, as a failed
    /// calibration does (the default: the coarse clock).
    pub fn set_clock(&mut self, clock: lb_common::DataPathClock) {
        self.clock = clock;
    }

    /// Attaches the balancer to `iface`, or adopts the link an earlier run
    /// pinned (then the new program replaces the old one in place, with no gap).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        let ifindex = ifindex(iface)?;
        let pin = link_pin(self.pins()?, iface);
        let prog = self.balancer()?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| match e {
                aya::programs::ProgramError::LoadError {
                    io_error,
                    verifier_log,
                } => DataPlaneError::Setup(format!(
                    "the kernel rejected the XDP program: {io_error}\n{verifier_log}"
                )),
                e => DataPlaneError::Setup(format!("loading lb_xdp: {e}")),
            })?;
        }
        if pin.exists() {
            match adopt_link(prog, &pin) {
                Ok(id) => {
                    self.adopted.insert(iface.to_string(), id);
                    log::info!("adopted the XDP link on `{iface}` ({})", pin.display());
                    return Ok(());
                }
                Err(e) => {
                    // E.g. the interface was deleted and made again: the old
                    // link is attached to nothing. Start afresh.
                    log::warn!(
                        "the pinned XDP link {} cannot be reused ({e}); attaching anew",
                        pin.display()
                    );
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let modes: &[(XdpMode, &str)] = match mode {
            AttachMode::Driver => &[(XdpMode::Driver, "driver")],
            AttachMode::Generic => &[(XdpMode::Skb, "generic")],
            AttachMode::Auto => &[(XdpMode::Driver, "driver"), (XdpMode::Skb, "generic")],
        };
        let mut last = String::new();
        for (m, name) in modes {
            match prog.attach_to_if_index(ifindex, *m) {
                Ok(id) => {
                    let link = prog
                        .take_link(id)
                        .map_err(|e| DataPlaneError::Setup(format!("{e}")))?;
                    let fd: FdLink = link.try_into().map_err(|e| {
                        DataPlaneError::Setup(format!(
                            "the kernel attached XDP without a bpf_link ({e}); pinning needs Linux 5.9 or newer"
                        ))
                    })?;
                    fd.pin(&pin).map_err(|e| {
                        DataPlaneError::Setup(format!("pinning {}: {e}", pin.display()))
                    })?;
                    log::info!("attached lb_xdp to `{iface}` in {name} mode");
                    return Ok(());
                }
                Err(e) => last = format!("{name} mode: {e}"),
            }
        }
        let others = self.other_instances_on(iface);
        let hint =
            match (mode, others.is_empty()) {
                (_, false) => format!(
                "; another XDP program is attached to `{iface}`: lb instance{} {} pin{} a link \
                 on an interface of that name (`lb stop --instance NAME` detaches it; or \
                 `ip link set dev {iface} xdp off`)",
                if others.len() == 1 { "" } else { "s" },
                others.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", "),
                if others.len() == 1 { "s" } else { "" },
            ),
                (AttachMode::Driver, true) => {
                    "; the driver may not support native XDP: try `xdp_mode: generic`".into()
                }
                _ => format!(
                    "; if another XDP program is attached to `{iface}`, detach it first \
                 (`ip link set dev {iface} xdp off`)"
                ),
            };
        Err(DataPlaneError::Setup(format!(
            "attaching XDP to `{iface}` failed ({last}){hint}"
        )))
    }

    /// Other lb instances that pin a link on an interface named `iface`
    /// (perhaps in another network namespace: names are not unique).
    fn other_instances_on(&self, iface: &str) -> Vec<String> {
        let me = self.dir.as_deref();
        std::fs::read_dir("/sys/fs/bpf")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| Some(e.path().as_path()) != me && link_pin(&e.path(), iface).exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn map(&self, name: &'static str) -> &aya::maps::Map {
        self.ebpf.map(name).expect("map in the object")
    }

    fn map_mut(&mut self, name: &'static str) -> &mut aya::maps::Map {
        self.ebpf.map_mut(name).expect("map in the object")
    }

    pub fn sizes(&self) -> Sizes {
        self.sizes
    }
}

impl BpfDataPlane {
    /// Detaches the balancer from `iface` (its pinned link is the last
    /// reference to the attachment).
    pub fn detach(&mut self, iface: &str) -> Result<()> {
        let pin = link_pin(self.pins()?, iface);
        std::fs::remove_file(&pin).map_err(|source| DataPlaneError::Io {
            what: format!("removing {}", pin.display()),
            source,
        })?;
        if let Some(id) = self.adopted.remove(iface) {
            let prog = self.balancer()?;
            prog.detach(id)
                .map_err(|e| DataPlaneError::Setup(format!("detaching from `{iface}`: {e}")))?;
        }
        log::info!("detached lb_xdp from `{iface}`");
        Ok(())
    }

    /// Detaches from interfaces an earlier run attached to that are not in
    /// `keep` (removed from the pool file while the daemon was down).
    pub fn detach_others(&mut self, keep: &[String]) -> Result<()> {
        let stale: Vec<String> = std::fs::read_dir(self.pins()?)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("link_"))
                    .map(str::to_string)
            })
            .filter(|i| !keep.contains(i))
            .collect();
        for iface in stale {
            self.detach(&iface)?;
        }
        Ok(())
    }
}

/// Whether instance `instance` has pinned state (its XDP program may still be attached).
pub fn has_pins(instance: &str) -> bool {
    pin_dir(instance).exists()
}

/// Puts `prog` in place of the program of the link pinned at `pin`.
fn adopt_link(
    prog: &mut Xdp,
    pin: &Path,
) -> std::result::Result<aya::programs::xdp::XdpLinkId, String> {
    let pinned = PinnedLink::from_pin(pin).map_err(|e| e.to_string())?;
    let link =
        aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    prog.attach_to_link(link).map_err(|e| e.to_string())
}

/// Removes the links (detaching XDP) and map pins of `instance`.
pub fn remove_pins(instance: &str) -> Result<Vec<PathBuf>> {
    let dir = pin_dir(instance);
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(removed);
    };
    for e in entries.flatten() {
        let p = e.path();
        std::fs::remove_file(&p).map_err(|source| DataPlaneError::Io {
            what: format!("removing {}", p.display()),
            source,
        })?;
        removed.push(p);
    }
    std::fs::remove_dir(&dir).ok();
    Ok(removed)
}

pub fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface)
        .map_err(|_| DataPlaneError::Setup(format!("interface name `{iface}` is not valid")))?;
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DataPlaneError::Setup(format!(
            "interface `{iface}` not found; `ip link` lists the interfaces"
        )));
    }
    Ok(idx)
}

impl BpfDataPlane {
    /// Writes a filter change, or all of the filter after a failed write.
    fn write_filter(&mut self, w: lb_common::FilterWrites) -> Result<()> {
        let r = if self.filter_stale {
            lb_common::write_vip_filter_all(&mut self.ebpf, &self.filter)
        } else {
            lb_common::write_vip_filter(&mut self.ebpf, w)
        };
        self.filter_stale = r.is_err();
        r.map_err(DataPlaneError::Setup)
    }
}

/// Loads `lb_clock` and measures the kernel's tick with it.
fn data_path_clock(ebpf: &mut aya::Ebpf) -> std::result::Result<lb_common::DataPathClock, String> {
    let prog: &mut Xdp = ebpf
        .program_mut(progs::CLOCK)
        .ok_or("lb_clock missing from the eBPF object")?
        .try_into()
        .map_err(|e| format!("lb_clock: {e}"))?;
    prog.load().map_err(|e| format!("loading lb_clock: {e}"))?;
    lb_common::calibrate_clock(prog)
}

impl DataPlane for BpfDataPlane {
    fn set_config(&mut self, cfg: &Config) -> Result<()> {
        let mut cfg = *cfg;
        self.clock.apply(&mut cfg);
        let mut a: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(maps::CONFIG)).map_err(map_err(maps::CONFIG))?;
        a.set(0, cfg, 0).map_err(map_err(maps::CONFIG))
    }

    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<()> {
        let mut a: Array<&mut MapData, Backend> =
            Array::try_from(self.map_mut(maps::BACKENDS)).map_err(map_err(maps::BACKENDS))?;
        a.set(id, *b, 0).map_err(map_err(maps::BACKENDS))
    }

    fn write_ring(&mut self, vip_id: u32, ring: u8, slots: &[u32]) -> Result<()> {
        let base = lb_common::ring_base(vip_id, ring, self.sizes.ring_size) as usize;
        self.ring.write(base, slots)
    }

    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()> {
        let mut m: HashMap<&mut MapData, VipKey, VipInfo> =
            HashMap::try_from(self.map_mut(maps::VIPS)).map_err(map_err(maps::VIPS))?;
        m.insert(key, info, 0).map_err(map_err(maps::VIPS))?;
        // After the VIP: a set bit without a VIP only costs a lookup.
        let w = self.filter.set(*key, *info);
        self.write_filter(w)
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, VipKey, VipInfo> =
            HashMap::try_from(self.map_mut(maps::VIPS)).map_err(map_err(maps::VIPS))?;
        m.remove(key).map_err(map_err(maps::VIPS))?;
        let w = self.filter.remove(key);
        self.write_filter(w)
    }

    fn set_vip_addr(&mut self, key: &AddrKey, flags: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, AddrKey, u32> =
            HashMap::try_from(self.map_mut(maps::VIP_ADDRS)).map_err(map_err(maps::VIP_ADDRS))?;
        m.insert(key, flags, 0).map_err(map_err(maps::VIP_ADDRS))
    }

    fn remove_vip_addr(&mut self, key: &AddrKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, AddrKey, u32> =
            HashMap::try_from(self.map_mut(maps::VIP_ADDRS)).map_err(map_err(maps::VIP_ADDRS))?;
        m.remove(key).map_err(map_err(maps::VIP_ADDRS))
    }

    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        let m: HashMap<&MapData, VipKey, VipInfo> =
            HashMap::try_from(self.map(maps::VIPS)).map_err(map_err(maps::VIPS))?;
        Ok(m.iter().filter_map(|r| r.ok()).collect())
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        let a: Array<&MapData, Backend> =
            Array::try_from(self.map(maps::BACKENDS)).map_err(map_err(maps::BACKENDS))?;
        Ok((0..a.len())
            .filter_map(|i| a.get(&i, 0).ok().map(|b| (i, b)))
            .filter(|(_, b)| b.flags & lb_common::BACKEND_F_USED != 0 || b.gen != 0)
            .collect())
    }

    fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        let a: PerCpuArray<&MapData, VipStats> =
            PerCpuArray::try_from(self.map(maps::VIP_STATS)).map_err(map_err(maps::VIP_STATS))?;
        let v = a.get(&vip_id, 0).map_err(map_err(maps::VIP_STATS))?;
        Ok(v.iter().sum())
    }

    fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        let a: PerCpuArray<&MapData, BackendStats> =
            PerCpuArray::try_from(self.map(maps::BACKEND_STATS))
                .map_err(map_err(maps::BACKEND_STATS))?;
        let v = a.get(&id, 0).map_err(map_err(maps::BACKEND_STATS))?;
        Ok(v.iter().sum())
    }

    fn counters(&self) -> Result<Vec<u64>> {
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(maps::COUNTERS)).map_err(map_err(maps::COUNTERS))?;
        (0..lb_common::counter::COUNT)
            .map(|i| {
                a.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(maps::COUNTERS))
            })
            .collect()
    }
}

/// Flows per backend id seen within `max_idle_ns`, scanning at most `limit`
/// entries of instance `instance`'s pinned flow table. Opens its own handle:
/// the daemon runs this off its writer task, since a full table takes seconds.
pub fn count_flows(
    instance: &str,
    max_idle_ns: u64,
    limit: usize,
) -> Result<std::collections::HashMap<u32, u64>> {
    let path = pin_dir(instance).join(maps::FLOWS);
    let data = MapData::from_pin(&path).map_err(map_err(maps::FLOWS))?;
    count_flows_in(&data, max_idle_ns, limit)
}

/// Flows per backend id in the flow table `flows`, as `count_flows`.
/// Reads the table in batches (`BPF_MAP_LOOKUP_BATCH`, 4096 entries a
/// call): a million flows take a few hundred calls, where a key-by-key walk
/// takes two million and starts over whenever its key is evicted.
pub fn count_flows_in(
    flows: &MapData,
    max_idle_ns: u64,
    limit: usize,
) -> Result<std::collections::HashMap<u32, u64>> {
    let now = monotonic_ns();
    let mut out = std::collections::HashMap::new();
    let mut seen = 0;
    lookup_batches(flows, |values| {
        for v in values {
            // last_seen is refreshed at most once a second by the data path.
            if now.saturating_sub(v.last_seen_ns) <= max_idle_ns + 1_000_000_000 {
                *out.entry(v.backend).or_insert(0) += 1;
            }
        }
        seen += values.len();
        seen < limit
    })
    .map_err(|source| DataPlaneError::Io {
        what: format!("reading `{}` in batches", maps::FLOWS),
        source,
    })?;
    Ok(out)
}

/// Hands every value of the flow table to `each`, a batch at a time, until
/// the table ends or `each` says stop.
fn lookup_batches(
    flows: &MapData,
    mut each: impl FnMut(&[FlowValue]) -> bool,
) -> std::io::Result<()> {
    /// The `BPF_MAP_*_BATCH` part of `union bpf_attr`.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const CHUNK: usize = 4096;
    let mut keys = vec![FlowKey::default(); CHUNK];
    let mut values = vec![FlowValue::default(); CHUNK];
    // Hash tables' batch position: a bucket number.
    let (mut from, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &from as *const u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: flows.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(CHUNK);
        match err {
            // ENOENT: the table ended (with the last `n` entries read).
            Some(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            Some(_) => {
                each(&values[..n]);
                return Ok(());
            }
            None if !each(&values[..n]) => return Ok(()),
            None => {}
        }
        from = next;
        first = false;
    }
}

pub use lb_common::monotonic_ns;

/// `/sys/fs/bpf/lb-decap-<netns>-<iface>`: where a backend's decapsulator
/// is pinned (the network namespace's inode keeps namespaces apart).
pub fn decap_pin_dir(iface: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    Path::new("/sys/fs/bpf").join(format!("lb-decap-{ns}-{iface}"))
}

/// On a backend: attaches `lb_decap` to `iface` for `vips` and pins it, so
/// it stays after this process exits. Replaces an earlier one in place.
pub fn attach_decap(
    object: &[u8],
    iface: &str,
    vips: &[std::net::IpAddr],
    sources: &[(std::net::IpAddr, u8)],
    mode: AttachMode,
) -> Result<()> {
    ensure_bpffs()?;
    let ifindex = ifindex(iface)?;
    let dir = decap_pin_dir(iface);
    let _ = remove_decap(iface);
    std::fs::create_dir_all(&dir).map_err(|source| DataPlaneError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let mut ebpf = load_decap_unpinned(object)?;
    write_decap_maps(&mut ebpf, vips, sources)?;
    for name in [maps::DECAP_VIPS, maps::DECAP_COUNTERS, maps::DECAP_SOURCES] {
        ebpf.map_mut(name)
            .expect("decap map")
            .pin(dir.join(name))
            .map_err(|e| DataPlaneError::Setup(format!("pinning {name}: {e}")))?;
    }
    let prog: &mut Xdp = ebpf
        .program_mut(progs::DECAP)
        .expect("lb_decap in the object")
        .try_into()
        .map_err(|e| DataPlaneError::Setup(format!("lb_decap: {e}")))?;
    prog.load()
        .map_err(|e| DataPlaneError::Setup(format!("loading lb_decap: {e}")))?;
    let modes: &[XdpMode] = match mode {
        AttachMode::Driver => &[XdpMode::Driver],
        AttachMode::Generic => &[XdpMode::Skb],
        AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
    };
    let mut last = String::new();
    for m in modes {
        match prog.attach_to_if_index(ifindex, *m) {
            Ok(id) => {
                let link = prog
                    .take_link(id)
                    .map_err(|e| DataPlaneError::Setup(format!("{e}")))?;
                let fd: FdLink = link
                    .try_into()
                    .map_err(|e| DataPlaneError::Setup(format!("{e}")))?;
                fd.pin(dir.join("link"))
                    .map_err(|e| DataPlaneError::Setup(format!("pinning the link: {e}")))?;
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(DataPlaneError::Setup(format!(
        "attaching lb_decap to `{iface}` failed: {last}"
    )))
}

/// Loads the object for the decapsulator, pinning nothing (`attach_decap`
/// pins; the packet tests run it with BPF_PROG_TEST_RUN). The balancer's
/// maps, unused by the decapsulator, stay tiny.
pub fn load_decap_unpinned(object: &[u8]) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for m in ALL_MAPS {
        loader.map_max_entries(m, 1);
    }
    loader
        .map_max_entries(maps::RINGS, 1)
        .map_max_entries(maps::VIP_FILTER, 1)
        .map_max_entries(maps::VIP_INDEX, 1)
        .map_max_entries(maps::NEXTHOPS, 1);
    loader
        .load(object)
        .map_err(|e| DataPlaneError::Setup(format!("loading the eBPF object: {e}")))
}

/// Writes the decapsulator's maps: the VIPs it accepts tunnels to, and the
/// outer sources it accepts them from (none given: any source, so the
/// upstream filter must do it).
pub fn write_decap_maps(
    ebpf: &mut Ebpf,
    vips: &[std::net::IpAddr],
    sources: &[(std::net::IpAddr, u8)],
) -> Result<()> {
    let map = ebpf
        .map_mut(maps::DECAP_VIPS)
        .ok_or_else(|| missing(maps::DECAP_VIPS))?;
    let mut m: HashMap<&mut MapData, AddrKey, u32> =
        HashMap::try_from(map).map_err(map_err(maps::DECAP_VIPS))?;
    for ip in vips {
        let (addr, family) = lb_common::addr_words(*ip);
        let key = AddrKey {
            addr,
            family,
            _pad: [0; 3],
        };
        m.insert(key, 1, 0).map_err(map_err(maps::DECAP_VIPS))?;
    }
    let map = ebpf
        .map_mut(maps::DECAP_SOURCES)
        .ok_or_else(|| missing(maps::DECAP_SOURCES))?;
    let mut t: aya::maps::LpmTrie<&mut MapData, lb_common::DecapSource, u32> =
        aya::maps::LpmTrie::try_from(map).map_err(map_err(maps::DECAP_SOURCES))?;
    let old: Vec<_> = t
        .keys()
        .collect::<std::result::Result<_, _>>()
        .map_err(map_err(maps::DECAP_SOURCES))?;
    for k in old {
        t.remove(&k).map_err(map_err(maps::DECAP_SOURCES))?;
    }
    let any = [
        (std::net::IpAddr::from([0u8; 4]), 0),
        (std::net::IpAddr::from([0u8; 16]), 0),
    ];
    let sources = if sources.is_empty() {
        &any[..]
    } else {
        sources
    };
    for (addr, prefix) in sources {
        let (len, data) = lb_common::DecapSource::key(*addr, *prefix);
        t.insert(&aya::maps::lpm_trie::Key::new(len, data), 1, 0)
            .map_err(map_err(maps::DECAP_SOURCES))?;
    }
    Ok(())
}

fn missing(map: &str) -> DataPlaneError {
    DataPlaneError::Setup(format!("map `{map}` missing from the eBPF object"))
}

/// Detaches a backend's decapsulator and removes its pins.
pub fn remove_decap(iface: &str) -> Result<bool> {
    let dir = decap_pin_dir(iface);
    if !dir.exists() {
        return Ok(false);
    }
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(true)
}
