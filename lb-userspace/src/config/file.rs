//! The pool file as serde types: one struct per mapping, each field with its
//! meaning and default, and `FromStr` newtypes for values with a syntax of
//! their own. Each field is a [`Field`], so that one bad value does not hide
//! the others; rules that involve several fields are in `check`. The value
//! types (ranges, durations, addresses, names) are in `file/values.rs`.
//!
//! A struct's serde name (`rename`) is how messages call it ("unknown field
//! `adress` in a VIP"). In messages, `{field}` stands for the field's name
//! (see [`FIELD`]).
use serde::Deserialize;

use super::de::Field;
use super::*;

/// The integer type for a range constant: `ranged!(WEIGHT_RANGE)`.
macro_rules! ranged {
    ($range:ident) => {
        Int<{ *$range.start() }, { *$range.end() }>
    };
}

/// The whole file.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "the pool file")]
pub(super) struct PoolFile {
    /// Required. Names this balancer; see [`InstanceName`].
    pub instance: Field<InstanceName>,
    /// Required. The interfaces to attach to: at least one, each once.
    pub interfaces: Field<Vec<Field<IfName>>>,
    /// Default `auto`.
    pub xdp_mode: Field<XdpModeSetting>,
    /// Default: no outer sources (so no backends), no gateway MAC, MTU 1500.
    pub encapsulation: Field<EncapFile>,
    /// Default: each field's default.
    pub tables: Field<TablesFile>,
    /// Default `/var/lib/lb/<instance>.secret` ([`DEFAULT_SECRET_DIR`]).
    pub hash_secret_file: Field<AbsPath>,
    /// Default `/run/lb/<instance>.sock` ([`DEFAULT_SOCKET_DIR`]).
    pub control_socket: Field<SocketPath>,
    /// Default: no metrics endpoint.
    pub metrics: Field<MetricsFile>,
    /// Default: the daemon announces nothing.
    pub announce: Field<AnnounceFile>,
    /// Health-check settings for every VIP; default: a tcp check on the VIP
    /// port with the defaults of [`HealthFile`].
    pub health_defaults: Field<HealthFile>,
    /// Required (`vips: []` for none). At most `tables.max_vips`.
    pub vips: Field<Vec<Field<VipFile>>>,
}

/// `metrics`: the Prometheus endpoint.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "metrics")]
pub(super) struct MetricsFile {
    /// Required: the address and port it listens on.
    pub listen: Field<ListenAddr>,
}

/// `announce`: the VIP addresses this node announces, through BIRD.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "announce")]
pub(super) struct AnnounceFile {
    /// Default `/run/bird/lb-<instance>.conf`.
    pub bird_include: Field<AbsPath>,
    /// Default [`DEFAULT_BIRD_SOCKET`].
    pub bird_socket: Field<AbsPath>,
    /// Default false.
    pub drain: Field<bool>,
}

/// `encapsulation`; see [`Encapsulation`].
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "encapsulation")]
pub(super) struct EncapFile {
    /// Default none; needed when a backend is IPv4.
    pub source_v4: Field<Prefix4>,
    /// Default none; needed when a backend is IPv6.
    pub source_v6: Field<Prefix6>,
    /// Default none.
    pub gateway_mac: Field<Mac>,
    /// Default [`DEFAULT_MTU`]; at least [`IPV6_MIN_MTU`] with `source_v6`.
    pub mtu: Field<ranged!(MTU_RANGE)>,
    /// Default [`lb_common::DEFAULT_GUE_PORT`].
    pub gue_port: Field<Int<1, 65_535>>,
}

/// `tables`; see [`Tables`].
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "tables")]
pub(super) struct TablesFile {
    /// Default [`DEFAULT_MAGLEV_SIZE`].
    pub maglev_size: Field<MaglevSize>,
    /// Default [`DEFAULT_FLOW_TABLE_SIZE`].
    pub flow_table_size: Field<ranged!(FLOW_TABLE_SIZE_RANGE)>,
    /// Default true.
    pub flow_table_grows: Field<bool>,
    /// Default [`DEFAULT_UDP_IDLE_TIMEOUT`].
    pub udp_idle_timeout: Field<Dur>,
    /// Default [`DEFAULT_NEW_FLOWS_PER_CPU`]; 0: no limit.
    pub new_flows_per_cpu: Field<ranged!(NEW_FLOWS_PER_CPU_RANGE)>,
    /// Default [`DEFAULT_MAX_VIPS`]; 2 × max_vips × maglev_size / 4 Maglev
    /// elements must fit one BPF array.
    pub max_vips: Field<ranged!(MAX_VIPS_RANGE)>,
    /// Default [`DEFAULT_MAX_BACKENDS`]: backend slots, one per VIP and backend.
    pub max_backends: Field<ranged!(MAX_BACKENDS_RANGE)>,
    /// Default [`default_max_backends_per_vip`].
    pub max_backends_per_vip: Field<ranged!(MAX_BACKENDS_PER_VIP_RANGE)>,
    /// Default [`DEFAULT_PERSISTENCE_TABLE_SIZE`].
    pub persistence_table_size: Field<ranged!(PERSISTENCE_TABLE_SIZE_RANGE)>,
    /// Default [`DEFAULT_NAT_TCP_TIMEOUT`].
    pub nat_tcp_timeout: Field<Dur>,
    /// Default [`DEFAULT_NAT_CLOSED_TIMEOUT`].
    pub nat_closed_timeout: Field<Dur>,
    /// Default [`DEFAULT_STATELESS_WINDOW`].
    pub stateless_window: Field<Dur>,
    /// Default [`DEFAULT_MAX_STATELESS_VIPS`].
    pub max_stateless_vips: Field<ranged!(MAX_STATELESS_VIPS_RANGE)>,
}

/// One entry of `vips`; see [`Vip`].
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "a VIP")]
pub(super) struct VipFile {
    /// Required; unique among the VIPs.
    pub name: Field<VipName>,
    /// Required; (address, port, protocol) unique among the VIPs.
    pub address: Field<VipAddr>,
    /// Required; 0 means every port.
    pub port: Field<Int<0, 65_535>>,
    /// Required.
    pub protocol: Field<Protocol>,
    /// Default `maglev`.
    pub scheduler: Field<Scheduler>,
    /// Default 32.
    pub source_prefix_v4: Field<Int<1, 32>>,
    /// Default 128.
    pub source_prefix_v6: Field<Int<1, 128>>,
    /// Default `encap`.
    pub forwarding: Field<Forwarding>,
    /// Default `stateful`.
    pub state: Field<VipState>,
    /// Default `tables.maglev_size`; at most that.
    pub maglev_size: Field<MaglevSize>,
    /// Percent; default 0 (off).
    pub panic_threshold: Field<Int<0, 100>>,
    /// Default: off.
    pub passive_health: Field<PassiveFile>,
    /// Default: none.
    pub slow_start: Field<Dur>,
    /// Default: none.
    pub persistence: Field<PersistFile>,
    /// Default: no limit. Each backend's, unless the backend sets its own.
    pub max_connections: Field<ranged!(MAX_CONNECTIONS_RANGE)>,
    /// `forwarding: nat` only, and required there.
    pub snat_addresses: Field<Vec<Field<BackendAddr>>>,
    /// `forwarding: nat` only; default `lb_common::DEFAULT_NAT_PORTS`.
    pub snat_ports: Field<PortRange>,
    /// Overrides `health_defaults` field by field.
    pub health_check: Field<HealthFile>,
    /// Required: at least one; addresses unique within the VIP.
    pub backends: Field<Vec<Field<BackendFile>>>,
}

/// One entry of a VIP's `backends`; see [`BackendConf`].
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "a backend")]
pub(super) struct BackendFile {
    /// Required. Packets keep the VIP port.
    pub address: Field<BackendAddr>,
    /// Default [`DEFAULT_WEIGHT`].
    pub weight: Field<ranged!(WEIGHT_RANGE)>,
    /// Default `active`.
    pub state: Field<BackendState>,
    /// Default: the VIP's `max_connections`.
    pub max_connections: Field<ranged!(MAX_CONNECTIONS_RANGE)>,
    /// `forwarding: nat` only; default: the VIP's port.
    pub port: Field<Int<1, 65_535>>,
    /// Overrides the VIP's health check field by field.
    pub health_check: Field<HealthFile>,
}

/// `health_defaults` and each `health_check`. Layers override field by
/// field: built-in defaults (below), `health_defaults`, the VIP's, the
/// backend's. A layer that changes `kind` drops the fields of the old kind.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "a health check")]
pub(super) struct HealthFile {
    /// Default `tcp`.
    pub kind: Field<CheckKind>,
    /// Default: the VIP port; needed (except for exec) when that is 0.
    pub port: Field<Int<1, 65_535>>,
    /// http only; default [`DEFAULT_HTTP_PATH`].
    pub path: Field<HttpPath>,
    /// http only; default [`DEFAULT_HTTP_STATUS`].
    pub expect_status: Field<Int<100, 599>>,
    /// http only: the Host header; default none.
    pub host: Field<HostName>,
    /// udp only: the datagram sent; default [`DEFAULT_UDP_SEND`].
    pub send: Field<String>,
    /// udp only: what the reply must start with; default: any reply.
    pub expect: Field<String>,
    /// exec only, and required there: the program (exit 0 = healthy).
    pub command: Field<PathBuf>,
    /// exec only; default none.
    pub args: Field<Vec<String>>,
    /// Default [`DEFAULT_HEALTH_INTERVAL`].
    pub interval: Field<Dur>,
    /// Default [`DEFAULT_HEALTH_TIMEOUT`]; at most the interval.
    pub timeout: Field<Dur>,
    /// Default [`DEFAULT_RISE`].
    pub rise: Field<ranged!(RISE_FALL_RANGE)>,
    /// Default [`DEFAULT_FALL`].
    pub fall: Field<ranged!(RISE_FALL_RANGE)>,
}

/// A health check's `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum CheckKind {
    Tcp,
    Http,
    Udp,
    Exec,
    /// No check: the backend counts as up.
    None,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Udp => "udp",
            CheckKind::Exec => "exec",
            CheckKind::None => "none",
        }
    }

    /// The kind a kind-specific health-check field belongs to.
    pub fn owning(field: &str) -> Option<CheckKind> {
        match field {
            "path" | "expect_status" | "host" => Some(CheckKind::Http),
            "send" | "expect" => Some(CheckKind::Udp),
            "command" | "args" => Some(CheckKind::Exec),
            _ => None,
        }
    }
}

/// `passive_health` of a VIP; see [`PassiveHealth`].
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "passive_health")]
pub(super) struct PassiveFile {
    /// Default [`DEFAULT_PASSIVE_WINDOW`].
    pub window: Field<Dur>,
    /// Default [`DEFAULT_PASSIVE_MIN_SAMPLES`].
    pub min_samples: Field<Int<1, 1_000_000>>,
    /// Default [`DEFAULT_PASSIVE_RATIO`].
    pub failure_ratio: Field<Ratio>,
}

/// `persistence` of a VIP; see [`Persistence`].
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "persistence")]
pub(super) struct PersistFile {
    /// Default [`DEFAULT_PERSISTENCE_TIMEOUT`].
    pub timeout: Field<Dur>,
    /// Default 32.
    pub prefix_v4: Field<Int<1, 32>>,
    /// Default 128.
    pub prefix_v6: Field<Int<1, 128>>,
}

mod values;
pub(in crate::config) use values::*;
