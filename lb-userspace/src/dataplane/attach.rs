//! Attaching the balancer to interfaces: a new XDP link, or the one an
//! earlier run pinned (adopted, the new program in its place), and detaching.
use super::*;

impl BpfDataPlane {
    /// Attaches the balancer to `iface`, or adopts the link an earlier run
    /// pinned (then the new program replaces the old one in place, with no gap).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        let ifindex = ifindex(iface)?;
        let pin = link_pin(self.pins()?, iface);
        self.load_programs()?;
        let prog = self.balancer()?;
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
