//! The pool file as serde types: one struct per mapping, each field with its
//! meaning and default, and `FromStr` newtypes for values with a syntax of
//! their own. Each field is a [`Field`], so that one bad value does not hide
//! the others; rules that involve several fields are in `check`.
//!
//! A struct's serde name (`rename`) is how messages call it ("unknown field
//! `adress` in a VIP"). In messages, `{field}` stands for the field's name
//! (see [`FIELD`]).
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::de::{Field, FIELD};
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

/// An address and port to listen on.
#[derive(Clone, Debug)]
pub(super) struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(t: &str) -> Result<Self, String> {
        t.parse().map(ListenAddr).map_err(|_| {
            format!(
                "`{t}` is not an address and port; write e.g. \"127.0.0.1:9477\" or \"[::1]:9477\""
            )
        })
    }
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
}

/// `tables`; see [`Tables`].
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename = "tables")]
pub(super) struct TablesFile {
    /// Default [`DEFAULT_MAGLEV_SIZE`].
    pub maglev_size: Field<MaglevSize>,
    /// Default [`DEFAULT_FLOW_TABLE_SIZE`].
    pub flow_table_size: Field<ranged!(FLOW_TABLE_SIZE_RANGE)>,
    /// Default [`DEFAULT_UDP_IDLE_TIMEOUT`].
    pub udp_idle_timeout: Field<Dur>,
    /// Default [`DEFAULT_NEW_FLOWS_PER_CPU`]; 0: no limit.
    pub new_flows_per_cpu: Field<ranged!(NEW_FLOWS_PER_CPU_RANGE)>,
    /// Default [`DEFAULT_MAX_VIPS`]; 2 × max_vips × maglev_size / 4 Maglev
    /// elements must fit one BPF array.
    pub max_vips: Field<ranged!(MAX_VIPS_RANGE)>,
    /// Default [`DEFAULT_MAX_BACKENDS`]: backend slots, one per VIP and backend.
    pub max_backends: Field<ranged!(MAX_BACKENDS_RANGE)>,
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
    /// Percent; default 0 (off).
    pub panic_threshold: Field<Int<0, 100>>,
    /// Default: off.
    pub passive_health: Field<PassiveFile>,
    /// Default: none.
    pub slow_start: Field<Dur>,
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

/// An unquoted decimal integer in `LO..=HI`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Int<const LO: u32, const HI: u32>(pub u32);

impl<'de, const LO: u32, const HI: u32> Deserialize<'de> for Int<LO, HI> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IntVisitor<const LO: u32, const HI: u32>;
        impl<const LO: u32, const HI: u32> IntVisitor<LO, HI> {
            fn out_of_range<E: de::Error>(v: impl fmt::Display) -> E {
                E::custom(format!(
                    "{FIELD} `{v}` is out of range; it must be from {LO} to {HI}"
                ))
            }
        }
        impl<const LO: u32, const HI: u32> Visitor<'_> for IntVisitor<LO, HI> {
            type Value = Int<LO, HI>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an integer from {LO} to {HI}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match u32::try_from(v) {
                    Ok(n) if (LO..=HI).contains(&n) => Ok(Int(n)),
                    _ => Err(Self::out_of_range(v)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(Self::out_of_range(v))
            }
        }
        d.deserialize_u32(IntVisitor::<LO, HI>)
    }
}

/// A number greater than 0 and at most 1 (`0.5`, `1`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Ratio(pub f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RatioVisitor;
        impl Visitor<'_> for RatioVisitor {
            type Value = Ratio;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number above 0 and at most 1, e.g. 0.5")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ratio, E> {
                if v > 0.0 && v <= 1.0 {
                    Ok(Ratio(v))
                } else {
                    Err(E::custom(format!(
                        "{FIELD} `{v}` is out of range; it must be above 0 and at most 1 (0.5: half)"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ratio, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ratio, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ratio, E> {
                match v.trim().parse::<f64>() {
                    Ok(n) if n.is_finite() => self.visit_f64(n),
                    _ => Err(E::custom(format!(
                        "{FIELD} `{v}` is not a number; write a ratio above 0 and at most 1, e.g. 0.5"
                    ))),
                }
            }
        }
        d.deserialize_f64(RatioVisitor)
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

/// `tables.maglev_size`: a prime in [`MAGLEV_SIZE_RANGE`].
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(try_from = "MaglevRange")]
pub(super) struct MaglevSize(pub u32);

type MaglevRange = ranged!(MAGLEV_SIZE_RANGE);

impl TryFrom<MaglevRange> for MaglevSize {
    type Error = String;

    fn try_from(Int(size): MaglevRange) -> Result<Self, String> {
        if is_prime(size.into()) {
            return Ok(MaglevSize(size));
        }
        let (lo, hi) = (*MAGLEV_SIZE_RANGE.start(), *MAGLEV_SIZE_RANGE.end());
        let below = (lo..size).rev().find(|&c| is_prime(c.into()));
        let above = (size..=hi).find(|&c| is_prime(c.into()));
        let near: Vec<String> = [below, above]
            .iter()
            .flatten()
            .map(|c| format!("`{c}`"))
            .collect();
        Err(format!(
            "{FIELD} `{size}` is not a prime; Maglev needs a prime table size (nearest primes: {})",
            near.join(" or ")
        ))
    }
}

/// Implements `Deserialize` through `FromStr` for scalar newtypes; the text
/// says what is expected when something else is found.
macro_rules! from_text {
    ($($ty:ty: $expecting:literal,)*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(TextVisitor::<$ty>($expecting, PhantomData))
            }
        }
    )*};
}

struct TextVisitor<T>(&'static str, PhantomData<T>);

impl<T: FromStr<Err = String>> Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }
}

/// Text newtypes: `Name(Inner): "what is expected", |text| problem`, where
/// `problem` is `Some(message)` when the text is not valid.
macro_rules! text_types {
    ($($(#[$doc:meta])* $name:ident($inner:ty): $expecting:literal,
       |$text:ident| $problem:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub(super) struct $name(pub $inner);

        impl FromStr for $name {
            type Err = String;
            fn from_str($text: &str) -> Result<Self, String> {
                match $problem {
                    Some(problem) => Err(problem),
                    None => Ok($name($text.into())),
                }
            }
        }

        from_text!($name: $expecting,);
    )*};
}

text_types! {
    /// `instance`: 1 to [`MAX_INSTANCE_LEN`] characters from `a-z`, `0-9`, `_`, `-`;
    /// it names `/sys/fs/bpf/<instance>/` and the default socket and secret.
    InstanceName(String): "an instance name", |t| bad_name(t, MAX_INSTANCE_LEN, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b)
    }).then(|| format!("`{t}` is not a valid instance name; use 1 to {MAX_INSTANCE_LEN} \
        characters from a-z, 0-9, `_` and `-` (it names /sys/fs/bpf/<instance>/)"));

    /// An interface name: 1 to [`MAX_IFNAME_LEN`] bytes, no `/` or spaces.
    IfName(String): "an interface name", |t| (t == "." || t == ".." || bad_name(t, MAX_IFNAME_LEN,
        |b| !(b == b'/' || b.is_ascii_whitespace() || b.is_ascii_control())))
        .then(|| format!("`{t}` is not a valid interface name; names have 1 to {MAX_IFNAME_LEN} \
            characters without `/` or spaces (`ip link` shows them)"));

    /// A VIP's `name`: 1 to [`MAX_VIP_NAME_LEN`] characters from `A-Z`, `a-z`,
    /// `0-9`, `_`, `.`, `-`.
    VipName(String): "a VIP name", |t| bad_name(t, MAX_VIP_NAME_LEN, |b| {
        b.is_ascii_alphanumeric() || b"_.-".contains(&b)
    }).then(|| format!("`{t}` is not a valid VIP name; use 1 to {MAX_VIP_NAME_LEN} characters \
        from A-Z, a-z, 0-9, `_`, `.` and `-`"));

    /// An absolute path.
    AbsPath(PathBuf): "an absolute path", |t| not_absolute(t);

    /// The control socket: an absolute path of at most [`MAX_SOCKET_PATH_LEN`] bytes.
    SocketPath(PathBuf): "an absolute path", |t| not_absolute(t).or_else(|| {
        (t.len() > MAX_SOCKET_PATH_LEN).then(|| format!("{FIELD} is {} bytes long, more than a \
            Unix socket path may be ({MAX_SOCKET_PATH_LEN}); choose a shorter path", t.len()))
    });

    /// An HTTP health-check path: starts with `/`, no spaces.
    HttpPath(String): "an HTTP path such as `/healthz`", |t| {
        (!t.starts_with('/') || t.bytes().any(|b| b.is_ascii_whitespace())).then(|| format!(
            "`{t}` is not an HTTP path; it starts with `/` and has no spaces, e.g. `/healthz`"))
    };

    /// An HTTP health-check Host header: no spaces or control characters.
    HostName(String): "a host name for the Host header", |t| {
        t.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            .then(|| format!("`{t}` is not a host name; remove the spaces"))
    };
}

/// Whether `name` is empty, longer than `max` or has a byte that is not `ok`.
fn bad_name(name: &str, max: usize, ok: fn(u8) -> bool) -> bool {
    name.is_empty() || name.len() > max || !name.bytes().all(ok)
}

fn not_absolute(text: &str) -> Option<String> {
    let message = format!("{FIELD} `{text}` is not an absolute path; write it from `/`");
    (!text.starts_with('/')).then_some(message)
}

from_text! {
    Dur: "a duration such as `200ms` or `2s`",
    Prefix4: "an IPv4 prefix such as `10.255.0.0/24`",
    Prefix6: "an IPv6 prefix such as `fd00:255::/112`",
    Mac: "a MAC address such as `02:00:00:00:00:01`",
    VipAddr: "an IP address",
    BackendAddr: "an IP address",
}

/// A humantime duration (`200ms`, `2s`, `1m 30s`), longer than zero.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                Err(format!("{FIELD} must be longer than zero, found `{text}`"))
            }
            Ok(d) => Ok(Dur(d)),
            Err(e) => Err(format!(
                "`{text}` is not a duration ({e}); write {FIELD} like `200ms`, `2s` or `1m 30s`"
            )),
        }
    }
}

/// An outer IPv4 source: `network/length` (16..=32, host bits zero) or a
/// bare address (a /32).
#[derive(Clone, Copy, Debug)]
pub(super) struct Prefix4(pub Ipv4Addr, pub u8);

/// An outer IPv6 source: `network/length` (112..=128, host bits zero).
#[derive(Clone, Copy, Debug)]
pub(super) struct Prefix6(pub Ipv6Addr, pub u8);

impl FromStr for Prefix4 {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match prefix(text, false)? {
            (IpAddr::V4(a), len) => Ok(Prefix4(a, len)),
            _ => unreachable!("prefix checks the family"),
        }
    }
}

impl FromStr for Prefix6 {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match prefix(text, true)? {
            (IpAddr::V6(a), len) => Ok(Prefix6(a, len)),
            _ => unreachable!("prefix checks the family"),
        }
    }
}

fn prefix(text: &str, v6: bool) -> Result<(IpAddr, u8), String> {
    let (family, min, max, example, other) = if v6 {
        (
            "IPv6",
            SOURCE_V6_MIN_PREFIX,
            128,
            "fd00:255::/112",
            "source_v4",
        )
    } else {
        (
            "IPv4",
            SOURCE_V4_MIN_PREFIX,
            32,
            "10.255.0.0/24",
            "source_v6",
        )
    };
    let (addr_text, len_text) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| format!("`{text}` is not an {family} prefix; write it like `{example}`"))?;
    if addr.is_ipv6() != v6 {
        return Err(format!(
            "`{text}` is not an {family} prefix; {FIELD} takes {family} \
             (did you mean to put it under `{other}`?)"
        ));
    }
    let len = match len_text.map(str::parse::<u8>) {
        None => max,
        Some(Ok(l)) if l <= max => l,
        Some(_) => {
            return Err(format!(
                "`{text}` has an invalid prefix length; it must be {min} to {max}"
            ))
        }
    };
    if len < min {
        return Err(format!(
            "prefix length /{len} of `{text}` is too short; {FIELD} needs /{min} to /{max} \
             (at most {} host bits vary per flow)",
            max - min
        ));
    }
    let addr = usable(
        addr,
        "an outer source address; use a unicast address the backends can route back",
    )?;
    let network = mask(addr, len);
    if network != addr {
        return Err(format!(
            "`{text}` has host bits set (they are chosen per flow); write the network \
             `{network}/{len}`"
        ));
    }
    Ok((addr, len))
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

/// A next-hop MAC: six hex octets separated by `:` or `-`, unicast.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let octets: Vec<&str> = text.split([':', '-']).collect();
        let mut mac = [0u8; 6];
        let parsed = octets.len() == 6
            && octets
                .iter()
                .zip(mac.iter_mut())
                .all(|(o, b)| o.len() == 2 && u8::from_str_radix(o, 16).map(|v| *b = v).is_ok());
        if !parsed {
            return Err(format!(
                "`{text}` is not a MAC address; write six hex octets like `02:00:00:00:00:01`"
            ));
        }
        if mac == [0; 6] || mac[0] & 1 == 1 {
            let kind = if mac == [0; 6] {
                "the all-zero"
            } else {
                "a multicast (or broadcast)"
            };
            return Err(format!(
                "`{text}` is {kind} MAC address; the next hop needs its unicast MAC \
                 (`ip neigh` shows it)"
            ));
        }
        Ok(Mac(mac))
    }
}

/// A VIP's (`VIP`) or a backend's address: IPv4 or IPv6, unicast, not
/// loopback.
#[derive(Clone, Copy, Debug)]
pub(super) struct Addr<const VIP: bool>(pub IpAddr);
pub(super) type VipAddr = Addr<true>;
pub(super) type BackendAddr = Addr<false>;

impl<const VIP: bool> FromStr for Addr<VIP> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let role = match VIP {
            true => "a VIP; use a unicast address routed to this balancer",
            false => "a backend; use the backend's unicast address",
        };
        Ok(Addr(usable(ip(text)?, role)?))
    }
}

fn ip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| {
        let hint = if text.contains('/') {
            "; write the address alone, without a prefix length"
        } else if text.parse::<SocketAddr>().is_ok() {
            "; write the address alone: no port (packets keep the VIP port)"
        } else {
            ""
        };
        format!("`{text}` is not an IP address{hint}")
    })
}

/// `addr`, unless it cannot be `role` (a VIP, a backend, an outer source).
fn usable(addr: IpAddr, role: &str) -> Result<IpAddr, String> {
    let what = match addr {
        IpAddr::V4(a) if a.is_unspecified() => "the unspecified address",
        IpAddr::V4(a) if a.is_broadcast() => "the broadcast address",
        IpAddr::V4(a) if a.is_multicast() => "a multicast address",
        IpAddr::V4(a) if a.is_loopback() => "a loopback address",
        IpAddr::V6(a) if a.is_unspecified() => "the unspecified address",
        IpAddr::V6(a) if a.is_multicast() => "a multicast address",
        IpAddr::V6(a) if a.is_loopback() => "the loopback address",
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            "an IPv4-mapped IPv6 address (write the IPv4 address instead)"
        }
        _ => return Ok(addr),
    };
    Err(format!("`{addr}` is {what} and cannot be {role}"))
}

from_text!(ListenAddr: "an address and port",);
