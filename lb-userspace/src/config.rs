//! The YAML pool file: schema, defaults, and validation that reports every problem with its line.
//!
//! The file format is documented field by field in `deploy/pool.example.yaml`
//! and on the items below. [`parse`] and [`load`] turn a file into a validated
//! [`Pool`], or into [`ConfigErrors`] that list *every* problem found, each with
//! its line, column and field path:
//!
//! ```text
//! pool.yaml:12:7: vips[1].backends[0].address: `10.0.1.300` is not an IP address
//! pool.yaml:24:15: vips[2].backends: VIP `dns` has no backends; list at least one under `backends`
//! 2 problems in pool.yaml
//! ```
//!
//! # How it works, and why not `serde_yaml` + `#[derive(Deserialize)]`
//!
//! serde stops at the first error (an unknown field, a bad value), and
//! `serde_yaml` keeps no source positions in its `Value` tree; both would make
//! the user fix one problem per run. `serde_yaml` is also deprecated and
//! unmaintained (its last release is `0.9.34+deprecated`). So parsing is done
//! in two steps:
//!
//! 1. [`saphyr_parser`] turns the text into events that carry a span each; we
//!    build a small tree of nodes that remember their line and column.
//!    saphyr-parser is the maintained successor of yaml-rust (by the
//!    yaml-rust2 maintainers): a YAML 1.2 parser in safe Rust, tested
//!    against the yaml-test-suite, with two small dependencies (arraydeque,
//!    thiserror); 0.3 needs rustc 1.85 or later. `humantime` reads durations.
//! 2. A walker checks that tree against the schema and builds the typed
//!    model, recording a problem and carrying on wherever something is wrong.
//!    Each mapping is checked against its list of known fields, which is what
//!    `#[serde(deny_unknown_fields)]` would do, except that every unknown
//!    field is reported (with a "did you mean" hint for typos).
//!
//! Scalars are read from their source text, never guessed from YAML 1.1 type
//! rules: `port: 80` is a number, `port: "80"` is a string (and an error),
//! `name: yes` is the string `yes`, and `gateway_mac: 02:00:00:00:00:01` is a
//! MAC address, not a sexagesimal integer. `~`, `null` and an empty value mean
//! "not given". Anchors and aliases are expanded; merge keys (`<<`) are not
//! supported.
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use saphyr_parser::{Event, Parser, ScalarStyle};

use crate::health::{ProbeKind, ProbeSpec};

// ---------------------------------------------------------------------------
// Defaults and limits
// ---------------------------------------------------------------------------

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
/// `tables.udp_idle_timeout` when not given.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration =
    Duration::from_nanos(lb_common::defaults::UDP_IDLE_TIMEOUT_NS);
/// `tables.max_vips` when not given.
pub const DEFAULT_MAX_VIPS: u32 = lb_common::defaults::MAX_VIPS;
/// Accepted `tables.max_vips` values.
pub const MAX_VIPS_RANGE: RangeInclusive<u32> = 1..=65_536;
/// `tables.max_backends` when not given.
pub const DEFAULT_MAX_BACKENDS: u32 = lb_common::defaults::MAX_BACKENDS;
/// Accepted `tables.max_backends` values.
/// Backend ids are 16 bits in the Maglev tables.
pub const MAX_BACKENDS_RANGE: RangeInclusive<u32> = 1..=lb_common::MAX_RING_BACKEND + 1;
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

/// Nodes a file may expand to (aliases included), so that a small file with
/// nested aliases cannot blow up memory.
const MAX_NODES: usize = 1_000_000;

// ---------------------------------------------------------------------------
// The validated model
// ---------------------------------------------------------------------------

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
    /// The services, in file order (a VIP's index is its position here).
    pub vips: Vec<Vip>,
}

impl Pool {
    /// The bpffs directory this instance pins its maps and link under.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(BPFFS_ROOT).join(&self.instance)
    }
}

/// `xdp_mode`: how the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
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
}

impl Default for Encapsulation {
    fn default() -> Self {
        Encapsulation {
            source_v4: None,
            source_v6: None,
            gateway_mac: None,
            mtu: DEFAULT_MTU,
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
    /// Idle time after which a UDP flow may be rescheduled; default 30s.
    pub udp_idle_timeout: Duration,
    /// Most VIPs, 1..=65536; default 64.
    pub max_vips: u32,
    /// Most backend slots (one per VIP and backend), 1..=65535;
    /// default 4096.
    pub max_backends: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            maglev_size: DEFAULT_MAGLEV_SIZE,
            flow_table_size: DEFAULT_FLOW_TABLE_SIZE,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: DEFAULT_MAX_BACKENDS,
        }
    }
}

/// One service: an address, port and protocol, and the backends behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Vip {
    /// Unique name, 1 to 63 characters from `A-Z`, `a-z`, `0-9`, `_`, `.`, `-`.
    pub name: String,
    /// The service address (IPv4 or IPv6, unicast, not loopback).
    pub address: IpAddr,
    /// The service port; 0 means every port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// How new flows pick a backend. Default [`Scheduler::Maglev`].
    pub scheduler: Scheduler,
    /// How packets reach the backend. Default [`Forwarding::Encap`].
    pub forwarding: Forwarding,
    /// At least one; addresses unique within the VIP.
    pub backends: Vec<BackendConf>,
}

/// One backend of a VIP.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConf {
    /// The backend address; packets keep the VIP port.
    pub address: IpAddr,
    /// Share of new flows, 1..=65535; default 100.
    pub weight: u32,
    /// Default [`BackendState::Active`].
    pub state: BackendState,
    /// The fully resolved health check (built-in defaults, then
    /// `health_defaults`, then the VIP's `health_check`, then the backend's);
    /// `None` when the resolved kind is `none`.
    pub health: Option<ProbeSpec>,
}

/// `protocol` of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number, as the data path matches it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }

    /// The name used in the pool file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `scheduler` of a VIP: how a new flow picks its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Weighted Maglev consistent hashing.
    #[default]
    Maglev,
}

impl Scheduler {
    /// The value of `VipInfo::scheduler` (`lb_common::scheduler`).
    pub fn number(self) -> u8 {
        match self {
            Scheduler::Maglev => lb_common::scheduler::MAGLEV,
        }
    }
}

/// `forwarding` of a VIP: how packets reach the chosen backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// IPIP / IP6IP6 / IPv4-in-IPv6 encapsulation, direct server return.
    #[default]
    Encap,
}

impl Forwarding {
    /// The value of `VipInfo::mode` (`lb_common::mode`).
    pub fn number(self) -> u8 {
        match self {
            Forwarding::Encap => lb_common::mode::ENCAP,
        }
    }
}

/// `state` of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendState {
    /// Receives new flows while healthy.
    #[default]
    Active,
    /// Keeps its established flows, receives no new ones.
    Drain,
    /// Receives nothing; its flows are moved to other backends.
    Disabled,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Parses and validates a pool file's text. `source_name` prefixes the
/// messages (usually the file name).
pub fn parse(text: &str, source_name: &str) -> Result<Pool, ConfigErrors> {
    let mut checker = Checker::default();
    let pool = match read_tree(text) {
        Err(problem) => {
            checker.report(problem.pos, "", problem.message);
            None
        }
        Ok(None) => {
            checker.report(
                Pos { line: 1, column: 1 },
                "",
                "the pool file is empty; deploy/pool.example.yaml shows every field",
            );
            None
        }
        Ok(Some(root)) => checker.pool(&root),
    };
    checker.finish(source_name, pool)
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

// ---------------------------------------------------------------------------
// The located YAML tree
// ---------------------------------------------------------------------------

/// A place in the file: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    line: usize,
    column: usize,
}

#[derive(Clone, Debug)]
struct Node {
    pos: Pos,
    value: Value,
}

#[derive(Clone, Debug)]
enum Value {
    /// The scalar's text after unquoting; `plain` when it was not quoted.
    Scalar {
        text: String,
        plain: bool,
    },
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// `~`, `null` or nothing at all.
    fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// For messages: what was found here.
    fn describe(&self) -> String {
        match &self.value {
            _ if self.is_null() => "nothing".to_owned(),
            Value::Scalar { text, .. } => format!("`{text}`"),
            Value::List(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }

    fn size(&self) -> usize {
        match &self.value {
            Value::Scalar { .. } => 1,
            Value::List(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
        }
    }
}

struct SyntaxProblem {
    pos: Pos,
    message: String,
}

/// Parses the text into a located tree; `None` for a file with no document.
fn read_tree(text: &str) -> Result<Option<Node>, SyntaxProblem> {
    struct Frame {
        node: Node,
        anchor: usize,
        key: Option<Node>,
    }
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root = None;
    let mut documents = 0;
    let mut nodes = 0usize;
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| SyntaxProblem {
            pos: Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: format!(
                "this is not valid YAML: {}; check the indentation and quoting here",
                e.info()
            ),
        })?;
        let pos = Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        let node = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxProblem {
                        pos,
                        message: "the file holds more than one YAML document (a second `---`); \
                                  a pool file is one document"
                            .to_owned(),
                    });
                }
                continue;
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    pos,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::SequenceStart(anchor, _tag) => {
                stack.push(Frame {
                    node: Node {
                        pos,
                        value: Value::List(Vec::new()),
                    },
                    anchor,
                    key: None,
                });
                continue;
            }
            Event::MappingStart(anchor, _tag) => {
                stack.push(Frame {
                    node: Node {
                        pos,
                        value: Value::Map(Vec::new()),
                    },
                    anchor,
                    key: None,
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                // The parser balances starts and ends.
                let Some(frame) = stack.pop() else { continue };
                if frame.anchor > 0 {
                    anchors.insert(frame.anchor, frame.node.clone());
                }
                frame.node
            }
            Event::Alias(id) => {
                let Some(node) = anchors.get(&id) else {
                    return Err(SyntaxProblem {
                        pos,
                        message: "this alias names no anchor defined before it".to_owned(),
                    });
                };
                nodes += node.size();
                node.clone()
            }
            _ => continue,
        };
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(SyntaxProblem {
                pos,
                message: format!(
                    "the file expands to more than {MAX_NODES} YAML nodes (through aliases?); \
                     a pool file is far smaller"
                ),
            });
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(frame) => match &mut frame.node.value {
                Value::List(items) => items.push(node),
                Value::Map(entries) => match frame.key.take() {
                    Some(key) => entries.push((key, node)),
                    None => frame.key = Some(node),
                },
                Value::Scalar { .. } => {}
            },
        }
    }
    Ok(root)
}

// ---------------------------------------------------------------------------
// The checker: walks the tree, records problems, builds the model
// ---------------------------------------------------------------------------

const POOL_FIELDS: &[&str] = &[
    "instance",
    "interfaces",
    "xdp_mode",
    "encapsulation",
    "tables",
    "hash_secret_file",
    "control_socket",
    "health_defaults",
    "vips",
];
const ENCAP_FIELDS: &[&str] = &["source_v4", "source_v6", "gateway_mac", "mtu"];
const TABLES_FIELDS: &[&str] = &[
    "maglev_size",
    "flow_table_size",
    "udp_idle_timeout",
    "max_vips",
    "max_backends",
];
const VIP_FIELDS: &[&str] = &[
    "name",
    "address",
    "port",
    "protocol",
    "scheduler",
    "forwarding",
    "health_check",
    "backends",
];
const BACKEND_FIELDS: &[&str] = &["address", "weight", "state", "health_check"];
const HEALTH_FIELDS: &[&str] = &[
    "kind",
    "port",
    "path",
    "expect_status",
    "host",
    "send",
    "expect",
    "command",
    "args",
    "interval",
    "timeout",
    "rise",
    "fall",
];

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// A mapping whose keys have been checked against the schema.
struct Fields<'a> {
    pos: Pos,
    path: String,
    /// The object, for messages ("a VIP").
    what: String,
    /// (field name, key node, value node), known fields only, first of duplicates.
    entries: Vec<(&'a str, &'a Node, &'a Node)>,
}

impl<'a> Fields<'a> {
    /// The value of a field, unless absent or null.
    fn get(&self, name: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, _, v)| *v)
            .filter(|v| !v.is_null())
    }

    fn path_of(&self, name: &str) -> String {
        join(&self.path, name)
    }
}

/// A value and where it was written.
#[derive(Clone, Debug)]
struct Loc<T> {
    value: T,
    pos: Pos,
    path: String,
}

fn located<T>(value: Option<T>, node: &Node, path: String) -> Option<Loc<T>> {
    value.map(|value| Loc {
        value,
        pos: node.pos,
        path,
    })
}

/// A value that was not given, given but invalid (already reported), or valid.
#[derive(Clone, Copy, Debug, Default)]
enum Given<T> {
    #[default]
    Absent,
    Invalid,
    Valid(T),
}

#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn report(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            line: pos.line,
            column: pos.column,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn finish(mut self, source_name: &str, pool: Option<Pool>) -> Result<Pool, ConfigErrors> {
        match pool {
            Some(pool) if self.errors.is_empty() => return Ok(pool),
            None if self.errors.is_empty() => self.report(
                Pos { line: 1, column: 1 },
                "",
                "internal error: the pool could not be built although no problem was found; \
                 please report this with the file",
            ),
            _ => {}
        }
        self.errors.sort_by(|a, b| {
            (a.line, a.column, &a.path, &a.message).cmp(&(b.line, b.column, &b.path, &b.message))
        });
        self.errors.dedup();
        Err(ConfigErrors {
            source_name: source_name.to_owned(),
            errors: self.errors,
        })
    }

    // -- generic readers ----------------------------------------------------

    /// Checks that `node` is a mapping whose keys are all in `allowed`, each
    /// once. `what` names the object in messages ("a VIP").
    fn mapping<'a>(
        &mut self,
        node: &'a Node,
        path: &str,
        what: &str,
        allowed: &[&str],
    ) -> Option<Fields<'a>> {
        let Value::Map(entries) = &node.value else {
            self.report(
                node.pos,
                path,
                format!(
                    "expected {what} (a mapping of fields), found {}",
                    node.describe()
                ),
            );
            return None;
        };
        let mut fields = Fields {
            pos: node.pos,
            path: path.to_owned(),
            what: what.to_owned(),
            entries: Vec::new(),
        };
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for (key, value) in entries {
            let Value::Scalar { text, .. } = &key.value else {
                self.report(
                    key.pos,
                    path,
                    format!("expected a field name, found {}", key.describe()),
                );
                continue;
            };
            let name = text.as_str();
            if !allowed.contains(&name) {
                self.report(
                    key.pos,
                    &join(path, name),
                    unknown_field_message(name, what, allowed),
                );
                continue;
            }
            if let Some(first) = seen.get(name) {
                self.report(
                    key.pos,
                    &join(path, name),
                    format!(
                        "`{name}` is given twice in {what} (first at line {}); keep one",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(name, key.pos);
            fields.entries.push((name, key, value));
        }
        Some(fields)
    }

    /// A field that must be given; reports it missing otherwise.
    fn required<'a>(&mut self, fields: &Fields<'a>, name: &str, hint: &str) -> Option<&'a Node> {
        let value = fields.get(name);
        if value.is_none() {
            let this = match fields.what.split_once(' ') {
                Some(("a" | "an", rest)) => format!("this {rest}"),
                _ => fields.what.clone(),
            };
            match fields.entries.iter().find(|(k, _, _)| *k == name) {
                Some((_, key, _)) => self.report(
                    key.pos,
                    &fields.path_of(name),
                    format!("`{name}` has no value; {hint}"),
                ),
                None => self.report(
                    fields.pos,
                    &fields.path_of(name),
                    format!("{this} has no `{name}`; {hint}"),
                ),
            }
        }
        value
    }

    /// The text of a scalar (quoted or not).
    fn scalar<'a>(&mut self, node: &'a Node, path: &str, expected: &str) -> Option<&'a str> {
        match &node.value {
            Value::Scalar { text, .. } if !node.is_null() => Some(text),
            _ => {
                self.report(
                    node.pos,
                    path,
                    format!("expected {expected}, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str, expected: &str) -> Option<String> {
        self.scalar(node, path, expected).map(str::to_owned)
    }

    /// An unquoted decimal integer in `range` (`_` separators allowed).
    fn integer(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        range: RangeInclusive<u64>,
    ) -> Option<u64> {
        let (lo, hi) = (*range.start(), *range.end());
        let expected = format!("{what}, an integer from {lo} to {hi}");
        let text = self.scalar(node, path, &expected)?;
        let plain = matches!(node.value, Value::Scalar { plain: true, .. });
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let digits = digits.replace('_', "");
        let numeric = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        if !numeric || !plain {
            let hint = if numeric {
                " (write it without quotes)"
            } else {
                ""
            };
            self.report(
                node.pos,
                path,
                format!("expected {expected}, found `{text}`{hint}"),
            );
            return None;
        }
        match digits.parse::<u64>() {
            Ok(v) if !negative && range.contains(&v) => Some(v),
            _ => {
                self.report(
                    node.pos,
                    path,
                    format!("{what} `{text}` is out of range; it must be from {lo} to {hi}"),
                );
                None
            }
        }
    }

    fn u16(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        range: RangeInclusive<u16>,
    ) -> Option<u16> {
        let range = u64::from(*range.start())..=u64::from(*range.end());
        self.integer(node, path, what, range)
            .and_then(|v| u16::try_from(v).ok())
    }

    fn u32(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        range: RangeInclusive<u32>,
    ) -> Option<u32> {
        let range = u64::from(*range.start())..=u64::from(*range.end());
        self.integer(node, path, what, range)
            .and_then(|v| u32::try_from(v).ok())
    }

    /// A humantime duration (`200ms`, `2s`, `1m 30s`), longer than zero.
    fn duration(&mut self, node: &Node, path: &str, what: &str) -> Option<Duration> {
        let text = self.scalar(node, path, "a duration such as `200ms` or `2s`")?;
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.report(
                    node.pos,
                    path,
                    format!("{what} must be longer than zero, found `{text}`"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.report(
                    node.pos,
                    path,
                    format!(
                        "`{text}` is not a duration ({e}); write {what} like `200ms`, `2s` or `1m 30s`"
                    ),
                );
                None
            }
        }
    }

    /// One of a fixed set of names.
    fn choice<T: Copy>(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let names = options
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect::<Vec<_>>();
        let expected = if names.len() == 1 {
            format!("only {} is supported for now", names[0])
        } else {
            format!("expected one of {}", names.join(", "))
        };
        let text = self.scalar(node, path, &format!("{what} ({})", names.join(" | ")))?;
        match options.iter().find(|(n, _)| *n == text) {
            Some((_, v)) => Some(*v),
            None => {
                self.report(
                    node.pos,
                    path,
                    format!("`{text}` is not a valid {what}; {expected}"),
                );
                None
            }
        }
    }

    fn ip(&mut self, node: &Node, path: &str) -> Option<IpAddr> {
        let text = self.scalar(node, path, "an IP address")?;
        match text.parse::<IpAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let hint = if text.contains('/') {
                    "; write the address alone, without a prefix length"
                } else if text.parse::<SocketAddr>().is_ok() {
                    "; write the address alone: no port (packets keep the VIP port)"
                } else {
                    ""
                };
                self.report(
                    node.pos,
                    path,
                    format!("`{text}` is not an IP address{hint}"),
                );
                None
            }
        }
    }

    /// An absolute path.
    fn abs_path(&mut self, node: &Node, path: &str, what: &str) -> Option<PathBuf> {
        let text = self.scalar(node, path, "an absolute path")?;
        if !text.starts_with('/') {
            self.report(
                node.pos,
                path,
                format!("{what} `{text}` is not an absolute path; write it from `/`"),
            );
            return None;
        }
        Some(PathBuf::from(text))
    }

    // -- the pool -----------------------------------------------------------

    fn pool(&mut self, root: &Node) -> Option<Pool> {
        let f = self.mapping(root, "", "the pool file", POOL_FIELDS)?;

        let instance = self
            .required(&f, "instance", "name this balancer, e.g. `instance: lb0`")
            .and_then(|n| self.instance(n, "instance"));

        let interfaces = self
            .required(
                &f,
                "interfaces",
                "list the interfaces to attach to, e.g. `interfaces: [eth0]`",
            )
            .and_then(|n| self.interfaces(n, "interfaces"));

        let xdp_mode = match f.get("xdp_mode") {
            None => Some(XdpModeSetting::Auto),
            Some(n) => self.choice(
                n,
                "xdp_mode",
                "xdp_mode",
                &[
                    ("auto", XdpModeSetting::Auto),
                    ("driver", XdpModeSetting::Driver),
                    ("generic", XdpModeSetting::Generic),
                ],
            ),
        };

        let encap = match f.get("encapsulation") {
            None => EncapParts::default(),
            Some(n) => self.encapsulation(n, "encapsulation"),
        };

        let tables = match f.get("tables") {
            None => TablesParts::default(),
            Some(n) => self.tables(n, "tables"),
        };

        let hash_secret_file = match f.get("hash_secret_file") {
            None => Given::Absent,
            Some(n) => self
                .abs_path(n, "hash_secret_file", "hash_secret_file")
                .map_or(Given::Invalid, Given::Valid),
        };
        let control_socket = match f.get("control_socket") {
            None => Given::Absent,
            Some(n) => self
                .control_socket(n, "control_socket")
                .map_or(Given::Invalid, Given::Valid),
        };

        let defaults = match f.get("health_defaults") {
            None => HealthLayer::default(),
            Some(n) => self.health_layer(n, "health_defaults", 1),
        };
        self.check_layer_fits(&defaults, &HealthLayer::default().over(&defaults));

        let vip_parts = match self.required(
            &f,
            "vips",
            "list the services under `vips` (`vips: []` for none); see deploy/pool.example.yaml",
        ) {
            None => None,
            Some(n) => match &n.value {
                Value::List(items) => Some(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.vip(item, &format!("vips[{i}]")))
                        .collect::<Vec<_>>(),
                ),
                _ => {
                    self.report(
                        n.pos,
                        "vips",
                        format!("expected a list of VIPs, found {}", n.describe()),
                    );
                    None
                }
            },
        };
        let vip_parts = vip_parts.unwrap_or_default();

        self.check_across_vips(&vip_parts, &tables, &encap);
        let vips = vip_parts
            .iter()
            .map(|v| self.finish_vip(v, &defaults))
            .collect::<Vec<_>>();

        // Everything below only builds the value; any problem has been reported.
        let instance = instance?;
        let hash_secret_file = match hash_secret_file {
            Given::Absent => Path::new(DEFAULT_SECRET_DIR).join(format!("{instance}.secret")),
            Given::Invalid => return None,
            Given::Valid(p) => p,
        };
        let control_socket = match control_socket {
            Given::Absent => Path::new(DEFAULT_SOCKET_DIR).join(format!("{instance}.sock")),
            Given::Invalid => return None,
            Given::Valid(p) => p,
        };
        Some(Pool {
            instance,
            interfaces: interfaces?,
            xdp_mode: xdp_mode?,
            encapsulation: encap.build()?,
            tables: tables.build()?,
            hash_secret_file,
            control_socket,
            vips: vips.into_iter().collect::<Option<Vec<_>>>()?,
        })
    }

    fn instance(&mut self, node: &Node, path: &str) -> Option<String> {
        let name = self.string(node, path, "an instance name")?;
        let ok = !name.is_empty()
            && name.len() <= MAX_INSTANCE_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            self.report(
                node.pos,
                path,
                format!(
                    "`{name}` is not a valid instance name; use 1 to {MAX_INSTANCE_LEN} characters \
                     from a-z, 0-9, `_` and `-` (it names /sys/fs/bpf/<instance>/)"
                ),
            );
            return None;
        }
        Some(name)
    }

    fn interfaces(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let Value::List(items) = &node.value else {
            self.report(
                node.pos,
                path,
                format!(
                    "expected a list of interface names such as `[eth0]`, found {}",
                    node.describe()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.report(
                node.pos,
                path,
                "no interfaces given; list at least one, e.g. `interfaces: [eth0]` \
                 (`ip link` shows them)",
            );
            return None;
        }
        let mut names = Vec::new();
        let mut seen: HashMap<String, Pos> = HashMap::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(name) = self.string(item, &item_path, "an interface name") else {
                ok = false;
                continue;
            };
            let valid = !name.is_empty()
                && name.len() <= MAX_IFNAME_LEN
                && name != "."
                && name != ".."
                && !name
                    .bytes()
                    .any(|b| b == b'/' || b.is_ascii_whitespace() || b.is_ascii_control());
            if !valid {
                self.report(
                    item.pos,
                    &item_path,
                    format!(
                        "`{name}` is not a valid interface name; names have 1 to {MAX_IFNAME_LEN} \
                         characters without `/` or spaces (`ip link` shows them)"
                    ),
                );
                ok = false;
                continue;
            }
            if let Some(first) = seen.get(&name) {
                self.report(
                    item.pos,
                    &item_path,
                    format!(
                        "interface `{name}` is listed twice (first at line {}); list it once",
                        first.line
                    ),
                );
                ok = false;
                continue;
            }
            seen.insert(name.clone(), item.pos);
            names.push(name);
        }
        ok.then_some(names)
    }

    fn control_socket(&mut self, node: &Node, path: &str) -> Option<PathBuf> {
        let p = self.abs_path(node, path, "control_socket")?;
        let len = p.as_os_str().len();
        if len > MAX_SOCKET_PATH_LEN {
            self.report(
                node.pos,
                path,
                format!(
                    "control_socket is {len} bytes long, more than a Unix socket path may be \
                     ({MAX_SOCKET_PATH_LEN}); choose a shorter path"
                ),
            );
            return None;
        }
        Some(p)
    }

    // -- encapsulation --------------------------------------------------------

    fn encapsulation(&mut self, node: &Node, path: &str) -> EncapParts {
        let mut parts = EncapParts::default();
        let Some(f) = self.mapping(node, path, "encapsulation", ENCAP_FIELDS) else {
            parts.invalid = true;
            return parts;
        };
        if let Some(n) = f.get("source_v4") {
            let p = f.path_of("source_v4");
            parts.source_v4 = match self.prefix(n, &p, "source_v4", false) {
                Some((IpAddr::V4(a), len)) => Given::Valid((a, len)),
                _ => Given::Invalid,
            };
        }
        if let Some(n) = f.get("source_v6") {
            let p = f.path_of("source_v6");
            parts.source_v6 = match self.prefix(n, &p, "source_v6", true) {
                Some((IpAddr::V6(a), len)) => Given::Valid((a, len)),
                _ => Given::Invalid,
            };
        }
        if let Some(n) = f.get("gateway_mac") {
            parts.gateway_mac = self
                .mac(n, &f.path_of("gateway_mac"))
                .map_or(Given::Invalid, Given::Valid);
        }
        if let Some(n) = f.get("mtu") {
            let p = f.path_of("mtu");
            parts.mtu = self.u32(n, &p, "mtu", MTU_RANGE);
            if let (Some(mtu), Given::Valid(_)) = (parts.mtu, parts.source_v6) {
                if mtu < IPV6_MIN_MTU {
                    self.report(
                        n.pos,
                        &p,
                        format!(
                            "mtu {mtu} is below {IPV6_MIN_MTU}, the smallest MTU IPv6 allows, and \
                             source_v6 is set; raise mtu to at least {IPV6_MIN_MTU}"
                        ),
                    );
                    parts.mtu = None;
                }
            }
        }
        parts
    }

    /// `address/prefix` (or a bare address, a full-length prefix) for an
    /// outer source.
    fn prefix(&mut self, node: &Node, path: &str, what: &str, v6: bool) -> Option<(IpAddr, u8)> {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let (min, max) = if v6 {
            (SOURCE_V6_MIN_PREFIX, 128)
        } else {
            (SOURCE_V4_MIN_PREFIX, 32)
        };
        let example = if v6 {
            "fd00:255::/112"
        } else {
            "10.255.0.0/24"
        };
        let text = self.scalar(
            node,
            path,
            &format!("an {family} prefix such as `{example}`"),
        )?;
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let Ok(addr) = addr_text.parse::<IpAddr>() else {
            self.report(
                node.pos,
                path,
                format!("`{text}` is not an {family} prefix; write it like `{example}`"),
            );
            return None;
        };
        if addr.is_ipv6() != v6 {
            let other = if v6 { "source_v4" } else { "source_v6" };
            self.report(
                node.pos,
                path,
                format!(
                    "`{text}` is not an {family} prefix; {what} takes {family} \
                     (did you mean to put it under `{other}`?)"
                ),
            );
            return None;
        }
        let len = match len_text {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => {
                    self.report(
                        node.pos,
                        path,
                        format!("`{text}` has an invalid prefix length; it must be {min} to {max}"),
                    );
                    return None;
                }
            },
        };
        if len < min {
            self.report(
                node.pos,
                path,
                format!(
                    "prefix length /{len} of `{text}` is too short; {what} needs /{min} to /{max} \
                     (at most {} host bits vary per flow)",
                    max - min
                ),
            );
            return None;
        }
        if let Some(what_it_is) = unusable(addr) {
            self.report(
                node.pos,
                path,
                format!(
                    "`{addr}` is {what_it_is} and cannot be an outer source address; \
                     use a unicast address the backends can route back"
                ),
            );
            return None;
        }
        let network = mask(addr, len);
        if network != addr {
            self.report(
                node.pos,
                path,
                format!(
                    "`{text}` has host bits set (they are chosen per flow); write the network \
                     `{network}/{len}`"
                ),
            );
            return None;
        }
        Some((addr, len))
    }

    fn mac(&mut self, node: &Node, path: &str) -> Option<[u8; 6]> {
        let text = self.scalar(node, path, "a MAC address such as `02:00:00:00:00:01`")?;
        let octets: Vec<&str> = text.split([':', '-']).collect();
        let mut mac = [0u8; 6];
        let parsed = octets.len() == 6
            && octets
                .iter()
                .zip(mac.iter_mut())
                .all(|(o, b)| o.len() == 2 && u8::from_str_radix(o, 16).map(|v| *b = v).is_ok());
        if !parsed {
            self.report(
                node.pos,
                path,
                format!(
                    "`{text}` is not a MAC address; write six hex octets like `02:00:00:00:00:01`"
                ),
            );
            return None;
        }
        if mac == [0; 6] || mac[0] & 1 == 1 {
            let kind = if mac == [0; 6] {
                "the all-zero"
            } else {
                "a multicast (or broadcast)"
            };
            self.report(
                node.pos,
                path,
                format!("`{text}` is {kind} MAC address; the next hop needs its unicast MAC (`ip neigh` shows it)"),
            );
            return None;
        }
        Some(mac)
    }

    // -- tables -------------------------------------------------------------

    fn tables(&mut self, node: &Node, path: &str) -> TablesParts {
        let mut parts = TablesParts::default();
        let Some(f) = self.mapping(node, path, "tables", TABLES_FIELDS) else {
            parts.invalid = true;
            return parts;
        };
        if let Some(n) = f.get("maglev_size") {
            let p = f.path_of("maglev_size");
            parts.maglev_size = self.u32(n, &p, "maglev_size", MAGLEV_SIZE_RANGE);
            if let Some(size) = parts.maglev_size {
                if !is_prime(u64::from(size)) {
                    let below = (*MAGLEV_SIZE_RANGE.start()..size)
                        .rev()
                        .find(|&c| is_prime(u64::from(c)));
                    let above = (size..=*MAGLEV_SIZE_RANGE.end()).find(|&c| is_prime(u64::from(c)));
                    let near = [below, above]
                        .iter()
                        .flatten()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(" or ");
                    self.report(
                        n.pos,
                        &p,
                        format!(
                            "maglev_size `{size}` is not a prime; Maglev needs a prime table size \
                             (nearest primes: {near})"
                        ),
                    );
                    parts.maglev_size = None;
                }
            }
        }
        if let Some(n) = f.get("flow_table_size") {
            parts.flow_table_size = self.u32(
                n,
                &f.path_of("flow_table_size"),
                "flow_table_size",
                FLOW_TABLE_SIZE_RANGE,
            );
        }
        if let Some(n) = f.get("udp_idle_timeout") {
            parts.udp_idle_timeout =
                self.duration(n, &f.path_of("udp_idle_timeout"), "udp_idle_timeout");
        }
        if let Some(n) = f.get("max_vips") {
            parts.max_vips = self.u32(n, &f.path_of("max_vips"), "max_vips", MAX_VIPS_RANGE);
            parts.max_vips_pos = Some(n.pos);
        }
        if let Some(n) = f.get("max_backends") {
            parts.max_backends = self.u32(
                n,
                &f.path_of("max_backends"),
                "max_backends",
                MAX_BACKENDS_RANGE,
            );
        }
        // The Maglev tables of all VIPs, two buffers each, live in one BPF
        // array, four slots to an element.
        if let (Some(vips), Some(size)) = (parts.max_vips, parts.maglev_size) {
            let per = u64::from(lb_common::RING_SLOTS_PER_ELEM);
            let elems = 2 * u64::from(vips) * u64::from(size).div_ceil(per);
            if elems > u64::from(u32::MAX) {
                let pos = parts.max_vips_pos.unwrap_or(f.pos);
                self.report(
                    pos,
                    &f.path_of("max_vips"),
                    format!(
                        "2 × max_vips × maglev_size / {per} = {elems} Maglev table elements, \
                         more than one BPF array holds ({}); lower max_vips or maglev_size",
                        u32::MAX
                    ),
                );
                parts.max_vips = None;
            }
        }
        parts
    }

    // -- health checks --------------------------------------------------------

    fn health_layer(&mut self, node: &Node, path: &str, rank: u8) -> HealthLayer {
        let mut layer = HealthLayer {
            at: Some((node.pos, path.to_owned())),
            ..HealthLayer::default()
        };
        let Some(f) = self.mapping(node, path, "a health check", HEALTH_FIELDS) else {
            layer.bad.insert("kind");
            return layer;
        };
        fn loc<T>(value: Option<T>, node: &Node, path: String, rank: u8) -> Option<Loc<(T, u8)>> {
            value.map(|value| Loc {
                value: (value, rank),
                pos: node.pos,
                path,
            })
        }
        for &(name, _, value) in &f.entries {
            if value.is_null() {
                continue;
            }
            let p = f.path_of(name);
            let ok = match name {
                "kind" => {
                    let v = self.choice(
                        value,
                        &p,
                        "health-check kind",
                        &[
                            ("tcp", CheckKind::Tcp),
                            ("http", CheckKind::Http),
                            ("udp", CheckKind::Udp),
                            ("exec", CheckKind::Exec),
                            ("none", CheckKind::None),
                        ],
                    );
                    layer.kind = loc(v, value, p, rank);
                    layer.kind.is_some()
                }
                "port" => {
                    let v = self.u16(value, &p, "health-check port", 1..=65_535);
                    layer.port = loc(v, value, p, rank);
                    layer.port.is_some()
                }
                "path" => {
                    let v = self.string(value, &p, "an HTTP path such as `/healthz`");
                    let v = v.filter(|s| {
                        let ok = s.starts_with('/') && !s.bytes().any(|b| b.is_ascii_whitespace());
                        if !ok {
                            self.report(
                                value.pos,
                                &p,
                                format!("`{s}` is not an HTTP path; it starts with `/` and has no spaces, e.g. `/healthz`"),
                            );
                        }
                        ok
                    });
                    layer.path = loc(v, value, p, rank);
                    layer.path.is_some()
                }
                "expect_status" => {
                    let v = self.u16(value, &p, "expect_status", 100..=599);
                    layer.expect_status = loc(v, value, p, rank);
                    layer.expect_status.is_some()
                }
                "host" => {
                    let v = self.string(value, &p, "a host name for the Host header");
                    let v = v.filter(|s| {
                        let ok = !s
                            .bytes()
                            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
                        if !ok {
                            self.report(
                                value.pos,
                                &p,
                                format!("`{s}` is not a host name; remove the spaces"),
                            );
                        }
                        ok
                    });
                    layer.host = loc(v, value, p, rank);
                    layer.host.is_some()
                }
                "send" => {
                    let v = self.string(value, &p, "the datagram to send, a string");
                    layer.send = loc(v, value, p, rank);
                    layer.send.is_some()
                }
                "expect" => {
                    let v = self.string(value, &p, "the expected reply, a string");
                    layer.expect = loc(v, value, p, rank);
                    layer.expect.is_some()
                }
                "command" => {
                    let v = self.string(value, &p, "a command, e.g. `/usr/local/bin/check`");
                    layer.command = loc(v.map(PathBuf::from), value, p, rank);
                    layer.command.is_some()
                }
                "args" => {
                    let v = match &value.value {
                        Value::List(items) => items
                            .iter()
                            .enumerate()
                            .map(|(i, a)| {
                                self.string(a, &format!("{p}[{i}]"), "an argument string")
                            })
                            .collect::<Vec<_>>()
                            .into_iter()
                            .collect::<Option<Vec<_>>>(),
                        _ => {
                            self.report(
                                value.pos,
                                &p,
                                format!(
                                    "expected a list of arguments such as `[\"--fast\"]`, found {}",
                                    value.describe()
                                ),
                            );
                            None
                        }
                    };
                    layer.args = loc(v, value, p, rank);
                    layer.args.is_some()
                }
                "interval" => {
                    let v = self.duration(value, &p, "the health-check interval");
                    layer.interval = loc(v, value, p, rank);
                    layer.interval.is_some()
                }
                "timeout" => {
                    let v = self.duration(value, &p, "the health-check timeout");
                    layer.timeout = loc(v, value, p, rank);
                    layer.timeout.is_some()
                }
                "rise" => {
                    let v = self.u32(value, &p, "rise", RISE_FALL_RANGE);
                    layer.rise = loc(v, value, p, rank);
                    layer.rise.is_some()
                }
                "fall" => {
                    let v = self.u32(value, &p, "fall", RISE_FALL_RANGE);
                    layer.fall = loc(v, value, p, rank);
                    layer.fall.is_some()
                }
                _ => true,
            };
            if !ok {
                layer.bad.insert(field_static(name));
            }
        }
        layer
    }

    /// Reports the fields `layer` sets that do not apply to the kind in
    /// force there (`merged`, the layer over everything below it).
    fn check_layer_fits(&mut self, layer: &HealthLayer, merged: &HealthLayer) {
        if merged.bad.contains("kind") {
            return;
        }
        let kind = merged.kind_value();
        for (name, pos, path) in layer.set_fields() {
            if fits(name, kind) {
                continue;
            }
            let message = match (kind, owner_kind(name)) {
                (CheckKind::None, _) => format!(
                    "`{name}` has no effect: this health check is off (kind `none`); remove it or \
                     set another kind"
                ),
                (_, Some(owner)) => format!(
                    "`{name}` applies only to {} checks, but this health check is {}; remove it \
                     or set `kind: {}`",
                    owner.as_str(),
                    kind.as_str(),
                    owner.as_str()
                ),
                (_, None) => format!(
                    "`{name}` does not apply to {} checks; remove it",
                    kind.as_str()
                ),
            };
            self.report(pos, &path, message);
        }
    }

    /// The probe for one backend: built-ins ← `health_defaults` ← VIP ← backend.
    fn resolve_health(
        &mut self,
        defaults: &HealthLayer,
        vip: &VipParts,
        backend: &HealthLayer,
        address: IpAddr,
    ) -> Option<ProbeSpec> {
        let merged = defaults.over(&vip.health).over(backend);
        if merged.bad.contains("kind") {
            return None;
        }
        let kind = merged.kind_value();
        if kind == CheckKind::None {
            return None;
        }
        let port = match (&merged.port, &vip.port) {
            (Some(p), _) => p.value.0,
            _ if merged.bad.contains("port") => return None,
            (None, Some(vp)) if vp.value != 0 => vp.value,
            (None, _) if kind == CheckKind::Exec => 0,
            (None, None) => return None,
            (None, Some(vp)) => {
                // The most specific place the user could add the port.
                let (pos, path) = match (&backend.at, &vip.health.at) {
                    (Some((pos, path)), _) | (None, Some((pos, path))) => {
                        (*pos, join(path, "port"))
                    }
                    (None, None) => (vp.pos, vp.path.clone()),
                };
                self.report(
                    pos,
                    &path,
                    format!(
                        "a {} health check needs a port, and VIP `{}` listens on every port \
                         (port 0); set `port` in its health_check",
                        kind.as_str(),
                        vip.name.as_ref().map_or("", |n| n.value.as_str())
                    ),
                );
                return None;
            }
        };
        let interval = merged
            .interval
            .as_ref()
            .map_or(DEFAULT_HEALTH_INTERVAL, |l| l.value.0);
        let timeout = merged
            .timeout
            .as_ref()
            .map_or(DEFAULT_HEALTH_TIMEOUT, |l| l.value.0);
        let timing_ok = !merged.bad.contains("interval") && !merged.bad.contains("timeout");
        if timing_ok && timeout > interval {
            // Report where the later (more specific) of the two was written.
            let t_rank = merged.timeout.as_ref().map_or(0, |l| l.value.1);
            let i_rank = merged.interval.as_ref().map_or(0, |l| l.value.1);
            let (pos, path) = match (&merged.timeout, &merged.interval) {
                (Some(t), _) if t_rank >= i_rank => (t.pos, t.path.clone()),
                (_, Some(i)) => (i.pos, i.path.clone()),
                (Some(t), None) => (t.pos, t.path.clone()),
                (None, None) => (Pos { line: 1, column: 1 }, String::new()),
            };
            self.report(
                pos,
                &path,
                format!(
                    "health-check timeout {} is longer than its interval {}; probes would \
                     overlap: make timeout at most the interval",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
            return None;
        }
        let probe_kind = match kind {
            CheckKind::Tcp | CheckKind::None => ProbeKind::Tcp,
            CheckKind::Http => ProbeKind::Http {
                path: merged
                    .path
                    .as_ref()
                    .map_or_else(|| DEFAULT_HTTP_PATH.to_owned(), |l| l.value.0.clone()),
                expect_status: merged
                    .expect_status
                    .as_ref()
                    .map_or(DEFAULT_HTTP_STATUS, |l| l.value.0),
                host: merged.host.as_ref().map(|l| l.value.0.clone()),
            },
            CheckKind::Udp => ProbeKind::Udp {
                send: merged.send.as_ref().map_or_else(
                    || DEFAULT_UDP_SEND.as_bytes().to_vec(),
                    |l| l.value.0.clone().into_bytes(),
                ),
                expect: merged
                    .expect
                    .as_ref()
                    .map(|l| l.value.0.clone().into_bytes()),
            },
            CheckKind::Exec => match &merged.command {
                Some(c) => ProbeKind::Exec {
                    command: c.value.0.clone(),
                    args: merged
                        .args
                        .as_ref()
                        .map(|l| l.value.0.clone())
                        .unwrap_or_default(),
                },
                None => {
                    if !merged.bad.contains("command") {
                        let (pos, path) = merged
                            .kind
                            .as_ref()
                            .map_or((Pos { line: 1, column: 1 }, String::new()), |k| {
                                (k.pos, k.path.clone())
                            });
                        self.report(
                            pos,
                            &path,
                            "an exec health check needs `command`, the program to run \
                             (it exits 0 when the backend is healthy)",
                        );
                    }
                    return None;
                }
            },
        };
        Some(ProbeSpec {
            kind: probe_kind,
            target: SocketAddr::new(address, port),
            interval,
            timeout,
            rise: merged.rise.as_ref().map_or(DEFAULT_RISE, |l| l.value.0),
            fall: merged.fall.as_ref().map_or(DEFAULT_FALL, |l| l.value.0),
        })
    }

    // -- VIPs and backends ----------------------------------------------------

    fn vip(&mut self, node: &Node, path: &str) -> VipParts {
        let mut parts = VipParts {
            pos: node.pos,
            path: path.to_owned(),
            ..VipParts::default()
        };
        let Some(f) = self.mapping(node, path, "a VIP", VIP_FIELDS) else {
            parts.invalid = true;
            return parts;
        };

        if let Some(n) = self.required(&f, "name", "give every VIP a unique name, e.g. `name: web`")
        {
            let p = f.path_of("name");
            let name = self.string(n, &p, "a VIP name").filter(|name| {
                let ok = !name.is_empty()
                    && name.len() <= MAX_VIP_NAME_LEN
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
                if !ok {
                    self.report(
                        n.pos,
                        &p,
                        format!(
                            "`{name}` is not a valid VIP name; use 1 to {MAX_VIP_NAME_LEN} \
                             characters from A-Z, a-z, 0-9, `_`, `.` and `-`"
                        ),
                    );
                }
                ok
            });
            parts.name = located(name, n, p);
        }
        if let Some(n) = self.required(
            &f,
            "address",
            "give the VIP's IPv4 or IPv6 address, e.g. `address: 10.100.0.1`",
        ) {
            let p = f.path_of("address");
            let addr = self.ip(n, &p).filter(|addr| match unusable(*addr) {
                None => true,
                Some(what) => {
                    self.report(
                        n.pos,
                        &p,
                        format!("`{addr}` is {what} and cannot be a VIP; use a unicast address routed to this balancer"),
                    );
                    false
                }
            });
            parts.address = located(addr, n, p);
        }
        if let Some(n) = self.required(
            &f,
            "port",
            "give the service port, or `port: 0` for every port",
        ) {
            let p = f.path_of("port");
            let port = self.u16(n, &p, "port", 0..=65_535);
            parts.port = located(port, n, p);
        }
        if let Some(n) = self.required(&f, "protocol", "say `protocol: tcp` or `protocol: udp`") {
            parts.protocol = self.choice(
                n,
                &f.path_of("protocol"),
                "protocol",
                &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)],
            );
        }
        parts.scheduler = match f.get("scheduler") {
            None => Some(Scheduler::Maglev),
            Some(n) => self.choice(
                n,
                &f.path_of("scheduler"),
                "scheduler",
                &[("maglev", Scheduler::Maglev)],
            ),
        };
        parts.forwarding = match f.get("forwarding") {
            None => Some(Forwarding::Encap),
            Some(n) => self.choice(
                n,
                &f.path_of("forwarding"),
                "forwarding mode",
                &[("encap", Forwarding::Encap)],
            ),
        };
        if let Some(n) = f.get("health_check") {
            parts.health = self.health_layer(n, &f.path_of("health_check"), 2);
        }
        if let Some(n) = self.required(&f, "backends", "list at least one backend under `backends`")
        {
            let p = f.path_of("backends");
            match &n.value {
                Value::List(items) if items.is_empty() => {
                    let name = parts
                        .name
                        .as_ref()
                        .map_or(String::new(), |n| format!(" `{}`", n.value));
                    self.report(
                        n.pos,
                        &p,
                        format!("VIP{name} has no backends; list at least one under `backends`"),
                    );
                    parts.invalid = true;
                }
                Value::List(items) => {
                    parts.backends = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.backend(item, &format!("{p}[{i}]")))
                        .collect();
                }
                _ => {
                    self.report(
                        n.pos,
                        &p,
                        format!("expected a list of backends, found {}", n.describe()),
                    );
                    parts.invalid = true;
                }
            }
        } else {
            parts.invalid = true;
        }
        parts
    }

    fn backend(&mut self, node: &Node, path: &str) -> BackendParts {
        let mut parts = BackendParts::default();
        let Some(f) = self.mapping(node, path, "a backend", BACKEND_FIELDS) else {
            parts.invalid = true;
            return parts;
        };
        if let Some(n) = self.required(
            &f,
            "address",
            "give the backend's IPv4 or IPv6 address, e.g. `address: 10.0.1.1`",
        ) {
            let p = f.path_of("address");
            let addr = self.ip(n, &p).filter(|addr| match unusable(*addr) {
                None => true,
                Some(what) => {
                    self.report(
                        n.pos,
                        &p,
                        format!("`{addr}` is {what} and cannot be a backend; use the backend's unicast address"),
                    );
                    false
                }
            });
            parts.address = addr.map(|value| Loc {
                value,
                pos: n.pos,
                path: p,
            });
        }
        parts.weight = match f.get("weight") {
            None => Some(DEFAULT_WEIGHT),
            Some(n) => self.u32(n, &f.path_of("weight"), "weight", WEIGHT_RANGE),
        };
        parts.state = match f.get("state") {
            None => Some(BackendState::Active),
            Some(n) => self.choice(
                n,
                &f.path_of("state"),
                "backend state",
                &[
                    ("active", BackendState::Active),
                    ("drain", BackendState::Drain),
                    ("disabled", BackendState::Disabled),
                ],
            ),
        };
        if let Some(n) = f.get("health_check") {
            parts.health = self.health_layer(n, &f.path_of("health_check"), 3);
        }
        parts
    }

    /// Checks that need several VIPs or the tables: uniqueness, counts,
    /// address families.
    fn check_across_vips(&mut self, vips: &[VipParts], tables: &TablesParts, encap: &EncapParts) {
        if let Some(max) = tables.max_vips {
            if let Some(extra) = vips.get(max as usize) {
                self.report(
                    extra.pos,
                    &extra.path,
                    format!(
                        "{} VIPs are listed, more than tables.max_vips ({max}); raise \
                         tables.max_vips or remove VIPs",
                        vips.len()
                    ),
                );
            }
        }
        let mut names: HashMap<&str, Pos> = HashMap::new();
        let mut services: HashMap<(IpAddr, u16, Protocol), (Pos, String)> = HashMap::new();
        let mut slots: usize = 0;
        let mut backends_reported = false;
        for vip in vips {
            if let Some(name) = &vip.name {
                match names.get(name.value.as_str()) {
                    Some(first) => self.report(
                        name.pos,
                        &name.path,
                        format!(
                            "VIP name `{}` is used twice (first at line {}); give each VIP its own name",
                            name.value, first.line
                        ),
                    ),
                    None => {
                        names.insert(&name.value, name.pos);
                    }
                }
            }
            if let (Some(addr), Some(port), Some(proto)) = (&vip.address, &vip.port, vip.protocol) {
                let key = (addr.value, port.value, proto);
                match services.get(&key) {
                    Some((first, first_path)) => self.report(
                        addr.pos,
                        &addr.path,
                        format!(
                            "VIP {} port {} {} is defined twice (first as {first_path} at line {}); \
                             merge the two or change one",
                            addr.value,
                            port.value,
                            proto.as_str(),
                            first.line
                        ),
                    ),
                    None => {
                        services.insert(key, (addr.pos, vip.path.clone()));
                    }
                }
            }
            let mut in_vip: HashMap<IpAddr, Pos> = HashMap::new();
            for backend in &vip.backends {
                let Some(addr) = &backend.address else {
                    continue;
                };
                if let Some(first) = in_vip.get(&addr.value) {
                    self.report(
                        addr.pos,
                        &addr.path,
                        format!(
                            "backend {} is listed twice in this VIP (first at line {}); list it once \
                             and use `weight` for a bigger share",
                            addr.value, first.line
                        ),
                    );
                    continue;
                }
                in_vip.insert(addr.value, addr.pos);
                // One BACKENDS slot per (VIP, backend): health and state are per VIP.
                slots += 1;
                if let Some(max) = tables.max_backends {
                    if slots > max as usize && !backends_reported {
                        backends_reported = true;
                        self.report(
                            addr.pos,
                            &addr.path,
                            format!(
                                "this is backend slot number {slots} (one per VIP and backend), \
                                 more than tables.max_backends ({max}); raise \
                                 tables.max_backends or remove backends"
                            ),
                        );
                    }
                }
                self.check_family(vip, addr, encap);
            }
        }
    }

    fn check_family(&mut self, vip: &VipParts, backend: &Loc<IpAddr>, encap: &EncapParts) {
        let vip_v6 = vip.address.as_ref().map(|a| a.value.is_ipv6());
        match backend.value {
            IpAddr::V4(_) if vip_v6 == Some(true) => {
                self.report(
                    backend.pos,
                    &backend.path,
                    format!(
                    "IPv4 backend {} behind IPv6 VIP {}: 6in4 is not supported (an IPv6 packet \
                     cannot be carried in IPv4 here); give an IPv6 VIP IPv6 backends",
                    backend.value,
                    vip.address.as_ref().map_or(String::new(), |a| a.value.to_string())
                ),
                )
            }
            IpAddr::V4(_) if matches!(encap.source_v4, Given::Absent) => self.report(
                backend.pos,
                &backend.path,
                format!(
                    "backend {} is IPv4, but encapsulation.source_v4 is not set; set it to the \
                     outer IPv4 source prefix, e.g. `source_v4: 10.255.0.0/24`",
                    backend.value
                ),
            ),
            IpAddr::V6(_) if matches!(encap.source_v6, Given::Absent) => self.report(
                backend.pos,
                &backend.path,
                format!(
                    "backend {} is IPv6, but encapsulation.source_v6 is not set; set it to the \
                     outer IPv6 source prefix, e.g. `source_v6: \"fd00:255::/112\"`",
                    backend.value
                ),
            ),
            _ => {}
        }
    }

    /// Checks the VIP's health layers and builds the VIP if nothing is wrong.
    fn finish_vip(&mut self, vip: &VipParts, defaults: &HealthLayer) -> Option<Vip> {
        let base = HealthLayer::default().over(defaults);
        let at_vip = base.over(&vip.health);
        self.check_layer_fits(&vip.health, &at_vip);
        let mut backends = Vec::new();
        for b in &vip.backends {
            self.check_layer_fits(&b.health, &at_vip.over(&b.health));
            let Some(address) = &b.address else { continue };
            let health = self.resolve_health(defaults, vip, &b.health, address.value);
            let (Some(weight), Some(state)) = (b.weight, b.state) else {
                continue;
            };
            if b.invalid {
                continue;
            }
            backends.push(BackendConf {
                address: address.value,
                weight,
                state,
                health,
            });
        }
        if vip.invalid || backends.len() != vip.backends.len() {
            return None;
        }
        Some(Vip {
            name: vip.name.as_ref()?.value.clone(),
            address: vip.address.as_ref()?.value,
            port: vip.port.as_ref()?.value,
            protocol: vip.protocol?,
            scheduler: vip.scheduler?,
            forwarding: vip.forwarding?,
            backends,
        })
    }
}

// ---------------------------------------------------------------------------
// Parts: what the walk found, before it is known to be valid
// ---------------------------------------------------------------------------

struct EncapParts {
    invalid: bool,
    source_v4: Given<(Ipv4Addr, u8)>,
    source_v6: Given<(Ipv6Addr, u8)>,
    gateway_mac: Given<[u8; 6]>,
    /// `None` when invalid; the default when absent.
    mtu: Option<u32>,
}

impl<T> Given<T> {
    fn build(self) -> Option<Option<T>> {
        match self {
            Given::Absent => Some(None),
            Given::Invalid => None,
            Given::Valid(v) => Some(Some(v)),
        }
    }
}

impl EncapParts {
    fn build(self) -> Option<Encapsulation> {
        if self.invalid {
            return None;
        }
        Some(Encapsulation {
            source_v4: self.source_v4.build()?,
            source_v6: self.source_v6.build()?,
            gateway_mac: self.gateway_mac.build()?,
            mtu: self.mtu?,
        })
    }
}

impl Default for EncapParts {
    fn default() -> Self {
        EncapParts {
            invalid: false,
            source_v4: Given::Absent,
            source_v6: Given::Absent,
            gateway_mac: Given::Absent,
            mtu: Some(DEFAULT_MTU),
        }
    }
}

/// Each field: `None` when invalid (reported), the default when absent.
struct TablesParts {
    invalid: bool,
    maglev_size: Option<u32>,
    flow_table_size: Option<u32>,
    udp_idle_timeout: Option<Duration>,
    max_vips: Option<u32>,
    max_vips_pos: Option<Pos>,
    max_backends: Option<u32>,
}

impl Default for TablesParts {
    fn default() -> Self {
        TablesParts {
            invalid: false,
            maglev_size: Some(DEFAULT_MAGLEV_SIZE),
            flow_table_size: Some(DEFAULT_FLOW_TABLE_SIZE),
            udp_idle_timeout: Some(DEFAULT_UDP_IDLE_TIMEOUT),
            max_vips: Some(DEFAULT_MAX_VIPS),
            max_vips_pos: None,
            max_backends: Some(DEFAULT_MAX_BACKENDS),
        }
    }
}

impl TablesParts {
    fn build(self) -> Option<Tables> {
        if self.invalid {
            return None;
        }
        Some(Tables {
            maglev_size: self.maglev_size?,
            flow_table_size: self.flow_table_size?,
            udp_idle_timeout: self.udp_idle_timeout?,
            max_vips: self.max_vips?,
            max_backends: self.max_backends?,
        })
    }
}

#[derive(Default)]
struct VipParts {
    pos: Pos,
    path: String,
    invalid: bool,
    name: Option<Loc<String>>,
    address: Option<Loc<IpAddr>>,
    port: Option<Loc<u16>>,
    protocol: Option<Protocol>,
    scheduler: Option<Scheduler>,
    forwarding: Option<Forwarding>,
    health: HealthLayer,
    backends: Vec<BackendParts>,
}

#[derive(Default)]
struct BackendParts {
    invalid: bool,
    address: Option<Loc<IpAddr>>,
    weight: Option<u32>,
    state: Option<BackendState>,
    health: HealthLayer,
}

impl Default for Pos {
    fn default() -> Self {
        Pos { line: 1, column: 1 }
    }
}

/// `kind` of a health check, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CheckKind {
    Tcp,
    Http,
    Udp,
    Exec,
    None,
}

impl CheckKind {
    fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Udp => "udp",
            CheckKind::Exec => "exec",
            CheckKind::None => "none",
        }
    }
}

/// The kind a kind-specific field belongs to.
fn owner_kind(field: &str) -> Option<CheckKind> {
    match field {
        "path" | "expect_status" | "host" => Some(CheckKind::Http),
        "send" | "expect" => Some(CheckKind::Udp),
        "command" | "args" => Some(CheckKind::Exec),
        _ => None,
    }
}

/// Whether `field` means something for a check of `kind`.
fn fits(field: &str, kind: CheckKind) -> bool {
    match field {
        "kind" => true,
        _ if kind == CheckKind::None => false,
        _ => owner_kind(field).is_none_or(|owner| owner == kind),
    }
}

fn field_static(name: &str) -> &'static str {
    HEALTH_FIELDS
        .iter()
        .find(|f| **f == name)
        .copied()
        .unwrap_or("kind")
}

/// One health-check mapping (or the merge of several): each field with its
/// value, the layer rank it came from (1 defaults, 2 VIP, 3 backend) and
/// where it was written. `None` fields fall through to the layer below.
#[derive(Clone, Debug, Default)]
struct HealthLayer {
    /// Where the mapping itself is.
    at: Option<(Pos, String)>,
    /// Fields that were given but invalid (already reported); checks that
    /// depend on them are skipped.
    bad: HashSet<&'static str>,
    kind: Option<Loc<(CheckKind, u8)>>,
    port: Option<Loc<(u16, u8)>>,
    path: Option<Loc<(String, u8)>>,
    expect_status: Option<Loc<(u16, u8)>>,
    host: Option<Loc<(String, u8)>>,
    send: Option<Loc<(String, u8)>>,
    expect: Option<Loc<(String, u8)>>,
    command: Option<Loc<(PathBuf, u8)>>,
    args: Option<Loc<(Vec<String>, u8)>>,
    interval: Option<Loc<(Duration, u8)>>,
    timeout: Option<Loc<(Duration, u8)>>,
    rise: Option<Loc<(u32, u8)>>,
    fall: Option<Loc<(u32, u8)>>,
}

impl HealthLayer {
    /// The kind in force (tcp unless set).
    fn kind_value(&self) -> CheckKind {
        self.kind.as_ref().map_or(CheckKind::Tcp, |k| k.value.0)
    }

    /// `upper` over `self`: each field `upper` sets wins. When `upper`
    /// changes the kind, the kind-specific fields of the old kind are dropped
    /// (an http `path` from `health_defaults` means nothing to a VIP that
    /// says `kind: udp`).
    fn over(&self, upper: &HealthLayer) -> HealthLayer {
        let mut out = self.clone();
        if let Some(k) = &upper.kind {
            if k.value.0 != self.kind_value() {
                out.path = None;
                out.expect_status = None;
                out.host = None;
                out.send = None;
                out.expect = None;
                out.command = None;
                out.args = None;
                for f in [
                    "path",
                    "expect_status",
                    "host",
                    "send",
                    "expect",
                    "command",
                    "args",
                ] {
                    out.bad.remove(f);
                }
            }
        }
        macro_rules! take {
            ($($field:ident),*) => {$(
                if upper.$field.is_some() {
                    out.$field = upper.$field.clone();
                    out.bad.remove(stringify!($field));
                }
            )*};
        }
        take!(
            kind,
            port,
            path,
            expect_status,
            host,
            send,
            expect,
            command,
            args,
            interval,
            timeout,
            rise,
            fall
        );
        out.bad.extend(upper.bad.iter().copied());
        if upper.at.is_some() {
            out.at = upper.at.clone();
        }
        out
    }

    /// The fields this layer sets, with where.
    fn set_fields(&self) -> Vec<(&'static str, Pos, String)> {
        let mut out = Vec::new();
        macro_rules! collect {
            ($($field:ident),*) => {$(
                if let Some(l) = &self.$field {
                    out.push((stringify!($field), l.pos, l.path.clone()));
                }
            )*};
        }
        collect!(
            port,
            path,
            expect_status,
            host,
            send,
            expect,
            command,
            args,
            interval,
            timeout,
            rise,
            fall
        );
        out
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Why an address cannot be a VIP, a backend or an outer source.
fn unusable(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.is_loopback() => Some("the loopback address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (write the IPv4 address instead)")
        }
        _ => None,
    }
}

/// `addr` with its host bits cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
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

fn unknown_field_message(name: &str, what: &str, allowed: &[&str]) -> String {
    let suggestion = allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2 && *d < a.len())
        .min();
    let list = allowed
        .iter()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match suggestion {
        Some((_, a)) => format!("unknown field `{name}` in {what}; did you mean `{a}`?"),
        None if name == "<<" => {
            format!("merge keys (`<<`) are not supported; write the fields out (the fields of {what} are {list})")
        }
        None => format!("unknown field `{name}` in {what}; the fields are {list}"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines 1-6 of most test files; the first VIP starts on line 7.
    const HEAD: &str = "\
instance: lb0
interfaces: [eth0]
encapsulation:
  source_v4: 10.255.0.0/24
  source_v6: \"fd00:255::/112\"
vips:
";

    /// A valid VIP on lines 7-12 (after `HEAD`).
    const WEB: &str = "  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
";

    fn ok(text: &str) -> Pool {
        parse(text, "t.yaml").unwrap_or_else(|e| panic!("expected a valid pool, got:\n{e}"))
    }

    fn errors(text: &str) -> ConfigErrors {
        match parse(text, "t.yaml") {
            Ok(pool) => panic!("expected problems, the pool parsed: {pool:#?}"),
            Err(e) => e,
        }
    }

    /// Asserts one problem at `line:column` on `path` whose message contains `fragment`.
    #[track_caller]
    fn assert_has(errs: &ConfigErrors, line: usize, column: usize, path: &str, fragment: &str) {
        let found = errs.iter().any(|e| {
            e.line == line && e.column == column && e.path == path && e.message.contains(fragment)
        });
        assert!(
            found,
            "no problem at {line}:{column} {path} containing {fragment:?}; got:\n{errs}"
        );
    }

    /// Asserts exactly one problem, at `line:column` on `path`, containing `fragment`.
    #[track_caller]
    fn assert_only(text: &str, line: usize, column: usize, path: &str, fragment: &str) {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "expected exactly one problem, got:\n{errs}");
        assert_has(&errs, line, column, path, fragment);
    }

    fn lines(errs: &ConfigErrors) -> Vec<(usize, usize)> {
        errs.iter().map(|e| (e.line, e.column)).collect()
    }

    #[test]
    fn example_file_parses_and_resolves() {
        let pool = ok(include_str!("../../deploy/pool.example.yaml"));
        assert_eq!(pool.instance, "lb0");
        assert_eq!(pool.interfaces, vec!["eth0".to_owned()]);
        assert_eq!(pool.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(
            pool.encapsulation,
            Encapsulation {
                source_v4: Some((Ipv4Addr::new(10, 255, 0, 0), 24)),
                source_v6: Some(("fd00:255::".parse().unwrap(), 112)),
                gateway_mac: Some([2, 0, 0, 0, 0, 1]),
                mtu: 1500,
            }
        );
        assert_eq!(pool.tables, Tables::default());
        assert_eq!(
            pool.hash_secret_file,
            PathBuf::from("/var/lib/lb/lb0.secret")
        );
        assert_eq!(pool.control_socket, PathBuf::from("/run/lb/lb0.sock"));
        assert_eq!(pool.pin_dir(), PathBuf::from("/sys/fs/bpf/lb0"));

        let names: Vec<_> = pool.vips.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["web", "dns", "v6-any"]);

        let web = &pool.vips[0];
        assert_eq!(web.address, IpAddr::from([10, 100, 0, 1]));
        assert_eq!((web.port, web.protocol), (80, Protocol::Tcp));
        assert_eq!(
            (web.scheduler, web.forwarding),
            (Scheduler::Maglev, Forwarding::Encap)
        );
        let weights: Vec<_> = web.backends.iter().map(|b| (b.weight, b.state)).collect();
        assert_eq!(
            weights,
            [
                (100, BackendState::Active),
                (200, BackendState::Active),
                (100, BackendState::Drain),
                (100, BackendState::Disabled),
            ]
        );
        let http = ProbeKind::Http {
            path: "/healthz".into(),
            expect_status: 200,
            host: Some("www.example.org".into()),
        };
        assert_eq!(
            web.backends[0].health,
            Some(ProbeSpec {
                kind: http.clone(),
                target: "10.0.1.1:8080".parse().unwrap(),
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(200),
                rise: 2,
                fall: 2,
            })
        );
        // The per-backend override changes the port only.
        let b2 = web.backends[2].health.as_ref().unwrap();
        assert_eq!(
            (&b2.kind, b2.target),
            (&http, "10.0.1.3:8081".parse().unwrap())
        );
        assert_eq!(
            web.backends[3].address,
            "fd00:1::4".parse::<IpAddr>().unwrap()
        );

        let dns = &pool.vips[1];
        assert_eq!((dns.port, dns.protocol), (53, Protocol::Udp));
        let probe = dns.backends[1].health.as_ref().unwrap();
        assert_eq!(
            probe.kind,
            ProbeKind::Udp {
                send: b"ping".to_vec(),
                expect: Some(b"pong".to_vec())
            }
        );
        assert_eq!(probe.target, "10.0.2.2:53".parse().unwrap());

        let v6 = &pool.vips[2];
        assert_eq!(v6.port, 0);
        assert_eq!(
            v6.backends[0].health,
            Some(ProbeSpec {
                kind: ProbeKind::Exec {
                    command: "/usr/local/bin/check-backend".into(),
                    args: vec!["--fast".into()],
                },
                target: "[2001:db8:1::1]:443".parse().unwrap(),
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(150),
                rise: 3,
                fall: 2,
            })
        );
        // `kind: tcp` on the backend drops the exec fields, keeps port, timeout and rise.
        assert_eq!(
            v6.backends[1].health,
            Some(ProbeSpec {
                kind: ProbeKind::Tcp,
                target: "[2001:db8:1::2]:443".parse().unwrap(),
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(150),
                rise: 3,
                fall: 2,
            })
        );
    }

    #[test]
    fn load_reads_the_example_and_reports_a_missing_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let pool = load(&dir.join("pool.example.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pool.vips.len(), 3);

        let missing = dir.join("no-such-pool.yaml");
        let errs = load(&missing).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!((errs.errors[0].line, errs.errors[0].column), (0, 0));
        assert!(errs.errors[0]
            .message
            .starts_with("cannot read the pool file: "));
        let shown = errs.to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read", missing.display())),
            "{shown}"
        );
        assert!(shown.ends_with(&format!("1 problem in {}", missing.display())));
    }

    #[test]
    fn defaults_are_applied() {
        let pool = ok("\
instance: edge-1
interfaces: [eth0, eth1]
encapsulation:
  source_v4: 10.255.0.0/16
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
");
        assert_eq!(pool.interfaces, ["eth0", "eth1"]);
        assert_eq!(pool.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(
            pool.encapsulation,
            Encapsulation {
                source_v4: Some((Ipv4Addr::new(10, 255, 0, 0), 16)),
                source_v6: None,
                gateway_mac: None,
                mtu: 1500,
            }
        );
        assert_eq!(
            pool.tables,
            Tables {
                maglev_size: 65537,
                flow_table_size: 1 << 20,
                udp_idle_timeout: Duration::from_secs(30),
                max_vips: 64,
                max_backends: 4096,
            }
        );
        assert_eq!(
            pool.hash_secret_file,
            PathBuf::from("/var/lib/lb/edge-1.secret")
        );
        assert_eq!(pool.control_socket, PathBuf::from("/run/lb/edge-1.sock"));
        let vip = &pool.vips[0];
        assert_eq!(vip.scheduler, Scheduler::Maglev);
        assert_eq!(vip.forwarding, Forwarding::Encap);
        assert_eq!(vip.protocol.number(), lb_common::PROTO_TCP);
        assert_eq!(Protocol::Udp.number(), lb_common::PROTO_UDP);
        assert_eq!(vip.scheduler.number(), lb_common::scheduler::MAGLEV);
        assert_eq!(vip.forwarding.number(), lb_common::mode::ENCAP);
        assert_eq!(
            vip.backends,
            [BackendConf {
                address: IpAddr::from([10, 0, 1, 1]),
                weight: 100,
                state: BackendState::Active,
                health: Some(ProbeSpec {
                    kind: ProbeKind::Tcp,
                    target: "10.0.1.1:80".parse().unwrap(),
                    interval: Duration::from_millis(200),
                    timeout: Duration::from_millis(200),
                    rise: 2,
                    fall: 2,
                }),
            }]
        );
    }

    #[test]
    fn explicit_settings_override_defaults() {
        let pool = ok(&format!(
            "{HEAD}{WEB}xdp_mode: generic
tables:
  maglev_size: 1_009
  flow_table_size: 4096
  udp_idle_timeout: 1m 30s
  max_vips: 2
  max_backends: 10
hash_secret_file: /etc/lb/secret
control_socket: /tmp/lb.sock
"
        ));
        assert_eq!(pool.xdp_mode, XdpModeSetting::Generic);
        assert_eq!(
            pool.tables,
            Tables {
                maglev_size: 1009,
                flow_table_size: 4096,
                udp_idle_timeout: Duration::from_secs(90),
                max_vips: 2,
                max_backends: 10,
            }
        );
        assert_eq!(pool.hash_secret_file, PathBuf::from("/etc/lb/secret"));
        assert_eq!(pool.control_socket, PathBuf::from("/tmp/lb.sock"));
    }

    #[test]
    fn yaml_syntax_errors_are_located() {
        assert_only(
            "instance: lb0\ninterfaces: [eth0\nvips: []\n",
            3,
            5,
            "",
            "not valid YAML",
        );
        assert_only(
            "instance: lb0\n  interfaces: [eth0]\n",
            2,
            13,
            "",
            "mapping values are not allowed",
        );
        assert_only("", 1, 1, "", "the pool file is empty");
        assert_only("a: 1\n---\nb: 2\n", 2, 1, "", "more than one YAML document");
        assert_only(
            "- 1\n",
            1,
            1,
            "",
            "expected the pool file (a mapping of fields), found a list",
        );
    }

    #[test]
    fn unknown_fields_are_all_reported() {
        let text = format!(
            "{HEAD}  - name: web
    adress: 10.100.0.1
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check: {{kind: tcp, intreval: 1s}}
    backends:
      - address: 10.0.1.1
        colour: blue
tables:
  maglev: 65537
verbose: true
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 5, "{errs}");
        assert_has(
            &errs,
            8,
            5,
            "vips[0].adress",
            "unknown field `adress` in a VIP; did you mean `address`?",
        );
        assert_has(
            &errs,
            12,
            31,
            "vips[0].health_check.intreval",
            "did you mean `interval`?",
        );
        assert_has(
            &errs,
            15,
            9,
            "vips[0].backends[0].colour",
            "unknown field `colour` in a backend; the fields are `address`, `weight`",
        );
        assert_has(
            &errs,
            17,
            3,
            "tables.maglev",
            "unknown field `maglev` in tables",
        );
        assert_has(
            &errs,
            18,
            1,
            "verbose",
            "unknown field `verbose` in the pool file",
        );
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let text = "instance: lb0\ninterfaces: [eth0]\ninstance: lb1\nvips: []\n";
        assert_only(
            text,
            3,
            1,
            "instance",
            "`instance` is given twice in the pool file (first at line 1)",
        );
    }

    #[test]
    fn missing_required_fields_are_reported() {
        let errs = errors("xdp_mode: auto\n");
        assert_eq!(errs.len(), 3, "{errs}");
        assert_has(&errs, 1, 1, "instance", "the pool file has no `instance`");
        assert_has(
            &errs,
            1,
            1,
            "interfaces",
            "the pool file has no `interfaces`",
        );
        assert_has(&errs, 1, 1, "vips", "the pool file has no `vips`");

        let errs = errors(&format!(
            "{HEAD}  - name: web\n    backends: [{{weight: 3}}]\n"
        ));
        assert_eq!(errs.len(), 4, "{errs}");
        assert_has(&errs, 7, 5, "vips[0].address", "this VIP has no `address`");
        assert_has(&errs, 7, 5, "vips[0].port", "this VIP has no `port`");
        assert_has(
            &errs,
            7,
            5,
            "vips[0].protocol",
            "this VIP has no `protocol`",
        );
        assert_has(
            &errs,
            8,
            16,
            "vips[0].backends[0].address",
            "this backend has no `address`",
        );
    }

    #[test]
    fn bad_addresses_are_reported() {
        let text = format!(
            "{HEAD}  - name: web
    address: 10.0.1.300
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1:80
      - address: fd00::/64
      - address: backend-1
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 4, "{errs}");
        assert_has(
            &errs,
            8,
            14,
            "vips[0].address",
            "`10.0.1.300` is not an IP address",
        );
        assert_has(&errs, 12, 18, "vips[0].backends[0].address", "no port");
        assert_has(
            &errs,
            13,
            18,
            "vips[0].backends[1].address",
            "without a prefix length",
        );
        assert_has(
            &errs,
            14,
            18,
            "vips[0].backends[2].address",
            "`backend-1` is not an IP address",
        );
        assert_eq!(
            errs.errors[0].to_string(),
            "8:14: vips[0].address: `10.0.1.300` is not an IP address"
        );
    }

    #[test]
    fn unusable_vip_addresses_are_rejected() {
        for (addr, what) in [
            ("0.0.0.0", "the unspecified address"),
            ("255.255.255.255", "the broadcast address"),
            ("224.0.0.1", "a multicast address"),
            ("127.0.0.1", "a loopback address"),
            ("\"::\"", "the unspecified address"),
            ("\"::1\"", "the loopback address"),
            ("\"ff02::1\"", "a multicast address"),
            ("\"::ffff:10.0.0.1\"", "IPv4-mapped"),
        ] {
            let text = format!("{HEAD}{}", WEB.replace("10.100.0.1", addr));
            assert_only(&text, 8, 14, "vips[0].address", what);
            assert_has(&errors(&text), 8, 14, "vips[0].address", "cannot be a VIP");
        }
        // A network-looking address is a fine /32 VIP.
        ok(&format!(
            "{HEAD}{}",
            WEB.replace("10.100.0.1", "10.100.0.0")
        ));
        // Backends are held to the same rule.
        let text = format!("{HEAD}{}", WEB.replace("10.0.1.1", "127.0.0.1"));
        assert_only(
            &text,
            12,
            18,
            "vips[0].backends[0].address",
            "cannot be a backend",
        );
    }

    #[test]
    fn duplicate_vips_and_names_are_reported() {
        let text = format!(
            "{HEAD}{WEB}  - name: web
    address: 10.100.0.2
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
  - name: web-again
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
  - name: web-udp
    address: 10.100.0.1
    port: 80
    protocol: udp
    backends:
      - address: 10.0.1.1
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs}");
        assert_has(
            &errs,
            13,
            11,
            "vips[1].name",
            "VIP name `web` is used twice (first at line 7)",
        );
        assert_has(
            &errs,
            20,
            14,
            "vips[2].address",
            "VIP 10.100.0.1 port 80 tcp is defined twice (first as vips[0] at line 8)",
        );
    }

    #[test]
    fn duplicate_backends_within_a_vip_are_reported() {
        let text = format!(
            "{HEAD}{WEB}      - address: 10.0.1.2
      - address: 10.0.1.1
        weight: 5
  - name: other
    address: 10.100.0.2
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
"
        );
        // The same backend in another VIP is fine.
        assert_only(
            &text,
            14,
            18,
            "vips[0].backends[2].address",
            "backend 10.0.1.1 is listed twice in this VIP (first at line 12)",
        );
    }

    #[test]
    fn weights_out_of_range_are_reported() {
        let text = format!(
            "{HEAD}{WEB}        weight: 0
      - address: 10.0.1.2
        weight: 65536
      - address: 10.0.1.3
        weight: -1
      - address: 10.0.1.4
        weight: heavy
      - address: 10.0.1.5
        weight: 65535
"
        );
        let errs = errors(&text);
        assert_eq!(
            lines(&errs),
            [(13, 17), (15, 17), (17, 17), (19, 17)],
            "{errs}"
        );
        assert_has(
            &errs,
            13,
            17,
            "vips[0].backends[0].weight",
            "weight `0` is out of range; it must be from 1 to 65535",
        );
        assert_has(
            &errs,
            15,
            17,
            "vips[0].backends[1].weight",
            "weight `65536` is out of range",
        );
        assert_has(
            &errs,
            17,
            17,
            "vips[0].backends[2].weight",
            "weight `-1` is out of range",
        );
        assert_has(
            &errs,
            19,
            17,
            "vips[0].backends[3].weight",
            "expected weight, an integer from 1 to 65535, found `heavy`",
        );
    }

    #[test]
    fn vip_without_backends_is_reported() {
        let text = format!(
            "{HEAD}  - name: empty
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends: []
  - name: none
    address: 10.100.0.2
    port: 80
    protocol: tcp
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs}");
        assert_has(
            &errs,
            11,
            15,
            "vips[0].backends",
            "VIP `empty` has no backends; list at least one",
        );
        assert_has(
            &errs,
            12,
            5,
            "vips[1].backends",
            "this VIP has no `backends`",
        );
    }

    #[test]
    fn too_many_vips_and_backends_are_reported() {
        let text = format!(
            "{HEAD}{WEB}      - address: 10.0.1.2
  - name: two
    address: 10.100.0.2
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
      - address: 10.0.1.3
      - address: 10.0.1.4
tables:
  max_vips: 1
  max_backends: 2
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs}");
        assert_has(
            &errs,
            14,
            5,
            "vips[1]",
            "2 VIPs are listed, more than tables.max_vips (1)",
        );
        // 10.0.1.1 behind a second VIP takes a slot of its own: the third.
        assert_has(
            &errs,
            19,
            18,
            "vips[1].backends[0].address",
            "backend slot number 3 (one per VIP and backend), more than tables.max_backends (2)",
        );
    }

    #[test]
    fn maglev_size_must_be_prime_and_in_range() {
        let with = |size: &str| format!("{HEAD}{WEB}tables:\n  maglev_size: {size}\n");
        assert_only(
            &with("65536"),
            14,
            16,
            "tables.maglev_size",
            "not a prime; Maglev needs a prime table size (nearest primes: `65521` or `65537`)",
        );
        assert_only(
            &with("997"),
            14,
            16,
            "tables.maglev_size",
            "maglev_size `997` is out of range; it must be from 1009 to 1000003",
        );
        assert_only(
            &with("1000033"),
            14,
            16,
            "tables.maglev_size",
            "out of range",
        );
        ok(&with("1000003"));
        ok(&with("1009"));
        assert!(is_prime(65537) && is_prime(1_000_003) && is_prime(2) && is_prime(1009));
        assert!(!is_prime(1) && !is_prime(65536) && !is_prime(1_000_001) && !is_prime(9));
    }

    #[test]
    fn table_sizes_are_checked() {
        let text = format!(
            "{HEAD}{WEB}tables:
  flow_table_size: 512
  udp_idle_timeout: 0s
  max_vips: 65536
  maglev_size: 1000003
  max_backends: 65536
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 4, "{errs}");
        assert_has(
            &errs,
            14,
            20,
            "tables.flow_table_size",
            "flow_table_size `512` is out of range; it must be from 1024 to 67108864",
        );
        assert_has(
            &errs,
            15,
            21,
            "tables.udp_idle_timeout",
            "udp_idle_timeout must be longer than zero",
        );
        assert_has(
            &errs,
            16,
            13,
            "tables.max_vips",
            "Maglev table elements, more than one BPF array holds",
        );
        // Backend ids are 16 bits in the Maglev tables.
        assert_has(
            &errs,
            18,
            17,
            "tables.max_backends",
            "`65536` is out of range; it must be from 1 to 65535",
        );
    }

    #[test]
    fn backend_family_needs_an_outer_source() {
        let text = "\
instance: lb0
interfaces: [eth0]
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
      - address: fd00::1
";
        let errs = errors(text);
        assert_eq!(errs.len(), 2, "{errs}");
        assert_has(
            &errs,
            9,
            18,
            "vips[0].backends[0].address",
            "backend 10.0.1.1 is IPv4, but encapsulation.source_v4 is not set",
        );
        assert_has(
            &errs,
            10,
            18,
            "vips[0].backends[1].address",
            "backend fd00::1 is IPv6, but encapsulation.source_v6 is not set",
        );
    }

    #[test]
    fn ipv6_vip_with_ipv4_backend_is_6in4() {
        let text = format!(
            "{HEAD}  - name: v6
    address: 2001:db8::1
    port: 443
    protocol: tcp
    backends:
      - address: 2001:db8:1::1
      - address: 10.0.1.1
"
        );
        assert_only(
            &text,
            13,
            18,
            "vips[0].backends[1].address",
            "6in4 is not supported",
        );
        // 4in6 is fine.
        ok(&format!("{HEAD}{}", WEB.replace("10.0.1.1", "fd00::1")));
    }

    #[test]
    fn encapsulation_is_checked() {
        let text = "\
instance: lb0
interfaces: [eth0]
encapsulation:
  source_v4: 10.255.0.0/8
  source_v6: fd00:255::1/112
  gateway_mac: 02:00:00:00:01
  mtu: 1000
vips: []
";
        let errs = errors(text);
        assert_eq!(errs.len(), 3, "{errs}");
        assert_has(
            &errs,
            4,
            14,
            "encapsulation.source_v4",
            "prefix length /8 of `10.255.0.0/8` is too short; source_v4 needs /16 to /32",
        );
        assert_has(
            &errs,
            5,
            14,
            "encapsulation.source_v6",
            "has host bits set (they are chosen per flow); write the network `fd00:255::/112`",
        );
        assert_has(
            &errs,
            6,
            16,
            "encapsulation.gateway_mac",
            "`02:00:00:00:01` is not a MAC address",
        );
        // An invalid source_v6 is not taken as set, so mtu 1000 (< 1280) is not reported.
        assert!(errs.iter().all(|e| e.path != "encapsulation.mtu"), "{errs}");

        let text = "\
instance: lb0
interfaces: [eth0]
encapsulation:
  source_v4: \"fd00::/112\"
  source_v6: \"fd00::/112\"
  gateway_mac: ff:ff:ff:ff:ff:ff
  mtu: 1200
vips: []
";
        let errs = errors(text);
        assert_eq!(errs.len(), 3, "{errs}");
        assert_has(
            &errs,
            4,
            14,
            "encapsulation.source_v4",
            "did you mean to put it under `source_v6`?",
        );
        assert_has(
            &errs,
            6,
            16,
            "encapsulation.gateway_mac",
            "multicast (or broadcast) MAC",
        );
        assert_has(&errs, 7, 8, "encapsulation.mtu", "below 1280");

        let pool = ok("instance: lb0\ninterfaces: [eth0]\nencapsulation:\n  source_v4: 192.0.2.7\n  gateway_mac: 0A-1b-2c-3d-4e-5f\nvips: []\n");
        assert_eq!(
            pool.encapsulation.source_v4,
            Some((Ipv4Addr::new(192, 0, 2, 7), 32))
        );
        assert_eq!(
            pool.encapsulation.gateway_mac,
            Some([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f])
        );
        assert!(pool.vips.is_empty());
    }

    #[test]
    fn bad_mac_is_reported() {
        for mac in [
            "02:00:00:00:00:0g",
            "020000000001",
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
        ] {
            let text = format!(
                "instance: lb0\ninterfaces: [eth0]\nencapsulation:\n  gateway_mac: \"{mac}\"\nvips: []\n"
            );
            assert_only(&text, 4, 16, "encapsulation.gateway_mac", "MAC address");
        }
    }

    #[test]
    fn instance_name_is_checked() {
        for name in ["Lb0", "a-very-long-instance", "lb/0", "\"\"", "lb.0"] {
            let text = format!("instance: {name}\ninterfaces: [eth0]\nvips: []\n");
            assert_only(
                &text,
                1,
                11,
                "instance",
                "is not a valid instance name; use 1 to 15 characters",
            );
        }
        let pool = ok("instance: lb_0-15-chars-a\ninterfaces: [eth0]\nvips: []\n");
        assert_eq!(pool.instance.len(), MAX_INSTANCE_LEN);
    }

    #[test]
    fn interfaces_must_be_given() {
        assert_only(
            "instance: lb0\ninterfaces: []\nvips: []\n",
            2,
            13,
            "interfaces",
            "no interfaces given",
        );
        assert_only(
            "instance: lb0\ninterfaces: eth0\nvips: []\n",
            2,
            13,
            "interfaces",
            "expected a list of interface names",
        );
        assert_only(
            "instance: lb0\ninterfaces:\nvips: []\n",
            2,
            1,
            "interfaces",
            "`interfaces` has no value",
        );
        let errs = errors(
            "instance: lb0\ninterfaces: [eth0, eth0, \"a b\", averyveryverylongname]\nvips: []\n",
        );
        assert_eq!(lines(&errs), [(2, 20), (2, 26), (2, 33)], "{errs}");
        assert_has(
            &errs,
            2,
            20,
            "interfaces[1]",
            "interface `eth0` is listed twice",
        );
    }

    #[test]
    fn enum_fields_are_checked() {
        let text = format!(
            "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: sctp
    scheduler: round_robin
    forwarding: nat
    backends:
      - address: 10.0.1.1
        state: gone
xdp_mode: offload
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 5, "{errs}");
        assert_has(
            &errs,
            10,
            15,
            "vips[0].protocol",
            "`sctp` is not a valid protocol; expected one of `tcp`, `udp`",
        );
        assert_has(
            &errs,
            11,
            16,
            "vips[0].scheduler",
            "`round_robin` is not a valid scheduler; only `maglev` is supported for now",
        );
        assert_has(
            &errs,
            12,
            17,
            "vips[0].forwarding",
            "only `encap` is supported for now",
        );
        assert_has(
            &errs,
            15,
            16,
            "vips[0].backends[0].state",
            "expected one of `active`, `drain`, `disabled`",
        );
        assert_has(
            &errs,
            16,
            11,
            "xdp_mode",
            "expected one of `auto`, `driver`, `generic`",
        );
    }

    #[test]
    fn health_fields_must_fit_the_kind() {
        let text = format!(
            "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check:
      kind: tcp
      path: /healthz
      send: hello
    backends:
      - address: 10.0.1.1
        health_check: {{command: /bin/true}}
      - address: 10.0.1.2
        health_check: {{kind: none, interval: 1s}}
  - name: udp
    address: 10.100.0.1
    port: 53
    protocol: udp
    health_check: {{kind: exec, command: /bin/check, expect_status: 204}}
    backends:
      - address: 10.0.1.3
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 5, "{errs}");
        assert_has(&errs, 13, 13, "vips[0].health_check.path", "`path` applies only to http checks, but this health check is tcp; remove it or set `kind: http`");
        assert_has(
            &errs,
            14,
            13,
            "vips[0].health_check.send",
            "`send` applies only to udp checks",
        );
        assert_has(
            &errs,
            17,
            33,
            "vips[0].backends[0].health_check.command",
            "`command` applies only to exec checks",
        );
        assert_has(
            &errs,
            19,
            46,
            "vips[0].backends[1].health_check.interval",
            "has no effect: this health check is off (kind `none`)",
        );
        assert_has(
            &errs,
            24,
            68,
            "vips[1].health_check.expect_status",
            "applies only to http checks, but this health check is exec",
        );
    }

    #[test]
    fn changing_the_kind_drops_the_old_kind_fields() {
        let text = format!(
            "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check: {{kind: http, path: /ready, host: a.example}}
    backends:
      - address: 10.0.1.1
        health_check: {{kind: udp, send: hi}}
      - address: 10.0.1.2
        health_check: {{kind: http}}
health_defaults:
  kind: exec
  command: /bin/check
"
        );
        let pool = ok(&text);
        let b = &pool.vips[0].backends;
        assert_eq!(
            b[0].health.as_ref().unwrap().kind,
            ProbeKind::Udp {
                send: b"hi".to_vec(),
                expect: None
            }
        );
        // Same kind again: the VIP's http fields stay.
        assert_eq!(
            b[1].health.as_ref().unwrap().kind,
            ProbeKind::Http {
                path: "/ready".into(),
                expect_status: 200,
                host: Some("a.example".into())
            }
        );
    }

    #[test]
    fn health_override_precedence() {
        let text = format!(
            "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check:
      path: /vip
      rise: 5
    backends:
      - address: 10.0.1.1
        health_check: {{port: 9000, fall: 4}}
      - address: 10.0.1.2
      - address: 10.0.1.3
        health_check: {{kind: tcp}}
      - address: 10.0.1.4
        health_check: {{kind: none}}
  - name: other
    address: 10.100.0.2
    port: 81
    protocol: tcp
    backends:
      - address: 10.0.1.1
health_defaults:
  kind: http
  path: /defaults
  interval: 1s
  timeout: 500ms
  expect_status: 204
"
        );
        let pool = ok(&text);
        let web = &pool.vips[0].backends;
        let http = |path: &str| ProbeKind::Http {
            path: path.into(),
            expect_status: 204,
            host: None,
        };
        let spec = |kind, target: &str, rise, fall| ProbeSpec {
            kind,
            target: target.parse().unwrap(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise,
            fall,
        };
        // backend override > VIP > health_defaults > built-in defaults
        assert_eq!(
            web[0].health,
            Some(spec(http("/vip"), "10.0.1.1:9000", 5, 4))
        );
        assert_eq!(web[1].health, Some(spec(http("/vip"), "10.0.1.2:80", 5, 2)));
        assert_eq!(
            web[2].health,
            Some(spec(ProbeKind::Tcp, "10.0.1.3:80", 5, 2))
        );
        assert_eq!(web[3].health, None);
        // A VIP without health_check gets health_defaults on its own port.
        assert_eq!(
            pool.vips[1].backends[0].health,
            Some(spec(http("/defaults"), "10.0.1.1:81", 2, 2))
        );
    }

    #[test]
    fn port_zero_vip_needs_a_health_port() {
        let any_port = |health: &str| {
            format!(
                "{HEAD}  - name: any
    address: 10.100.0.1
    port: 0
    protocol: tcp{health}
    backends:
      - address: 10.0.1.1
      - address: 10.0.1.2
"
            )
        };
        // The default tcp check: reported once, at the VIP's port.
        assert_only(&any_port(""), 9, 11, "vips[0].port", "a tcp health check needs a port, and VIP `any` listens on every port (port 0); set `port` in its health_check");
        assert_only(
            &any_port("\n    health_check: {kind: http}"),
            11,
            19,
            "vips[0].health_check.port",
            "a http health check needs a port",
        );
        let pool = ok(&any_port("\n    health_check: {port: 22}"));
        assert_eq!(
            pool.vips[0].backends[1].health.as_ref().unwrap().target,
            "10.0.1.2:22".parse().unwrap()
        );
        let pool = ok(&any_port(
            "\n    health_check: {kind: exec, command: /bin/check}",
        ));
        assert_eq!(
            pool.vips[0].backends[0].health.as_ref().unwrap().target,
            "10.0.1.1:0".parse().unwrap()
        );
        let pool = ok(&any_port("\n    health_check: {kind: none}"));
        assert_eq!(pool.vips[0].backends[0].health, None);
        assert_only(
            &any_port("\n    health_check: {port: 0}"),
            11,
            26,
            "vips[0].health_check.port",
            "health-check port `0` is out of range; it must be from 1 to 65535",
        );
    }

    #[test]
    fn bad_durations_and_timings_are_reported() {
        let text = format!(
            "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check:
      interval: 5
      timeout: fast
      rise: 0
      fall: 0
    backends:
      - address: 10.0.1.1
        health_check: {{interval: 0ms}}
  - name: slow
    address: 10.100.0.2
    port: 80
    protocol: tcp
    health_check: {{timeout: 1s}}
    backends:
      - address: 10.0.1.1
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 6, "{errs}");
        assert_has(
            &errs,
            12,
            17,
            "vips[0].health_check.interval",
            "`5` is not a duration (time unit needed",
        );
        assert_has(
            &errs,
            13,
            16,
            "vips[0].health_check.timeout",
            "`fast` is not a duration",
        );
        assert_has(
            &errs,
            14,
            13,
            "vips[0].health_check.rise",
            "rise `0` is out of range; it must be from 1 to",
        );
        assert_has(
            &errs,
            15,
            13,
            "vips[0].health_check.fall",
            "fall `0` is out of range",
        );
        assert_has(
            &errs,
            18,
            34,
            "vips[0].backends[0].health_check.interval",
            "must be longer than zero, found `0ms`",
        );
        assert_has(
            &errs,
            23,
            29,
            "vips[1].health_check.timeout",
            "health-check timeout 1s is longer than its interval 200ms",
        );
    }

    #[test]
    fn exec_needs_a_command_and_http_a_path() {
        let text = format!(
            "{HEAD}{WEB}        health_check: {{kind: exec}}
      - address: 10.0.1.2
        health_check: {{kind: http, path: healthz}}
"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs}");
        assert_has(
            &errs,
            13,
            30,
            "vips[0].backends[0].health_check.kind",
            "an exec health check needs `command`",
        );
        assert_has(
            &errs,
            15,
            42,
            "vips[0].backends[1].health_check.path",
            "`healthz` is not an HTTP path",
        );
    }

    #[test]
    fn paths_are_checked() {
        let text = format!(
            "{HEAD}{WEB}hash_secret_file: lb0.secret\ncontrol_socket: /{}\n",
            "x".repeat(120)
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs}");
        assert_has(&errs, 13, 19, "hash_secret_file", "is not an absolute path");
        assert_has(
            &errs,
            14,
            17,
            "control_socket",
            "more than a Unix socket path may be (107)",
        );
    }

    #[test]
    fn aliases_are_expanded() {
        let text = "\
instance: lb0
interfaces: [eth0]
encapsulation: {source_v4: 10.255.0.0/24}
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends: &pool
      - address: 10.0.1.1
      - address: 10.0.1.2
  - name: web-tls
    address: 10.100.0.1
    port: 443
    protocol: tcp
    backends: *pool
";
        let pool = ok(text);
        assert_eq!(pool.vips[1].backends.len(), 2);
        assert_eq!(
            pool.vips[1].backends[1].health.as_ref().unwrap().target,
            "10.0.1.2:443".parse().unwrap()
        );
    }

    #[test]
    fn several_different_errors_are_reported_at_once() {
        let text = "\
instance: LB-0
interfaces: []
xdp_mode: auto
encapsulation:
  source_v4: 10.255.0.0/24
  mtu: 10000
tables:
  maglev_size: 1000
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check: {kind: tcp, path: /x}
    backends:
      - address: 10.0.1.1
        weight: 0
      - address: 10.0.1.1
      - address: fd00::5
  - name: web
    address: 0.0.0.0
    port: 81
    protocol: tcp
    backends: []
verbose: 1
";
        let errs = errors(text);
        assert_eq!(
            lines(&errs),
            [
                (1, 11),  // instance name
                (2, 13),  // no interfaces
                (6, 8),   // mtu out of range
                (8, 16),  // maglev_size out of range
                (14, 37), // path on a tcp check
                (17, 17), // weight 0
                (18, 18), // duplicate backend
                (19, 18), // IPv6 backend without source_v6
                (20, 11), // duplicate VIP name
                (21, 14), // unspecified VIP address
                (24, 15), // no backends
                (25, 1),  // unknown field
            ],
            "{errs}"
        );
        let shown = errs.to_string();
        let shown: Vec<&str> = shown.lines().collect();
        assert_eq!(shown.len(), 13);
        assert_eq!(
            shown[0],
            "t.yaml:1:11: instance: `LB-0` is not a valid instance name; use 1 to 15 characters \
             from a-z, 0-9, `_` and `-` (it names /sys/fs/bpf/<instance>/)"
        );
        assert_eq!(shown[12], "12 problems in t.yaml");
    }
}
