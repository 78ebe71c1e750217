//! Where the balancer's state lives in bpffs: the pin directory of an
//! instance, mounting bpffs (and refusing a private one), pinned links and
//! the layout version, and removing an instance's pins.
use super::*;

/// `/sys/fs/bpf/<instance>`.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(instance)
}

/// Map `name` pinned by instance `instance`, with a handle of its own.
pub(super) fn pinned_map(instance: &str, name: &'static str) -> Result<MapData> {
    MapData::from_pin(pin_dir(instance).join(name)).map_err(map_err(name))
}

/// Program `name` (`lb_flow_swap`, `lb_flow_move`) pinned by instance
/// `instance`.
pub(super) fn pinned_xdp(instance: &str, name: &str) -> Result<Xdp> {
    Xdp::from_pin(
        pin_dir(instance).join(name),
        aya_obj::programs::XdpAttachType::Interface,
    )
    .map_err(|e| DataPlaneError::Setup(format!("opening the pinned {name}: {e}")))
}

pub(super) fn link_pin(dir: &Path, iface: &str) -> PathBuf {
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

/// When this process's mount namespace differs from its parent's (what
/// `ip netns exec` does), the two namespace ids.
pub(super) fn private_mount_namespace() -> Option<String> {
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

/// The layout version held by a pinned `LAYOUT` map, if there is one.
pub(super) fn read_layout_pin(path: &Path) -> Option<u32> {
    let data = MapData::from_pin(path).ok()?;
    let map = aya::maps::Map::Array(data);
    let a: Array<MapData, u32> = Array::try_from(map).ok()?;
    a.get(&0, 0).ok()
}

/// Whether instance `instance` has pinned state (its XDP program may still be attached).
pub fn has_pins(instance: &str) -> bool {
    pin_dir(instance).exists()
}

/// Puts `prog` in place of the program of the link pinned at `pin`.
pub(super) fn adopt_link(
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
