//! Every rule that involves more than one field, and the build of the
//! [`Pool`] with its defaults.
//!
//! Every invalid value has been reported where it was found; rules skip what
//! depends on it, and the build puts a placeholder in its stead (the pool is
//! not returned when anything was reported).
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::de::{fields_of, At, De, Field, Sink};
use super::file::*;
use super::tree::{Kind, Node};
use super::*;
use crate::health::ProbeKind;

/// Reads the file's tree into a [`Pool`]; `None` when the file is not a
/// mapping at all.
pub(super) fn pool(root: &Node, sink: &Sink) -> Option<Pool> {
    let file = PoolFile::deserialize(De { node: root, sink }).ok()?;
    Some(Check { sink, root }.pool(&file))
}

/// The entries of a health-check mapping, or of several merged.
type Layer<'n> = Vec<(&'n Node, &'n Node)>;

struct Check<'a> {
    sink: &'a Sink,
    root: &'a Node,
}

impl Check<'_> {
    /// The node at `path`, or the nearest one above it (where a missing
    /// field is reported).
    fn node(&self, mut path: &str) -> &Node {
        loop {
            match (self.root.find(path), path.rfind(['.', '['])) {
                (Some(node), _) => return node,
                (None, Some(i)) => path = &path[..i],
                (None, None) => return self.root,
            }
        }
    }

    /// Reports a problem with the value at `path`.
    fn report(&self, path: &str, message: impl Into<String>) {
        self.sink.report(self.node(path).pos, path, message);
    }

    /// The line of the value at `path`, for "first at line N".
    fn line(&self, path: &str) -> usize {
        self.node(path).pos.line
    }

    /// A required field `name` of the mapping at `owner`.
    fn req<'f, T>(
        &self,
        owner: &str,
        name: &str,
        f: &'f Field<T>,
        hint: &str,
    ) -> Option<&'f At<T>> {
        let path = join(owner, name);
        match f {
            Field::Valid(at) => return Some(at),
            Field::Invalid => {}
            Field::Null(_) => {
                let key = self.node(&path).key;
                self.sink
                    .report(key, &path, format!("`{name}` has no value; {hint}"));
            }
            Field::Absent => {
                let this = match owner.rsplit('.').next().unwrap_or_default() {
                    "" => "the pool file",
                    last if last.starts_with("backends") => "this backend",
                    _ => "this VIP",
                };
                self.report(&path, format!("{this} has no `{name}`; {hint}"));
            }
        }
        None
    }

    /// The valid entries of a list; empty entries are reported.
    fn items<'f, T>(&self, list: Option<&'f At<Vec<Field<T>>>>) -> Vec<&'f At<T>> {
        let entries = list.map_or(&[][..], |l| &l.value[..]);
        let mut out = Vec::new();
        for entry in entries {
            match entry {
                Field::Valid(at) => out.push(at),
                Field::Null(at) => {
                    self.report(&at.path, "this entry is empty; fill it in or remove it")
                }
                Field::Absent | Field::Invalid => {}
            }
        }
        out
    }

    fn pool(&self, f: &PoolFile) -> Pool {
        let instance = self.req(
            "",
            "instance",
            &f.instance,
            "name this balancer, e.g. `instance: lb0`",
        );
        let hint = "list the interfaces to attach to, e.g. `interfaces: [eth0]`";
        let interfaces = self.interfaces(self.req("", "interfaces", &f.interfaces, hint));
        let encap = f.encapsulation.known_or(EncapFile::default());
        let (tables, limits) = self.tables(&f.tables);
        let defaults_layer = self.layer(&f.health_defaults);
        let defaults = over(&Vec::new(), defaults_layer);
        self.fits(defaults_layer, &self.health(&defaults));
        let hint =
            "list the services under `vips` (`vips: []` for none); see deploy/pool.example.yaml";
        let vips = self.items(self.req("", "vips", &f.vips, hint));
        self.across_vips(&vips, limits, encap.as_ref());

        let instance = instance.map_or_else(String::new, |i| i.value.0.clone());
        let default_file = |dir: &str, ext| Path::new(dir).join(format!("{instance}.{ext}"));
        let secret = f.hash_secret_file.get().map(|p| p.value.0.clone());
        let socket = f.control_socket.get().map(|p| p.value.0.clone());
        Pool {
            hash_secret_file: secret.unwrap_or_else(|| default_file(DEFAULT_SECRET_DIR, "secret")),
            control_socket: socket.unwrap_or_else(|| default_file(DEFAULT_SOCKET_DIR, "sock")),
            instance,
            interfaces,
            xdp_mode: f.xdp_mode.or(XdpModeSetting::default()),
            encapsulation: self.encapsulation(encap.unwrap_or_default()),
            tables,
            vips: vips.iter().map(|v| self.vip(v, &defaults)).collect(),
        }
    }

    fn interfaces(&self, list: Option<&At<Vec<Field<IfName>>>>) -> Vec<String> {
        if let Some(list) = list.filter(|l| l.value.is_empty()) {
            let message = "no interfaces given; list at least one, e.g. `interfaces: [eth0]` \
                           (`ip link` shows them)";
            self.report(&list.path, message);
        }
        let mut seen = HashMap::new();
        let mut names = Vec::new();
        for At {
            value: IfName(name),
            path,
        } in self.items(list)
        {
            let new = self.once(&mut seen, name, path, |_, line| {
                format!("interface `{name}` is listed twice (first at line {line}); list it once")
            });
            if new {
                names.push(name.clone());
            }
        }
        names
    }

    fn encapsulation(&self, e: EncapFile) -> Encapsulation {
        if let (Some(mtu), Some(_)) = (e.mtu.get(), e.source_v6.get()) {
            if mtu.value.0 < IPV6_MIN_MTU {
                let message = format!(
                    "mtu {} is below {IPV6_MIN_MTU}, the smallest MTU IPv6 allows, and source_v6 \
                     is set; raise mtu to at least {IPV6_MIN_MTU}",
                    mtu.value.0
                );
                self.report(&mtu.path, message);
            }
        }
        Encapsulation {
            source_v4: e.source_v4.get().map(|p| (p.value.0, p.value.1)),
            source_v6: e.source_v6.get().map(|p| (p.value.0, p.value.1)),
            gateway_mac: e.gateway_mac.get().map(|m| m.value.0),
            mtu: e.mtu.or(Int(DEFAULT_MTU)).0,
        }
    }

    /// The tables, and the limits the VIPs are checked against (`None` where
    /// invalid).
    fn tables(&self, field: &Field<TablesFile>) -> (Tables, (Option<u32>, Option<u32>)) {
        let t = field.known_or(TablesFile::default()).unwrap_or_default();
        let d = Tables::default();
        let mut max_vips = t.max_vips.known_or(Int(d.max_vips)).map(|v| v.0);
        let size = t.maglev_size.known_or(MaglevSize(d.maglev_size));
        // The Maglev tables of all VIPs, two buffers each, live in one BPF
        // array, four slots to an element.
        if let (Some(vips), Some(MaglevSize(size))) = (max_vips, size) {
            let per = u64::from(lb_common::RING_SLOTS_PER_ELEM);
            let elems = 2 * u64::from(vips) * u64::from(size).div_ceil(per);
            if elems > u64::from(u32::MAX) {
                let message = format!(
                    "2 × max_vips × maglev_size / {per} = {elems} Maglev table elements, more \
                     than one BPF array holds ({}); lower max_vips or maglev_size",
                    u32::MAX
                );
                self.report("tables.max_vips", message);
                max_vips = None;
            }
        }
        if let Some(t) = t
            .udp_idle_timeout
            .get()
            .filter(|t| t.value.0 < MIN_UDP_IDLE_TIMEOUT)
        {
            let message = format!(
                "udp_idle_timeout {} is shorter than {}: the data path notes a flow's \
                 activity once a second, so a live flow could be taken for idle; use at least {}",
                humantime::format_duration(t.value.0),
                humantime::format_duration(MIN_UDP_IDLE_TIMEOUT),
                humantime::format_duration(MIN_UDP_IDLE_TIMEOUT)
            );
            self.report(&t.path, message);
        }
        let max_backends = t.max_backends.known_or(Int(d.max_backends)).map(|v| v.0);
        let tables = Tables {
            maglev_size: t.maglev_size.or(MaglevSize(d.maglev_size)).0,
            flow_table_size: t.flow_table_size.or(Int(d.flow_table_size)).0,
            udp_idle_timeout: t.udp_idle_timeout.or(Dur(d.udp_idle_timeout)).0,
            max_vips: t.max_vips.or(Int(d.max_vips)).0,
            max_backends: t.max_backends.or(Int(d.max_backends)).0,
        };
        (tables, (max_vips, max_backends))
    }

    /// Uniqueness, counts and address families: the rules that need several
    /// VIPs, the tables or the encapsulation.
    fn across_vips(
        &self,
        vips: &[&At<VipFile>],
        (max_vips, max_backends): (Option<u32>, Option<u32>),
        encap: Option<&EncapFile>,
    ) {
        if let Some(max) = max_vips.filter(|&m| vips.len() > m as usize) {
            let message = format!(
                "{} VIPs are listed, more than tables.max_vips ({max}); raise tables.max_vips or \
                 remove VIPs",
                vips.len()
            );
            self.report(&vips[max as usize].path, message);
        }
        let (mut names, mut services) = (HashMap::new(), HashMap::new());
        let mut slots = 0;
        for vip in vips {
            let f = &vip.value;
            if let Some(At {
                value: VipName(name),
                path,
            }) = f.name.get()
            {
                self.once(&mut names, name, path, |_, line| {
                    format!(
                        "VIP name `{name}` is used twice (first at line {line}); give each VIP \
                         its own name"
                    )
                });
            }
            if let (Some(a), Some(port), Some(proto)) =
                (f.address.get(), f.port.get(), f.protocol.get())
            {
                let (addr, port, proto) = (a.value.0, port.value.0, proto.value.as_str());
                self.once(
                    &mut services,
                    (addr, port, proto),
                    &a.path,
                    |first, line| {
                        let first = first.rsplit_once('.').map_or(first, |(vip, _)| vip);
                        format!(
                            "VIP {addr} port {port} {proto} is defined twice (first as {first} at \
                         line {line}); merge the two or change one"
                        )
                    },
                );
            }
            self.backend_slots(f, &mut slots, max_backends, encap);
        }
    }

    /// Backends unique within the VIP, counted against `max_backends`, of an
    /// address family the VIP and the outer sources allow.
    fn backend_slots(
        &self,
        vip: &VipFile,
        slots: &mut usize,
        max: Option<u32>,
        encap: Option<&EncapFile>,
    ) {
        let mut in_vip = HashMap::new();
        for b in self.items(vip.backends.get()) {
            let Some(At {
                value: Addr(addr),
                path,
            }) = b.value.address.get()
            else {
                continue;
            };
            let new = self.once(&mut in_vip, *addr, path, |_, line| {
                format!(
                    "backend {addr} is listed twice in this VIP (first at line {line}); list it \
                     once and use `weight` for a bigger share"
                )
            });
            if !new {
                continue;
            }
            // One backend slot per (VIP, backend): health and state are per VIP.
            *slots += 1;
            if let Some(max) = max.filter(|&max| *slots == max as usize + 1) {
                let message = format!(
                    "this is backend slot number {slots} (one per VIP and backend), more than \
                     tables.max_backends ({max}); raise tables.max_backends or remove backends"
                );
                self.report(path, message);
            }
            if let Some(message) = encap.and_then(|e| family(vip, *addr, e)) {
                self.report(path, message);
            }
        }
    }

    /// Records the first `key`, at `path`; reports a later one with the
    /// message `repeated(first path, first line)`. Whether `key` was new.
    fn once<'p, K: Eq + Hash>(
        &self,
        seen: &mut HashMap<K, &'p str>,
        key: K,
        path: &'p str,
        repeated: impl FnOnce(&str, usize) -> String,
    ) -> bool {
        match seen.get(&key) {
            Some(first) => {
                self.report(path, repeated(first, self.line(first)));
                false
            }
            None => {
                seen.insert(key, path);
                true
            }
        }
    }

    fn vip(&self, v: &At<VipFile>, defaults: &Layer) -> Vip {
        let (f, here) = (&v.value, v.path.as_str());
        let name = self.req(
            here,
            "name",
            &f.name,
            "give every VIP a unique name, e.g. `name: web`",
        );
        let hint = "give the VIP's IPv4 or IPv6 address, e.g. `address: 10.100.0.1`";
        let address = self.req(here, "address", &f.address, hint);
        let port = self.req(
            here,
            "port",
            &f.port,
            "give the service port, or `port: 0` for every port",
        );
        let protocol = self.req(
            here,
            "protocol",
            &f.protocol,
            "say `protocol: tcp` or `protocol: udp`",
        );
        let hint = "list at least one backend under `backends`";
        let backends = self.req(here, "backends", &f.backends, hint);
        if let Some(list) = backends.filter(|l| l.value.is_empty()) {
            let name = name.map_or(String::new(), |n| format!(" `{}`", n.value.0));
            let message = format!("VIP{name} has no backends; list at least one under `backends`");
            self.report(&list.path, message);
        }
        let vip_layer = self.layer(&f.health_check);
        let at_vip = over(defaults, vip_layer);
        self.fits(vip_layer, &self.health(&at_vip));
        let backends = self.items(backends).into_iter().map(|b| {
            let hint = "give the backend's IPv4 or IPv6 address, e.g. `address: 10.0.1.1`";
            let address = self.req(&b.path, "address", &b.value.address, hint);
            let address = address.map(|a| a.value.0);
            let layer = self.layer(&b.value.health_check);
            let health = self.health(&over(&at_vip, layer));
            self.fits(layer, &health);
            BackendConf {
                address: address.unwrap_or(IpAddr::from([0; 4])),
                weight: b.value.weight.or(Int(DEFAULT_WEIGHT)).0,
                state: b.value.state.or(BackendState::default()),
                health: address.and_then(|a| self.probe(&health, f, [layer, vip_layer], a)),
            }
        });
        Vip {
            name: name.map_or_else(String::new, |n| n.value.0.clone()),
            address: address.map_or(IpAddr::from([0; 4]), |a| a.value.0),
            port: port.map_or(0, |p| p.value.0 as u16),
            protocol: protocol.map_or(Protocol::Tcp, |p| p.value),
            scheduler: f.scheduler.or(Scheduler::default()),
            forwarding: f.forwarding.or(Forwarding::default()),
            panic_threshold: f.panic_threshold.or(Int(0)).0,
            backends: backends.collect(),
        }
    }

    // -- health checks --------------------------------------------------------

    /// The mapping of a valid health-check layer.
    fn layer(&self, field: &Field<HealthFile>) -> Option<&Node> {
        field.get().map(|at| self.node(&at.path))
    }

    /// Merged layers read as one health check (their problems, already
    /// reported where they are, are found again and listed once).
    fn health(&self, layer: &Layer) -> HealthFile {
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
    fn fits(&self, layer: Option<&Node>, merged: &HealthFile) {
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
    fn probe(
        &self,
        h: &HealthFile,
        vip: &VipFile,
        layers: [Option<&Node>; 2],
        address: IpAddr,
    ) -> Option<ProbeSpec> {
        let kind = h
            .kind
            .known_or(CheckKind::Tcp)
            .filter(|k| *k != CheckKind::None)?;
        let port = self.probe_port(h, kind, vip, layers)?;
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
    fn udp_vip_probe(&self, h: &HealthFile, kind: CheckKind, vip: &VipFile) -> Option<()> {
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
    fn probe_port(
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
    fn command(&self, h: &HealthFile) -> Option<PathBuf> {
        if let (Field::Absent | Field::Null(_), Some(kind)) = (&h.command, h.kind.get()) {
            let message = "an exec health check needs `command`, the program to run (it exits 0 \
                           when the backend is healthy)";
            self.report(&kind.path, message);
        }
        h.command.get().map(|c| c.value.clone())
    }
}

/// The problem with a backend's address family: against the VIP's, and
/// the outer source it needs.
fn family(vip: &VipFile, addr: IpAddr, encap: &EncapFile) -> Option<String> {
    let vip_addr = vip.address.get().map(|a| a.value.0);
    Some(match (addr, vip_addr) {
        (IpAddr::V4(_), Some(v @ IpAddr::V6(_))) => format!(
            "IPv4 backend {addr} behind IPv6 VIP {v}: 6in4 is not supported (an IPv6 packet \
             cannot be carried in IPv4 here); give an IPv6 VIP IPv6 backends"
        ),
        (IpAddr::V4(_), _) if !encap.source_v4.given() => format!(
            "backend {addr} is IPv4, but encapsulation.source_v4 is not set; set it to the outer \
             IPv4 source prefix, e.g. `source_v4: 10.255.0.0/24`"
        ),
        (IpAddr::V6(_), _) if !encap.source_v6.given() => format!(
            "backend {addr} is IPv6, but encapsulation.source_v6 is not set; set it to the outer \
             IPv6 source prefix, e.g. `source_v6: \"fd00:255::/112\"`"
        ),
        _ => return None,
    })
}

/// `upper` over `lower`: each field `upper` gives wins. When `upper` changes
/// the kind, the fields of the old kind are dropped (an http `path` from
/// `health_defaults` means nothing to a VIP that says `kind: udp`).
fn over<'n>(lower: &Layer<'n>, upper: Option<&'n Node>) -> Layer<'n> {
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

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}
