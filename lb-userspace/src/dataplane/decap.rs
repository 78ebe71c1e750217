//! The backends' side: `lb decap` loads, writes and pins `lb_decap`.
use super::*;

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
    vips: &[DecapVip],
    sources: &[(std::net::IpAddr, u8)],
    gue_port: u16,
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
    write_decap_maps(&mut ebpf, vips, sources, gue_port)?;
    for name in [
        maps::DECAP_ADDRS,
        maps::DECAP_VIPS,
        maps::DECAP_COUNTERS,
        maps::DECAP_SOURCES,
        maps::DECAP_GUE,
    ] {
        ebpf.map_mut(name)
            .expect("decap map")
            .pin(dir.join(name))
            .map_err(|e| DataPlaneError::Setup(format!("pinning {name}: {e}")))?;
    }
    let prog = super::programs::xdp_mut(&mut ebpf, progs::DECAP)?;
    super::programs::load_xdp(prog, progs::DECAP)?;
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
    for m in super::load::ALL_MAPS {
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

/// A VIP a backend's decapsulator accepts tunnels to: address, port (0:
/// every port) and protocol (`PROTO_TCP` or `PROTO_UDP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecapVip {
    pub addr: std::net::IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl std::fmt::Display for DecapVip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = if self.proto == lb_common::PROTO_UDP {
            "udp"
        } else {
            "tcp"
        };
        write!(
            f,
            "{}/{proto}",
            std::net::SocketAddr::new(self.addr, self.port)
        )
    }
}

/// Writes the decapsulator's maps: the VIPs it accepts tunnels to (with
/// ICMP to their addresses, which carries errors about their flows), the
/// outer sources it accepts them from (none given: any source, so the
/// upstream filter must do it), and the UDP port of GUE tunnels (0: none).
pub fn write_decap_maps(
    ebpf: &mut Ebpf,
    vips: &[DecapVip],
    sources: &[(std::net::IpAddr, u8)],
    gue_port: u16,
) -> Result<()> {
    let map = ebpf
        .map_mut(maps::DECAP_GUE)
        .ok_or_else(|| missing(maps::DECAP_GUE))?;
    let mut a: Array<&mut MapData, u32> = Array::try_from(map).map_err(map_err(maps::DECAP_GUE))?;
    a.set(0, u32::from(gue_port.to_be()), 0)
        .map_err(map_err(maps::DECAP_GUE))?;
    let map = ebpf
        .map_mut(maps::DECAP_VIPS)
        .ok_or_else(|| missing(maps::DECAP_VIPS))?;
    let mut m: HashMap<&mut MapData, VipKey, u32> =
        HashMap::try_from(map).map_err(map_err(maps::DECAP_VIPS))?;
    for v in vips {
        let (addr, family) = lb_common::addr_words(v.addr);
        let icmp = if v.addr.is_ipv4() {
            lb_common::PROTO_ICMP
        } else {
            lb_common::PROTO_ICMPV6
        };
        for (port, proto) in [(0, icmp), (v.port, v.proto)] {
            let key = VipKey {
                addr,
                port: port.to_be(),
                proto,
                family,
            };
            m.insert(key, 1, 0).map_err(map_err(maps::DECAP_VIPS))?;
        }
    }
    let map = ebpf
        .map_mut(maps::DECAP_ADDRS)
        .ok_or_else(|| missing(maps::DECAP_ADDRS))?;
    let mut m: HashMap<&mut MapData, AddrKey, u32> =
        HashMap::try_from(map).map_err(map_err(maps::DECAP_ADDRS))?;
    for v in vips {
        let (addr, family) = lb_common::addr_words(v.addr);
        let key = AddrKey {
            addr,
            family,
            _pad: [0; 3],
        };
        m.insert(key, 1, 0).map_err(map_err(maps::DECAP_ADDRS))?;
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
