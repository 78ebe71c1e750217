//! The pool file's values with a syntax of their own: ranged integers,
//! ratios, durations, prefixes, MACs, addresses, names and paths, each
//! checked where it is read, with the message a user sees.
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::super::de::FIELD;
use super::super::*;

/// An address and port to listen on.
#[derive(Clone, Debug)]
pub(in crate::config) struct ListenAddr(pub SocketAddr);

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

/// An unquoted decimal integer in `LO..=HI`.
#[derive(Clone, Copy, Debug)]
pub(in crate::config) struct Int<const LO: u32, const HI: u32>(pub u32);

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
pub(in crate::config) struct Ratio(pub f64);

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

/// `tables.maglev_size`: a prime in [`MAGLEV_SIZE_RANGE`].
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(try_from = "MaglevRange")]
pub(in crate::config) struct MaglevSize(pub u32);

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
        pub(in crate::config) struct $name(pub $inner);

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

/// A range of ports, `LOW-HIGH` (1..=65535, LOW at most HIGH).
#[derive(Clone, Copy, Debug)]
pub(in crate::config) struct PortRange(pub u16, pub u16);

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{text}` is not a port range; write {FIELD} as `LOW-HIGH`, e.g. `10000-32767`")
        };
        let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
        let (lo, hi): (u16, u16) = (
            lo.trim().parse().map_err(|_| bad())?,
            hi.trim().parse().map_err(|_| bad())?,
        );
        if lo == 0 || lo > hi {
            return Err(format!(
                "{FIELD} `{text}` is empty or starts at 0; give ports from 1, the low one first"
            ));
        }
        Ok(PortRange(lo, hi))
    }
}

from_text! {
    PortRange: "a port range such as `10000-32767`",
    Dur: "a duration such as `200ms` or `2s`",
    Prefix4: "an IPv4 prefix such as `10.255.0.0/24`",
    Prefix6: "an IPv6 prefix such as `fd00:255::/112`",
    Mac: "a MAC address such as `02:00:00:00:00:01`",
    VipAddr: "an IP address",
    BackendAddr: "an IP address",
}

/// A humantime duration (`200ms`, `2s`, `1m 30s`), longer than zero.
#[derive(Clone, Copy, Debug)]
pub(in crate::config) struct Dur(pub Duration);

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
pub(in crate::config) struct Prefix4(pub Ipv4Addr, pub u8);

/// An outer IPv6 source: `network/length` (112..=128, host bits zero).
#[derive(Clone, Copy, Debug)]
pub(in crate::config) struct Prefix6(pub Ipv6Addr, pub u8);

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
pub(in crate::config) struct Mac(pub [u8; 6]);

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
pub(in crate::config) struct Addr<const VIP: bool>(pub IpAddr);
pub(in crate::config) type VipAddr = Addr<true>;
pub(in crate::config) type BackendAddr = Addr<false>;

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
