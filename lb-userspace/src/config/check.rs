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

mod options;

mod health;
use health::over;

/// `tables.max_vips`, `max_backends` and `max_backends_per_vip`, where known.
type Limits = (Option<u32>, Option<u32>, Option<u32>);

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
                    "metrics" => "`metrics`",
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
        self.stateless_count(&vips, tables.max_stateless_vips);
        self.table_sizes(&vips, tables.maglev_size);

        let instance = instance.map_or_else(String::new, |i| i.value.0.clone());
        let default_file = |dir: &str, ext| Path::new(dir).join(format!("{instance}.{ext}"));
        let secret = f.hash_secret_file.get().map(|p| p.value.0.clone());
        let socket = f.control_socket.get().map(|p| p.value.0.clone());
        let hint = "give the address and port of the Prometheus endpoint, e.g. \
                    `listen: \"127.0.0.1:9477\"`";
        let metrics = f
            .metrics
            .get()
            .and_then(|m| self.req("metrics", "listen", &m.value.listen, hint))
            .map(|l| l.value.0);
        let announce = f.announce.get().map(|a| Announce {
            bird_include: a
                .value
                .bird_include
                .get()
                .map(|p| p.value.0.clone())
                .unwrap_or_else(|| PathBuf::from(format!("/run/bird/lb-{instance}.conf"))),
            bird_socket: a
                .value
                .bird_socket
                .get()
                .map(|p| p.value.0.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BIRD_SOCKET)),
            drain: a.value.drain.or(false),
        });
        Pool {
            metrics,
            announce,
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
            gue_port: e.gue_port.or(Int(u32::from(lb_common::DEFAULT_GUE_PORT))).0 as u16,
        }
    }

    /// The tables, and the limits the VIPs are checked against (`None` where
    /// invalid).
    fn tables(&self, field: &Field<TablesFile>) -> (Tables, Limits) {
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
        if let Some(w) = t
            .stateless_window
            .get()
            .filter(|w| !STATELESS_WINDOW_RANGE.contains(&w.value.0))
        {
            let message = format!(
                "stateless_window {} is out of range; use 1s to 7d",
                humantime::format_duration(w.value.0)
            );
            self.report(&w.path, message);
        }
        let max_backends = t.max_backends.known_or(Int(d.max_backends)).map(|v| v.0);
        let per_vip_default = default_max_backends_per_vip(
            t.max_vips
                .known_or(Int(d.max_vips))
                .map_or(d.max_vips, |v| v.0),
            max_backends.unwrap_or(d.max_backends),
        );
        let max_per_vip = t
            .max_backends_per_vip
            .known_or(Int(per_vip_default))
            .map(|v| v.0);
        let tables = Tables {
            maglev_size: t.maglev_size.or(MaglevSize(d.maglev_size)).0,
            flow_table_size: t.flow_table_size.or(Int(d.flow_table_size)).0,
            flow_table_grows: t.flow_table_grows.or(d.flow_table_grows),
            udp_idle_timeout: t.udp_idle_timeout.or(Dur(d.udp_idle_timeout)).0,
            new_flows_per_cpu: t.new_flows_per_cpu.or(Int(d.new_flows_per_cpu)).0,
            max_vips: t.max_vips.or(Int(d.max_vips)).0,
            max_backends: t.max_backends.or(Int(d.max_backends)).0,
            max_backends_per_vip: t.max_backends_per_vip.or(Int(per_vip_default)).0,
            persistence_table_size: t.persistence_table_size.or(Int(d.persistence_table_size)).0,
            nat_tcp_timeout: t.nat_tcp_timeout.or(Dur(d.nat_tcp_timeout)).0,
            nat_closed_timeout: t.nat_closed_timeout.or(Dur(d.nat_closed_timeout)).0,
            stateless_window: t.stateless_window.or(Dur(d.stateless_window)).0,
            max_stateless_vips: t.max_stateless_vips.or(Int(d.max_stateless_vips)).0,
        };
        (tables, (max_vips, max_backends, max_per_vip))
    }

    /// Uniqueness, counts and address families: the rules that need several
    /// VIPs, the tables or the encapsulation.
    fn across_vips(
        &self,
        vips: &[&At<VipFile>],
        (max_vips, max_backends, max_per_vip): Limits,
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
            self.backend_slots(f, &mut slots, (max_backends, max_per_vip), encap);
        }
    }

    /// Backends unique within the VIP, counted against `max_backends`, of an
    /// address family the VIP and the outer sources allow.
    fn backend_slots(
        &self,
        vip: &VipFile,
        slots: &mut usize,
        (max, max_per_vip): (Option<u32>, Option<u32>),
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
            // (At `max_backends` itself, the count of all slots says it.)
            if let Some(max) =
                max_per_vip.filter(|&m| Some(m) != max && in_vip.len() == m as usize + 1)
            {
                let message = format!(
                    "this is backend number {} of this VIP, more than tables.max_backends_per_vip \
                     ({max}); raise tables.max_backends_per_vip or remove backends",
                    in_vip.len()
                );
                self.report(path, message);
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
        self.exact_backends(f);
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
                max_connections: b
                    .value
                    .max_connections
                    .get()
                    .or(f.max_connections.get())
                    .map(|m| m.value.0),
                port: self.backend_port(f, &b.value.port),
                health: address.and_then(|a| {
                    let port = b.value.port.get().map(|p| p.value.0);
                    self.probe(&health, f, [layer, vip_layer], a, port)
                }),
            }
        });
        Vip {
            name: name.map_or_else(String::new, |n| n.value.0.clone()),
            address: address.map_or(IpAddr::from([0; 4]), |a| a.value.0),
            port: port.map_or(0, |p| p.value.0 as u16),
            protocol: protocol.map_or(Protocol::Tcp, |p| p.value),
            scheduler: f.scheduler.or(Scheduler::default()),
            source_prefix_v4: f.source_prefix_v4.or(Int(32)).0 as u8,
            source_prefix_v6: f.source_prefix_v6.or(Int(128)).0 as u8,
            forwarding: f.forwarding.or(Forwarding::default()),
            stateless: self.stateless(f),
            maglev_size: f.maglev_size.get().map(|m| m.value.0),
            panic_threshold: f.panic_threshold.or(Int(0)).0,
            passive_health: self.passive(f),
            slow_start: self.slow_start(f),
            persistence: self.persistence(f),
            max_connections: f.max_connections.get().map(|m| m.value.0),
            nat: self.nat(f),
            backends: backends.collect(),
        }
    }
}

/// The problem with a backend's address family: against the VIP's, and
/// the outer source it needs (none for L2 direct return, which needs the
/// VIP's family).
fn family(vip: &VipFile, addr: IpAddr, encap: &EncapFile) -> Option<String> {
    let vip_addr = vip.address.get().map(|a| a.value.0);
    let mode = vip.forwarding.get().map(|f| f.value);
    if mode == Some(Forwarding::Nat) {
        return match vip_addr {
            Some(v) if v.is_ipv4() != addr.is_ipv4() => Some(format!(
                "backend {addr} and VIP {v} are of different families: NAT between IPv4 and \
                 IPv6 is not offered; give the VIP backends of its family"
            )),
            _ => None,
        };
    }
    if mode == Some(Forwarding::DsrL2) {
        return match vip_addr {
            Some(v) if v.is_ipv4() != addr.is_ipv4() => Some(format!(
                "backend {addr} and VIP {v} are of different families: with forwarding: dsr_l2 \
                 the packet reaches the backend unchanged, so give the VIP backends of its family"
            )),
            _ => None,
        };
    }
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

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}
