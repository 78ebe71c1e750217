//! The YAML pool file: serde types, defaults, and validation that reports
//! every problem with its line, column and field path.
//!
//! The file format is documented field by field in `deploy/pool.example.yaml`,
//! on the structs of `file.rs` and on the items below. [`parse`] and [`load`]
//! turn a file into a validated [`Pool`], or into [`ConfigErrors`] that list
//! *every* problem found, each with its line, column, field path and a hint:
//!
//! ```text
//! pool.yaml:12:7: vips[1].backends[0].address: `10.0.1.300` is not an IP address
//! pool.yaml:24:15: vips[2].backends: VIP `dns` has no backends; list at least one under `backends`
//! 2 problems in pool.yaml
//! ```
//!
//! # How it works
//!
//! 1. `tree.rs`: [`serde_saphyr`] parses the text once, within budgets on
//!    nodes, events and alias replay, into a small tree whose every node
//!    knows its line, column (serde-saphyr's `Spanned<T>`) and field path.
//! 2. `file.rs`: the pool file as `#[derive(Deserialize)]` structs with
//!    `deny_unknown_fields`, one per mapping, each field documented with its
//!    default, and `FromStr` newtypes for addresses, prefixes, MACs,
//!    durations and names. Every field is a `Field<T>`: not given, given but
//!    invalid (already reported), or valid with its path.
//! 3. `de.rs`: a serde `Deserializer` over the tree. Serde stops at the
//!    first error; this one records each problem where it is found (so a bad
//!    value makes only its own `Field` invalid) and carries on. It reports
//!    every unknown or repeated field, with a "did you mean" hint, and reads
//!    integers strictly.
//! 4. `check.rs`: every rule that involves more than one field, in one
//!    place, and the build of the [`Pool`], with the health-check layering
//!    (built-in defaults, then `health_defaults`, then the VIP's
//!    `health_check`, then the backend's: the layers' mappings are merged
//!    key by key and read as one health check).
//!
//! Why not `serde_saphyr::from_str::<PoolFile>` alone: serde-saphyr, like
//! any serde format, returns the first error only (its garde integration
//! validates a value that was already deserialized), and users are promised
//! every problem at once. So serde-saphyr reads the text (positions,
//! budgets, YAML 1.2 scalars) and the derive-generated code of our types runs
//! against the located tree. `serde_yaml` is deprecated upstream and keeps no
//! positions past its first error.
//!
//! Scalars are read strictly: `port: 80` is a number, `port: "80"` a string
//! (and an error), `port: 0x50` an error; `name: yes` is the string `yes`
//! (no YAML 1.1 booleans) and `gateway_mac: 02:00:00:00:00:01` a MAC address
//! (no sexagesimal numbers). `~`, `null` and an empty value mean "not given".
//! Anchors and aliases are expanded; merge keys (`<<`) are not supported.
//!
//! Adding a field: add it, with its doc and default, to its struct in
//! `file.rs`; read it where `check.rs` builds the [`Pool`] (and add it to
//! the public type there); add a rule in `check.rs` if it depends on other
//! fields.
mod check;
mod de;
mod file;
#[cfg(test)]
mod tests;
mod tree;
mod vip;
pub use vip::*;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::health::ProbeSpec;

/// `encapsulation.mtu` when not given.
pub const DEFAULT_MTU: u32 = lb_common::defaults::MTU;
/// Accepted `encapsulation.mtu` values.
pub const MTU_RANGE: RangeInclusive<u32> = 576..=9216;
/// The smallest MTU an IPv6 link may have (RFC 8200); enforced when
/// `encapsulation.source_v6` is set.
pub const IPV6_MIN_MTU: u32 = 1280;
/// Shortest `encapsulation.source_v4` prefix: at most 16 host bits vary per flow.
pub const SOURCE_V4_MIN_PREFIX: u8 = 16;
/// Shortest `encapsulation.source_v6` prefix: at most 16 host bits vary per flow.
pub const SOURCE_V6_MIN_PREFIX: u8 = 112;
/// `tables.maglev_size` when not given (a prime).
pub const DEFAULT_MAGLEV_SIZE: u32 = lb_common::defaults::RING_SIZE;
/// Accepted `tables.maglev_size` values (and it must be prime).
pub const MAGLEV_SIZE_RANGE: RangeInclusive<u32> = 1009..=1_000_003;
/// `tables.flow_table_size` when not given.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = lb_common::defaults::FLOW_TABLE_SIZE;
/// Accepted `tables.flow_table_size` values.
pub const FLOW_TABLE_SIZE_RANGE: RangeInclusive<u32> = 1024..=64 * 1024 * 1024;
/// Shortest `tables.udp_idle_timeout`: the data path refreshes a flow's
/// last-seen time at most once a second (`lb_common::LAST_SEEN_GRANULARITY_NS`),
/// so a shorter timeout could end a flow that is in use.
pub const MIN_UDP_IDLE_TIMEOUT: Duration =
    Duration::from_nanos(2 * lb_common::LAST_SEEN_GRANULARITY_NS);
/// `tables.udp_idle_timeout` when not given.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration =
    Duration::from_nanos(lb_common::defaults::UDP_IDLE_TIMEOUT_NS);
/// `tables.new_flows_per_cpu` when not given: new flows each CPU stores per
/// second before it routes the excess by the Maglev tables alone. Well above
/// what one CPU forwards of real connections (about 1.5 µs of CPU each end to
/// end), well below what a SYN flood sends; the default flow table takes
/// four seconds of it from every CPU of a 2-CPU machine.
pub const DEFAULT_NEW_FLOWS_PER_CPU: u32 = 125_000;
/// Accepted `tables.new_flows_per_cpu` values.
pub const NEW_FLOWS_PER_CPU_RANGE: RangeInclusive<u32> = 0..=100_000_000;
/// Stores over `tables.new_flows_per_cpu` allowed at once: this long's worth.
pub const NEW_FLOW_BURST: Duration = Duration::from_millis(100);
/// `tables.persistence_table_size` when not given.
pub const DEFAULT_PERSISTENCE_TABLE_SIZE: u32 = lb_common::PERSIST_TABLE_SIZE;
/// Accepted `tables.persistence_table_size` values.
pub const PERSISTENCE_TABLE_SIZE_RANGE: RangeInclusive<u32> = 1024..=64 * 1024 * 1024;
/// `tables.nat_tcp_timeout` when not given (IPVS's established timeout).
pub const DEFAULT_NAT_TCP_TIMEOUT: Duration = Duration::from_secs(900);
/// `tables.nat_closed_timeout` when not given.
pub const DEFAULT_NAT_CLOSED_TIMEOUT: Duration = Duration::from_secs(60);
/// `tables.stateless_window` when not given: how long after a slot of a
/// stateless VIP changed its previous backend is still sent along.
pub const DEFAULT_STATELESS_WINDOW: Duration = Duration::from_secs(3600);
/// Accepted `tables.stateless_window` values.
pub const STATELESS_WINDOW_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
/// `tables.max_stateless_vips` when not given.
pub const DEFAULT_MAX_STATELESS_VIPS: u32 = 4;
/// Accepted `tables.max_stateless_vips` values (`VipInfo::chain_idx` is a byte).
pub const MAX_STATELESS_VIPS_RANGE: RangeInclusive<u32> = 1..=256;
/// `tables.max_vips` when not given.
pub const DEFAULT_MAX_VIPS: u32 = lb_common::defaults::MAX_VIPS;
/// Accepted `tables.max_vips` values.
pub const MAX_VIPS_RANGE: RangeInclusive<u32> = 1..=65_536;
/// `tables.max_backends` when not given.
pub const DEFAULT_MAX_BACKENDS: u32 = lb_common::defaults::MAX_BACKENDS;
/// Accepted `tables.max_backends` values (`CHAINS` names backends in 20
/// bits).
pub const MAX_BACKENDS_RANGE: RangeInclusive<u32> = 1..=lb_common::MAX_BACKEND_ID + 1;
/// `tables.max_backends_per_vip` when not given: `max_backends`, at most
/// 65 535, and at most what keeps `MEMBERS` (16 bytes per VIP and
/// backend) within 64 MiB: 65 535 up to 64 VIPs, 8192 at 512.
pub fn default_max_backends_per_vip(max_vips: u32, max_backends: u32) -> u32 {
    let room = (64u64 << 20) / (16 * u64::from(max_vips.max(1)));
    max_backends
        .min(*MAX_BACKENDS_PER_VIP_RANGE.end())
        .min(room.min(u64::from(u32::MAX)) as u32)
        .max(1)
}
/// Accepted `tables.max_backends_per_vip` values (a Maglev slot holds a
/// 16-bit index into its VIP's backends).
pub const MAX_BACKENDS_PER_VIP_RANGE: RangeInclusive<u32> = 1..=lb_common::MAX_RING_BACKEND + 1;
/// A backend's `weight` when not given.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Accepted backend weights.
pub const WEIGHT_RANGE: RangeInclusive<u32> = 1..=65_535;
/// Health-check `interval` when not given. With the timeout, rise and fall
/// defaults a dead backend is taken out in under one second.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(200);
/// Health-check `timeout` when not given.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(200);
/// Health-check `rise` when not given.
pub const DEFAULT_RISE: u32 = 2;
/// Health-check `fall` when not given.
pub const DEFAULT_FALL: u32 = 2;
/// Accepted health-check `rise` and `fall` values.
pub const RISE_FALL_RANGE: RangeInclusive<u32> = 1..=1000;
/// HTTP health-check `path` when not given.
pub const DEFAULT_HTTP_PATH: &str = "/";
/// HTTP health-check `expect_status` when not given.
pub const DEFAULT_HTTP_STATUS: u16 = 200;
/// UDP health-check `send` when not given.
pub const DEFAULT_UDP_SEND: &str = "ping";
/// Longest instance name (it names a bpffs directory and a socket).
pub const MAX_INSTANCE_LEN: usize = 15;
/// Longest VIP name.
pub const MAX_VIP_NAME_LEN: usize = 63;
/// Longest interface name (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest Unix socket path (`sun_path` less its terminating NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;
/// Where pinned maps live: `<BPFFS_ROOT>/<instance>/`.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Default directory of the control socket: `<dir>/<instance>.sock`.
pub const DEFAULT_SOCKET_DIR: &str = "/run/lb";
/// Default directory of the hash secret: `<dir>/<instance>.secret`.
pub const DEFAULT_SECRET_DIR: &str = "/var/lib/lb";

/// Nodes a file may hold (aliases included): room for the largest pool the
/// tables take (1 048 575 backends of a few nodes each), a bound on
/// memory all the same.
const MAX_NODES: usize = 8_000_000;
/// Events that aliases may replay in all, so that a small file with nested
/// aliases cannot blow up memory (real pool files use none or few).
const MAX_ALIAS_EVENTS: usize = 1_000_000;

/// A validated pool file: what the daemon runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    /// Name of this balancer instance, 1 to 15 characters from `a-z`, `0-9`,
    /// `_`, `-`. Maps and the XDP link are pinned under `/sys/fs/bpf/<instance>/`.
    pub instance: String,
    /// Interfaces the XDP program attaches to; at least one, no duplicates.
    pub interfaces: Vec<String>,
    /// How the XDP program is attached. Default [`XdpModeSetting::Auto`].
    pub xdp_mode: XdpModeSetting,
    /// Outer headers for the packets sent to the backends.
    pub encapsulation: Encapsulation,
    /// BPF map sizes.
    pub tables: Tables,
    /// The flow-hash secret; default `/var/lib/lb/<instance>.secret`. Created
    /// by the daemon if missing. Absolute.
    pub hash_secret_file: PathBuf,
    /// The control socket; default `/run/lb/<instance>.sock`. Absolute.
    pub control_socket: PathBuf,
    /// Where the Prometheus endpoint listens (`metrics.listen`); none by
    /// default.
    pub metrics: Option<std::net::SocketAddr>,
    /// Announcing the VIPs through BIRD (`announce`); none by default.
    pub announce: Option<Announce>,
    /// The services, in file order (a VIP's index is its position here).
    pub vips: Vec<Vip>,
}

impl Pool {
    /// The bpffs directory this instance pins its maps and link under.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(BPFFS_ROOT).join(&self.instance)
    }

    /// The map sizes its `tables` section asks for.
    pub fn map_sizes(&self) -> lb_common::MapSizes {
        let t = &self.tables;
        lb_common::MapSizes {
            max_vips: t.max_vips,
            max_backends: t.max_backends,
            ring_size: t.maglev_size,
            flows: t.flow_table_size,
            persist: t.persistence_table_size,
            stateless_vips: t.max_stateless_vips,
            max_vip_backends: t.max_backends_per_vip,
        }
    }
}

/// `xdp_mode`: how the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native mode only; attaching fails if the driver lacks XDP support.
    Driver,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

/// `encapsulation`: outer headers of the packets sent to the backends
/// (IPIP, IP6IP6 or IPv4-in-IPv6; the backends answer clients directly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encapsulation {
    /// Outer IPv4 source network and prefix length (16..=32, host bits zero);
    /// the host bits vary per flow so backends spread flows over their receive
    /// queues. Needed for IPv4 backends.
    pub source_v4: Option<(Ipv4Addr, u8)>,
    /// Outer IPv6 source network and prefix length (112..=128, host bits
    /// zero). Needed for IPv6 backends.
    pub source_v6: Option<(Ipv6Addr, u8)>,
    /// Next-hop MAC used when the kernel FIB cannot resolve a backend.
    pub gateway_mac: Option<[u8; 6]>,
    /// MTU of the path to the backends, 576..=9216 (at least 1280 when
    /// `source_v6` is set); default 1500.
    pub mtu: u32,
    /// UDP port GUE packets (`forwarding: gue`) go to; default 6080.
    pub gue_port: u16,
}

impl Default for Encapsulation {
    fn default() -> Self {
        Encapsulation {
            source_v4: None,
            source_v6: None,
            gateway_mac: None,
            mtu: DEFAULT_MTU,
            gue_port: lb_common::DEFAULT_GUE_PORT,
        }
    }
}

/// `tables`: BPF map sizes, applied when the program is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// Entries in each VIP's Maglev table: a prime in 1009..=1000003;
    /// default 65537.
    pub maglev_size: u32,
    /// Connections the flow table holds, 1024..=67108864; default 1048576.
    pub flow_table_size: u32,
    /// Whether the part of the flow table in use grows with the flows held
    /// (a quarter of it at first; default), or all of it is in use from
    /// the start (false).
    pub flow_table_grows: bool,
    /// Idle time after which a UDP flow may be rescheduled; default 30s.
    pub udp_idle_timeout: Duration,
    /// New flows each CPU stores per second (and a tenth of a second's worth
    /// at once); beyond, they are forwarded by the Maglev table and not
    /// stored. 0: no limit; default 125000.
    pub new_flows_per_cpu: u32,
    /// Most VIPs, 1..=65536; default 64.
    pub max_vips: u32,
    /// Most backend slots (one per VIP and backend), 1..=1048575;
    /// default 4096.
    pub max_backends: u32,
    /// Most backends of one VIP, 1..=65535; default
    /// [`default_max_backends_per_vip`]. Each VIP has room for this many in
    /// both its table buffers: 8 bytes each.
    pub max_backends_per_vip: u32,
    /// Clients remembered by the VIPs with persistence, 1024..=67108864;
    /// default 262144.
    pub persistence_table_size: u32,
    /// NAT: a TCP flow idle this long gives up its source port; default 15m.
    pub nat_tcp_timeout: Duration,
    /// NAT: a closed flow (FIN each way, or a RST) gives up its port after
    /// this long; default 60s.
    pub nat_closed_timeout: Duration,
    /// Stateless VIPs: how long after a table slot changed its previous
    /// backend is sent along (1s..=7d); default 1h.
    pub stateless_window: Duration,
    /// Stateless VIPs the tables have room for (each takes 8 bytes per
    /// Maglev slot), 1..=256; default 4.
    pub max_stateless_vips: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            maglev_size: DEFAULT_MAGLEV_SIZE,
            flow_table_size: DEFAULT_FLOW_TABLE_SIZE,
            flow_table_grows: true,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            new_flows_per_cpu: DEFAULT_NEW_FLOWS_PER_CPU,
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: DEFAULT_MAX_BACKENDS,
            max_backends_per_vip: default_max_backends_per_vip(
                DEFAULT_MAX_VIPS,
                DEFAULT_MAX_BACKENDS,
            ),
            persistence_table_size: DEFAULT_PERSISTENCE_TABLE_SIZE,
            nat_tcp_timeout: DEFAULT_NAT_TCP_TIMEOUT,
            nat_closed_timeout: DEFAULT_NAT_CLOSED_TIMEOUT,
            stateless_window: DEFAULT_STATELESS_WINDOW,
            max_stateless_vips: DEFAULT_MAX_STATELESS_VIPS,
        }
    }
}

/// `announce`: the daemon writes the VIP addresses this node should
/// announce (those with a VIP taking new flows; none while draining) as
/// BIRD static routes into `bird_include`, and has BIRD read it again
/// (`birdc -s bird_socket configure`). BIRD announces them over BGP.
#[derive(Clone, Debug, PartialEq)]
pub struct Announce {
    pub bird_include: PathBuf,
    pub bird_socket: PathBuf,
    /// Withdraw every VIP while still forwarding what arrives (take the
    /// node out of its ECMP group without breaking connections).
    pub drain: bool,
}

/// `announce.bird_socket` when not given: Debian's bird2.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";

/// One problem in a pool file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_one(.line, .column, .path, .message))]
pub struct ConfigError {
    /// 1-based line; 0 when the problem is not at a place in the file (the
    /// file could not be read).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Where in the schema, e.g. `vips[1].backends[0].address`; empty for the
    /// file as a whole.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in a pool file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_all(.source_name, .errors))]
pub struct ConfigErrors {
    /// The file name the messages are prefixed with.
    pub source_name: String,
    /// At least one problem, sorted by line and column.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Never true for a returned error; here for API completeness.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The problems, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }
}

fn render_one(line: &usize, column: &usize, path: &str, message: &str) -> String {
    let mut out = String::new();
    if *line > 0 {
        out.push_str(&format!("{line}:{column}: "));
    }
    if !path.is_empty() {
        out.push_str(path);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

fn render_all(source_name: &str, errors: &[ConfigError]) -> String {
    let mut out = String::new();
    for e in errors {
        out.push_str(source_name);
        out.push(':');
        if e.line == 0 {
            out.push(' ');
        }
        out.push_str(&e.to_string());
        out.push('\n');
    }
    let n = errors.len();
    out.push_str(&format!(
        "{n} problem{} in {source_name}",
        if n == 1 { "" } else { "s" }
    ));
    out
}

/// Parses and validates a pool file's text. `source_name` prefixes the
/// messages (usually the file name).
pub fn parse(text: &str, source_name: &str) -> Result<Pool, ConfigErrors> {
    let sink = de::Sink::default();
    let pool = match tree::read(text) {
        Err((pos, message)) => {
            sink.report(pos, "", message);
            None
        }
        Ok(None) => {
            sink.report(
                Pos::START,
                "",
                "the pool file is empty; deploy/pool.example.yaml shows every field",
            );
            None
        }
        Ok(Some(root)) => check::pool(&root, &sink),
    };
    sink.finish(source_name, pool)
}

/// Reads and validates a pool file. A file that cannot be read is reported
/// as a [`ConfigErrors`] too (with line 0).
pub fn load(path: &Path) -> Result<Pool, ConfigErrors> {
    let source_name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &source_name),
        Err(e) => Err(ConfigErrors {
            errors: vec![ConfigError {
                line: 0,
                column: 0,
                path: String::new(),
                message: format!(
                    "cannot read the pool file: {e}; check the path and its permissions \
                     (deploy/pool.example.yaml is a starting point)"
                ),
            }],
            source_name,
        }),
    }
}

/// A place in the file: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pos {
    line: usize,
    column: usize,
}

impl Pos {
    const START: Pos = Pos { line: 1, column: 1 };
}

/// Trial division; table sizes are at most about a million. (Kept here rather
/// than shared with `maglev` so config does not depend on its timing.)
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}
