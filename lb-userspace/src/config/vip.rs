//! The services of a validated pool file: VIPs, their backends, and the
//! settings of each (scheduler, forwarding, persistence, limits, health).
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use crate::health::ProbeSpec;

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
    /// `source_hash`: the bits of an IPv4 client address that pick the
    /// backend, 1..=32 (default 32; 24: a client's /24 goes to one backend).
    pub source_prefix_v4: u8,
    /// The same for IPv6 clients, 1..=128 (default 128; 64 is usual).
    pub source_prefix_v6: u8,
    /// How packets reach the backend. Default [`Forwarding::Encap`].
    pub forwarding: Forwarding,
    /// `state: stateless`: no flow table; connections kept by the
    /// backends (`lb decap` passes a packet of a connection it does not
    /// have on to the slot's previous backend). Default: stateful.
    pub stateless: bool,
    /// `maglev_size`: slots of this VIP's table, a prime at most
    /// `tables.maglev_size` (`None`: that). A small table keeps a stateless
    /// VIP's every packet in cache; a large one spreads flows more evenly.
    pub maglev_size: Option<u32>,
    /// Percent, 0..=100; default 0 (off). When fewer than this share of
    /// the VIP's active backends pass their health checks, the checks are
    /// taken to be wrong (an overloaded network, a probe path that broke)
    /// and new flows go to every active backend, as if all were healthy.
    pub panic_threshold: u32,
    /// `slow_start`: a backend that comes up (added, or recovered) ramps
    /// its weight from near zero to its weight over this time; none by
    /// default.
    pub slow_start: Option<Duration>,
    /// A client keeps its backend across connections (`persistence`);
    /// none by default.
    pub persistence: Option<Persistence>,
    /// Active connections at which a backend takes no new flow, for
    /// backends that do not set their own; none by default.
    pub max_connections: Option<u32>,
    /// `forwarding: nat`: the source addresses and ports of its flows.
    pub nat: Option<Nat>,
    /// Health from live traffic (`passive_health`); none by default.
    pub passive_health: Option<PassiveHealth>,
    /// At least one; addresses unique within the VIP.
    pub backends: Vec<BackendConf>,
}

/// `passive_health`: a backend whose clients retransmit their SYNs (no
/// SYN-ACK came back) at least `failure_ratio` times per new connection
/// over `window`, with at least `min_samples` new connections, is taken out
/// as a failed probe would; after `window`, `rise` passing probes in a row
/// bring it back.
#[derive(Clone, Debug, PartialEq)]
pub struct PassiveHealth {
    pub window: Duration,
    pub min_samples: u32,
    pub failure_ratio: f64,
}

/// `passive_health.window` when not given.
pub const DEFAULT_PASSIVE_WINDOW: Duration = Duration::from_secs(10);
/// `passive_health.min_samples` when not given.
pub const DEFAULT_PASSIVE_MIN_SAMPLES: u32 = 20;
/// `passive_health.failure_ratio` when not given.
pub const DEFAULT_PASSIVE_RATIO: f64 = 0.5;
/// Accepted `passive_health.window` values: the data path's counters are
/// sampled once a second.
pub const PASSIVE_WINDOW_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(2)..=Duration::from_secs(600);

/// One backend of a VIP.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConf {
    /// The backend address; packets keep the VIP port.
    pub address: IpAddr,
    /// Share of new flows, 1..=65535; default 100.
    pub weight: u32,
    /// Default [`BackendState::Active`].
    pub state: BackendState,
    /// Active connections at which it takes no new flow (its own, or the
    /// VIP's); none by default.
    pub max_connections: Option<u32>,
    /// `forwarding: nat`: the port it listens on, when not the VIP's.
    pub port: Option<u16>,
    /// The fully resolved health check (built-in defaults, then
    /// `health_defaults`, then the VIP's `health_check`, then the backend's);
    /// `None` when the resolved kind is `none`.
    pub health: Option<ProbeSpec>,
}

/// `protocol` of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Weighted Maglev consistent hashing of the flow.
    #[default]
    Maglev,
    /// Weighted random (a random slot of the Maglev table).
    Random,
    /// The client's address (prefix) hashed into the Maglev table: every
    /// connection of a client reaches the same backend.
    #[serde(rename = "source_hash")]
    SourceHash,
    /// Smooth weighted round robin (equal weights: plain round robin), in
    /// a sequence the daemon writes and each CPU walks.
    #[serde(rename = "round_robin", alias = "weighted_round_robin")]
    RoundRobin,
    /// Maglev over effective weights that fall as a backend's smoothed
    /// probe round-trip time rises above the fastest one's.
    #[serde(rename = "least_response_time")]
    LeastResponseTime,
    /// Of two backends drawn by weight, the one with fewer active
    /// connections per weight (IPVS `wlc` with two random choices).
    #[serde(rename = "least_connections", alias = "weighted_least_connections")]
    LeastConnections,
    /// Of every backend, the one with the fewest active connections per
    /// weight (at most `lb_common::MAX_EXACT_BACKENDS` backends).
    #[serde(rename = "least_connections_exact")]
    LeastConnectionsExact,
}

impl Scheduler {
    /// The value of `VipInfo::scheduler` (`lb_common::scheduler`).
    pub fn number(self) -> u8 {
        match self {
            Scheduler::Maglev => lb_common::scheduler::MAGLEV,
            Scheduler::Random => lb_common::scheduler::RANDOM,
            Scheduler::SourceHash => lb_common::scheduler::SOURCE_HASH,
            Scheduler::RoundRobin => lb_common::scheduler::ROUND_ROBIN,
            // The data path reads a Maglev table; the daemon sets its weights.
            Scheduler::LeastResponseTime => lb_common::scheduler::MAGLEV,
            Scheduler::LeastConnections => lb_common::scheduler::LEAST_CONN,
            Scheduler::LeastConnectionsExact => lb_common::scheduler::LEAST_CONN_EXACT,
        }
    }

    /// Whether the data path counts the VIP's active connections.
    pub fn counts(self) -> bool {
        matches!(
            self,
            Scheduler::LeastConnections | Scheduler::LeastConnectionsExact
        )
    }
}

/// `forwarding` of a VIP: how packets reach the chosen backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// IPIP / IP6IP6 / IPv4-in-IPv6 encapsulation, direct server return.
    #[default]
    Encap,
    /// Direct server return on one L2 segment: the frame to the backend's
    /// MAC, unchanged otherwise (IPVS "DR").
    #[serde(rename = "dsr_l2")]
    DsrL2,
    /// Full NAT: from one of `snat_addresses` and a port of `snat_ports`
    /// to the backend (and its `port`); the replies come back through the
    /// balancer. Backends need nothing.
    Nat,
    /// The encapsulated packet inside UDP (GUE variant 1), to
    /// `encapsulation.gue_port`; direct server return.
    Gue,
}

impl Forwarding {
    /// The value of `VipInfo::mode` (`lb_common::mode`).
    pub fn number(self) -> u8 {
        match self {
            Forwarding::Encap => lb_common::mode::ENCAP,
            Forwarding::DsrL2 => lb_common::mode::DSR_L2,
            Forwarding::Gue => lb_common::mode::GUE,
            Forwarding::Nat => lb_common::mode::NAT,
        }
    }
}

/// `state` of a VIP: whether the balancer keeps its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VipState {
    /// The flow table keeps each connection's backend.
    #[default]
    Stateful,
    /// No flow table: every packet is hashed to its Maglev slot, and the
    /// backends keep the connections (see `Vip::stateless`).
    Stateless,
}

/// `state` of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Receives new flows while healthy.
    #[default]
    Active,
    /// Keeps its established flows, receives no new ones.
    Drain,
    /// Receives nothing; its flows are moved to other backends.
    Disabled,
}

/// `persistence`: a client (its address cut to `prefix_v4` / `prefix_v6`
/// bits) keeps its backend for `timeout` after its last new connection,
/// whatever the scheduler says and also when the Maglev table changes;
/// it ends when that backend goes down, is drained or disabled, or is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    pub timeout: Duration,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

/// `persistence.timeout` when not given (IPVS's default).
pub const DEFAULT_PERSISTENCE_TIMEOUT: Duration = Duration::from_secs(300);
/// Accepted `persistence.timeout` values.
pub const PERSISTENCE_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(86_400);
/// Accepted `max_connections` values.
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<u32> = 1..=100_000_000;

/// `forwarding: nat`: the balancer's addresses its flows come from (at
/// most `lb_common::NAT_ADDRS_PER_FAMILY` of each family) and the ports
/// allocated on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    pub addresses: Vec<IpAddr>,
    pub ports: (u16, u16),
}
