//! Loading the balancer's object: its map sizes and log level, the maps
//! pinned under the instance's directory (adopted after a restart when
//! their layout is this version's), the mapped tables, and the VIP filter
//! rebuilt from the VIPs found.
use super::programs::data_path_clock;
use super::*;

pub(super) const ALL_MAPS: [&str; 19] = [
    maps::LAYOUT,
    maps::VIPS,
    maps::VIP_ADDRS,
    maps::BACKENDS,
    maps::RINGS,
    maps::MEMBERS,
    maps::FLOWS,
    maps::CONFIG,
    maps::VIP_STATS,
    maps::BACKEND_STATS,
    maps::COUNTERS,
    maps::LOADS,
    maps::LIMITS,
    maps::PERSIST,
    maps::NAT_REPLIES,
    maps::NAT_ADDRS,
    maps::NAT_FILTER,
    maps::CHAINS,
    // Pinned so its entries outlive the daemon: the kernel empties a
    // program array when the last file descriptor to it closes, and
    // `lb_xdp` could then no longer reach `lb_stateless`.
    maps::PROGS,
];

/// The aya-log level the data path logs at: its decision log is off (0)
/// unless asked for. The level is read-only data, so with it off the
/// verifier removes the logging code and the data path pays nothing.
const LOG_LEVEL: &str = "AYA_LOG_LEVEL";
const LOG_OFF: u8 = 0;
const LOG_INFO: u8 = 3;

/// A loader with the balancer's map sizes and log level; the
/// decapsulator's maps, unused on a balancer, stay tiny.
fn balancer_loader(sizes: Sizes, log_decisions: bool) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    lb_common::size_maps(&mut loader, sizes);
    loader
        .map_max_entries(maps::DECAP_VIPS, 1)
        .map_max_entries(maps::DECAP_ADDRS, 1)
        .map_max_entries(maps::DECAP_COUNTERS, lb_common::decap_counter::COUNT);
    let level = if log_decisions { &LOG_INFO } else { &LOG_OFF };
    // An object without the log (an older build) loads as well, unless the
    // log is asked for.
    loader.override_global(LOG_LEVEL, level, log_decisions);
    loader
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
        let chains = sizes.stateless_vips.max(1) * sizes.ring_size;
        let chunks = lb_common::flow_chunks(lb_common::flow_sets(sizes.flows));
        let members = lb_common::members_entries(sizes.max_vips, sizes.max_vip_backends.max(1));
        let expected: [(&'static str, u32, usize); 16] = [
            (maps::CHAINS, chains, size_of::<u64>()),
            (maps::MEMBERS, members, size_of::<u64>()),
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
            // The chunks' own size is checked as they are filled in.
            (maps::FLOWS, chunks, size_of::<u32>()),
            (maps::CONFIG, 1, size_of::<Config>()),
            (maps::COUNTERS, lb_common::counter::COUNT, size_of::<u64>()),
            (maps::LOADS, sizes.max_backends, size_of::<u64>()),
            (
                maps::LIMITS,
                sizes.max_backends,
                size_of::<lb_common::BackendLimit>(),
            ),
            (
                maps::PERSIST,
                sizes.persist,
                size_of::<lb_common::PersistValue>(),
            ),
            (
                maps::NAT_REPLIES,
                sizes.flows,
                size_of::<lb_common::NatValue>(),
            ),
            (
                maps::NAT_ADDRS,
                sizes.max_vips * 2 * lb_common::NAT_ADDRS_PER_FAMILY,
                16,
            ),
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
        let ring = RingMmap::new(data, entries, maps::RINGS)?;
        let data = ebpf
            .map(maps::MEMBERS)
            .and_then(map_data)
            .expect("checked above");
        let members = RingMmap::new(data, members as usize, maps::MEMBERS)?;
        let data = ebpf
            .map(maps::CHAINS)
            .and_then(map_data)
            .expect("checked above");
        let chains = RingMmap::new(data, chains as usize, maps::CHAINS)?;
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
        fill_flow_chunks(&mut ebpf, chunks)?;
        load_flow_programs(&mut ebpf, dir.as_deref())?;
        let flow_seed = flow_seed(&ebpf)?;
        let mut dp = BpfDataPlane {
            flow_seed,
            ebpf,
            ring,
            members,
            chains,
            sizes,
            dir,
            adopted: std::collections::HashMap::new(),
            clock,
            filter: lb_common::VipFilter::new(),
            filter_stale: false,
            log: None,
            deferred: Default::default(),
            cpus: aya::util::nr_cpus()
                .map_err(|(_, e)| DataPlaneError::Setup(format!("counting CPUs: {e}")))?,
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
        let words: BTreeSet<u32> = vips.iter().map(|(k, _)| VipFilter::bit(k) / 64).collect();
        for w in words {
            dp.write_stateless_word(w)?;
        }
        Ok(dp)
    }
}

/// Gives each slot of `FLOWS` that has none its chunk, a new inner array
/// (all of them for a new table; none when a pinned table is adopted, or
/// those a fill cut short left). A chunk of another size (another
/// version's) is refused.
///
/// The slots are written `FILL_BATCH` at a time with one batch update:
/// the kernel waits for an RCU grace period (about 10 ms here) after each
/// write to a map of maps, once per call, so one write per chunk would
/// take 40 s for a table of a million flows.
fn fill_flow_chunks(ebpf: &mut Ebpf, chunks: u32) -> Result<()> {
    const FILL_BATCH: usize = 512;
    let m = ebpf.map_mut(maps::FLOWS).ok_or_else(|| {
        DataPlaneError::Setup(format!(
            "map `{}` missing from the eBPF object",
            maps::FLOWS
        ))
    })?;
    let data = map_data(m).expect("an array of maps");
    // The slots that hold a chunk: one batch read (an empty slot is skipped).
    let mut held = vec![false; chunks as usize];
    super::batch::lookup_batches_of::<u32, u32>(data, 1, |slots, _| {
        for &c in slots {
            if let Some(h) = held.get_mut(c as usize) {
                *h = true;
            }
        }
        true
    })
    .map_err(|source| DataPlaneError::Io {
        what: "reading the flow table's slots".into(),
        source,
    })?;
    if let Some(c) = held.iter().position(|&h| h) {
        let outer: aya::maps::ArrayOfMaps<&MapData, Array<MapData, lb_common::FlowChunk>> =
            aya::maps::ArrayOfMaps::try_from(&*m).map_err(map_err(maps::FLOWS))?;
        match outer.get(&(c as u32), 0) {
            Ok(_) => {}
            Err(aya::maps::MapError::InvalidValueSize { size, expected }) => {
                return Err(DataPlaneError::Setup(format!(
                    "the pinned flow table's chunks are of {expected} bytes, this version's of \
                     {size}; run `lb stop` first to start afresh (established flows are then \
                     forgotten)"
                )))
            }
            Err(e) => return Err(map_err(maps::FLOWS)(e)),
        }
    }
    let empty: Vec<u32> = (0..chunks).filter(|&c| !held[c as usize]).collect();
    for slots in empty.chunks(FILL_BATCH) {
        let inner = slots
            .iter()
            .map(|_| {
                let def = aya_obj::Map::new_from_params(
                    aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
                    size_of::<u32>() as u32,
                    size_of::<lb_common::FlowChunk>() as u32,
                    1,
                    0,
                );
                MapData::create(def, "lb_flow_chunk", None)
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err(maps::FLOWS))?;
        let fds: Vec<u32> = inner
            .iter()
            .map(|a| a.fd().as_fd().as_raw_fd() as u32)
            .collect();
        super::batch::update_batch(data, slots, &fds, 1).map_err(|source| DataPlaneError::Io {
            what: "filling the flow table's chunks".into(),
            source,
        })?;
    }
    Ok(())
}

/// Loads `lb_flow_swap`, with which the census ends a flow's count, and
/// `lb_flow_move`, with which it grows the table, and pins them in `dir`
/// (replacing an earlier run's) for the census thread.
fn load_flow_programs(ebpf: &mut Ebpf, dir: Option<&Path>) -> Result<()> {
    for name in [progs::FLOW_SWAP, progs::FLOW_MOVE] {
        let prog = super::programs::xdp_mut(ebpf, name)?;
        super::programs::load_xdp(prog, name)?;
        if let Some(dir) = dir {
            let pin = dir.join(name);
            std::fs::remove_file(&pin).ok();
            prog.pin(&pin)
                .map_err(|e| DataPlaneError::Setup(format!("pinning {name}: {e}")))?;
        }
    }
    Ok(())
}

/// The flow table's hash key: the one an earlier run wrote with the table
/// (kept in the pinned `CONFIG`), else a new random one.
fn flow_seed(ebpf: &Ebpf) -> Result<[u64; 2]> {
    let m = ebpf.map(maps::CONFIG).ok_or_else(|| {
        DataPlaneError::Setup(format!(
            "map `{}` missing from the eBPF object",
            maps::CONFIG
        ))
    })?;
    let old = super::grow::read_config(m)?.flow_seed;
    if old != [0, 0] {
        return Ok(old);
    }
    let mut buf = [0u8; 16];
    urandom(&mut buf).map_err(|source| DataPlaneError::Io {
        what: "reading /dev/urandom".into(),
        source,
    })?;
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap());
    Ok([word(&buf[..8]), word(&buf[8..])])
}

/// Fills `buf` from /dev/urandom (the flow table's key, the hash secret).
pub fn urandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf))
}
