//! The health-check rules: the layers (built-in defaults, `health_defaults`,
//! the VIP's, the backend's) merged key by key, and the probe each backend
//! gets from them.
use super::*;

impl Check<'_> {
    /// The mapping of a valid health-check layer.
    pub(super) fn layer(&self, field: &Field<HealthFile>) -> Option<&Node> {
        field.get().map(|at| self.node(&at.path))
    }

    /// Merged layers read as one health check (their problems, already
    /// reported where they are, are found again and listed once).
    pub(super) fn health(&self, layer: &Layer) -> HealthFile {
        let entries = layer.iter().map(|(k, v)| ((*k).clone(), (*v).clone()));
        let kind = Kind::Map(entries.collect());
        let node = Node {
            pos: Pos::START,
            key: Pos::START,
            path: String::new(),
            kind,
        };
        let de = De {
            node: &node,
            sink: self.sink,
        };
        HealthFile::deserialize(de).unwrap_or_default()
    }

    /// Reports the fields `layer` gives that mean nothing to the kind in
    /// force there (`merged`: the layer over those below it).
    pub(super) fn fits(&self, layer: Option<&Node>, merged: &HealthFile) {
        let Some(Kind::Map(entries)) = layer.map(|l| &l.kind) else {
            return;
        };
        let Some(kind) = merged.kind.known_or(CheckKind::Tcp) else {
            return;
        };
        let known = fields_of::<HealthFile>();
        for (key, value) in entries {
            let Some(name) = key.text().filter(|n| *n != "kind" && known.contains(n)) else {
                continue;
            };
            let message = match CheckKind::owning(name) {
                _ if matches!(value.kind, Kind::Null) => continue,
                _ if kind == CheckKind::None => format!(
                    "`{name}` has no effect: this health check is off (kind `none`); remove it \
                     or set another kind"
                ),
                Some(owner) if owner != kind => format!(
                    "`{name}` applies only to {0} checks, but this health check is {1}; remove \
                     it or set `kind: {0}`",
                    owner.as_str(),
                    kind.as_str()
                ),
                _ => continue,
            };
            self.report(&value.path, message);
        }
    }

    /// The probe of one backend from its merged health check; `layers` are
    /// the backend's and the VIP's own, where a missing port is asked for.
    pub(super) fn probe(
        &self,
        h: &HealthFile,
        vip: &VipFile,
        layers: [Option<&Node>; 2],
        address: IpAddr,
        backend_port: Option<u32>,
    ) -> Option<ProbeSpec> {
        let kind = h
            .kind
            .known_or(CheckKind::Tcp)
            .filter(|k| *k != CheckKind::None)?;
        let port = match (&h.port, backend_port) {
            (Field::Absent | Field::Null(_), Some(p)) => p,
            _ => self.probe_port(h, kind, vip, layers)?,
        };
        self.udp_vip_probe(h, kind, vip)?;
        let (interval, timeout) = (&h.interval, &h.timeout);
        let (i, t) = (
            interval.or(Dur(DEFAULT_HEALTH_INTERVAL)).0,
            timeout.or(Dur(DEFAULT_HEALTH_TIMEOUT)).0,
        );
        if t > i && !interval.invalid() && !timeout.invalid() {
            // Report where the later (more specific) of the two was written.
            let depth = |f: &Field<Dur>| f.get().map_or(0, |a| a.path.matches('.').count());
            let later = if depth(timeout) >= depth(interval) {
                timeout
            } else {
                interval
            };
            let message = format!(
                "health-check timeout {} is longer than its interval {}; probes would overlap: \
                 make timeout at most the interval",
                humantime::format_duration(t),
                humantime::format_duration(i)
            );
            self.report(later.get().map_or("", |a| a.path.as_str()), message);
            return None;
        }
        let kind = match kind {
            CheckKind::Tcp | CheckKind::None => ProbeKind::Tcp,
            CheckKind::Http => ProbeKind::Http {
                path: h.path.or(HttpPath(DEFAULT_HTTP_PATH.to_owned())).0,
                expect_status: h.expect_status.or(Int(DEFAULT_HTTP_STATUS.into())).0 as u16,
                host: h.host.get().map(|a| a.value.0.clone()),
            },
            CheckKind::Udp => ProbeKind::Udp {
                send: h.send.or(DEFAULT_UDP_SEND.to_owned()).into_bytes(),
                expect: h.expect.get().map(|a| a.value.clone().into_bytes()),
            },
            CheckKind::Exec => ProbeKind::Exec {
                command: self.command(h)?,
                args: h.args.or(Vec::new()),
            },
        };
        Some(ProbeSpec {
            kind,
            target: SocketAddr::new(address, port as u16),
            interval: i,
            timeout: t,
            rise: h.rise.or(Int(DEFAULT_RISE)).0,
            fall: h.fall.or(Int(DEFAULT_FALL)).0,
        })
    }

    /// A UDP VIP's backends may serve nothing over TCP on the VIP's port:
    /// a tcp or http check there (the default) would take every backend
    /// down. It needs a check that can pass: udp, exec, none, or a TCP
    /// check with its own `port`.
    pub(super) fn udp_vip_probe(
        &self,
        h: &HealthFile,
        kind: CheckKind,
        vip: &VipFile,
    ) -> Option<()> {
        let udp = vip.protocol.get().is_some_and(|p| p.value == Protocol::Udp);
        let tcp = matches!(kind, CheckKind::Tcp | CheckKind::Http);
        if !udp || !tcp || matches!(h.port, Field::Valid(_)) {
            return Some(());
        }
        let path = h.kind.get().map_or_else(
            || vip.protocol.get().map_or(String::new(), |p| p.path.clone()),
            |k| k.path.clone(),
        );
        let message = format!(
            "VIP `{}` is UDP, and its health check (kind `{}`) probes the VIP port over TCP, \
             which a UDP service does not answer: every backend would be marked down; use \
             `health_check: {{ kind: udp, send: ..., expect: ... }}`, `exec` or `none`, \
             or give the `{}` check a `port`",
            vip.name.get().map_or("", |n| n.value.0.as_str()),
            kind.as_str(),
            kind.as_str()
        );
        self.report(&path, message);
        None
    }

    /// The port a check probes: its own, else the VIP's; exec checks need
    /// none. Reported where it could be added when the VIP has port 0.
    pub(super) fn probe_port(
        &self,
        h: &HealthFile,
        kind: CheckKind,
        vip: &VipFile,
        layers: [Option<&Node>; 2],
    ) -> Option<u32> {
        match (&h.port, vip.port.get()) {
            (Field::Valid(p), _) => Some(p.value.0),
            (Field::Invalid, _) => None,
            (_, Some(vp)) if vp.value.0 != 0 => Some(vp.value.0),
            _ if kind == CheckKind::Exec => Some(0),
            (_, None) => None,
            (_, Some(vp)) => {
                // The most specific place the port could be added.
                let path = match layers.iter().flatten().next() {
                    Some(layer) => join(&layer.path, "port"),
                    None => vp.path.clone(),
                };
                let message = format!(
                    "a {} health check needs a port, and VIP `{}` listens on every port \
                     (port 0); set `port` in its health_check",
                    kind.as_str(),
                    vip.name.get().map_or("", |n| n.value.0.as_str())
                );
                self.report(&path, message);
                None
            }
        }
    }

    /// An exec check's command, reported at its `kind` when missing.
    pub(super) fn command(&self, h: &HealthFile) -> Option<PathBuf> {
        if let (Field::Absent | Field::Null(_), Some(kind)) = (&h.command, h.kind.get()) {
            let message = "an exec health check needs `command`, the program to run (it exits 0 \
                           when the backend is healthy)";
            self.report(&kind.path, message);
        }
        h.command.get().map(|c| c.value.clone())
    }
}

/// `upper` over `lower`: each field `upper` gives wins. When `upper` changes
/// the kind, the fields of the old kind are dropped (an http `path` from
/// `health_defaults` means nothing to a VIP that says `kind: udp`).
pub(super) fn over<'n>(lower: &Layer<'n>, upper: Option<&'n Node>) -> Layer<'n> {
    let Some(Kind::Map(upper)) = upper.map(|u| &u.kind) else {
        return lower.clone();
    };
    let given = |(_, v): &&(Node, Node)| !matches!(v.kind, Kind::Null);
    let upper: Layer = upper.iter().filter(given).map(|(k, v)| (k, v)).collect();
    let kind = |layer: &Layer<'n>| {
        layer
            .iter()
            .find(|(k, _)| k.text() == Some("kind"))
            .and_then(|(_, v)| v.text())
    };
    let changed = kind(&upper).is_some_and(|new| new != kind(lower).unwrap_or("tcp"));
    let gives = |layer: &Layer, name: Option<&str>| layer.iter().any(|(k, _)| k.text() == name);
    let mut out: Layer = lower
        .iter()
        .filter(|(k, _)| !gives(&upper, k.text()))
        .filter(|(k, _)| !changed || k.text().and_then(CheckKind::owning).is_none())
        .copied()
        .collect();
    for entry in upper {
        if !gives(&out, entry.0.text()) {
            out.push(entry);
        }
    }
    out
}
