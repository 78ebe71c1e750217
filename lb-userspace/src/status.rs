//! What `lb status` shows: the snapshot the daemon sends over its control
//! socket, and its rendering as tables.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which backends a status answer lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every backend while there are at most `LIST_LIMIT`, else none
    /// (each VIP then has its counts).
    Default,
    /// Every VIP's counts, no backend.
    Summary,
    /// Every backend, at any size.
    All,
    /// One VIP, with every backend of it.
    Vip(String),
}

/// Above this many backend rows, a plain `lb status` gives each VIP's
/// counts instead of its backends: a table of 512 000 rows is no
/// overview, and costs the daemon a second to build.
pub const LIST_LIMIT: usize = 4096;

impl Scope {
    /// The control-socket request that asks for this scope.
    pub fn request(&self) -> String {
        match self {
            Scope::Default => "status".into(),
            Scope::Summary => "status summary".into(),
            Scope::All => "status all".into(),
            Scope::Vip(name) => format!("status vip {name}"),
        }
    }

    /// The scope a request line asks for (`None`: not a status request).
    pub fn parse(request: &str) -> Option<Scope> {
        let rest = request.strip_prefix("status")?;
        if rest.is_empty() {
            return Some(Scope::Default);
        }
        match rest.strip_prefix(' ')?.trim() {
            "summary" => Some(Scope::Summary),
            "all" => Some(Scope::All),
            r => r
                .strip_prefix("vip ")
                .map(|n| Scope::Vip(n.trim().to_string())),
        }
    }

    /// Whether VIP `name` is in the answer, and whether with its backends,
    /// when the pool has `rows` backend rows in all.
    pub fn shows(&self, name: &str, rows: usize) -> (bool, bool) {
        match self {
            Scope::Default => (true, rows <= LIST_LIMIT),
            Scope::Summary => (true, false),
            Scope::All => (true, true),
            Scope::Vip(n) => (n == name, n == name),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub config: String,
    pub uptime_s: u64,
    /// Age of the per-backend flow counts (counted in the background); None until the first count.
    pub flows_age_s: Option<u64>,
    /// The flow table, as last counted.
    #[serde(default)]
    pub flow_table: Option<FlowTableStatus>,
    pub vips: Vec<VipStatus>,
    /// Data-path counters by name (non-zero ones).
    pub counters: BTreeMap<String, u64>,
}

/// The flow table as the daemon's census found it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowTableStatus {
    /// Flows held (any age).
    pub held: u64,
    /// Entries in use: the table grows as flows are held, up to `entries`.
    pub in_use: u64,
    /// Entries made (twice `tables.flow_table_size`).
    pub entries: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VipStatus {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    /// "up" while at least one backend takes new flows, else "down" (packets are dropped and counted);
    /// "panic" while too few pass their checks and every active backend takes new flows.
    pub state: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub new_flows_per_s: f64,
    pub drops: u64,
    /// Its backends counted by state and health (every one, listed or not).
    #[serde(default)]
    pub counts: BackendCounts,
    /// Whether `backends` lists them (see `Scope`).
    #[serde(default = "yes")]
    pub listed: bool,
    pub backends: Vec<BackendStatus>,
    /// Slots of the Maglev table in force (`maglev_size`; 0: none written yet).
    #[serde(default)]
    pub table_slots: u32,
}

fn yes() -> bool {
    true
}

/// A VIP's backends counted: how many, how many up and down (by their
/// checks), drained, disabled and removed, and their active flows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BackendCounts {
    pub backends: u64,
    pub up: u64,
    pub down: u64,
    pub unchecked: u64,
    pub drain: u64,
    pub disabled: u64,
    pub removed: u64,
    pub active_flows: u64,
    /// The backends' weights from the pool file, summed.
    #[serde(default)]
    pub weight: u64,
}

impl BackendCounts {
    /// "998 up, 2 down, 1 drain": the non-zero counts.
    fn health(&self) -> String {
        let parts: Vec<String> = [
            (self.up, "up"),
            (self.down, "down"),
            (self.unchecked, "unchecked"),
            (self.drain, "drain"),
            (self.disabled, "disabled"),
            (self.removed, "removed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        parts.join(", ")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub address: String,
    pub weight: u32,
    /// active / drain / disabled, from the pool file; `removed` for a
    /// backend taken out of the file whose connections still run (its slot
    /// is kept for them).
    pub state: String,
    /// up / down / unchecked.
    pub health: String,
    pub last_probe: Option<String>,
    pub latency_ms: Option<f64>,
    pub active_flows: u64,
    /// Active connections as the data path counts them, on VIPs that count
    /// them (least connections, `max_connections`).
    #[serde(default)]
    pub connections: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// SYNs its clients sent again (no SYN-ACK came back): passive health.
    #[serde(default)]
    pub syn_retransmits: u64,
    /// NAT: smoothed time from a client's SYN to its SYN-ACK, in ms.
    #[serde(default)]
    pub handshake_ms: Option<f64>,
    /// NAT: SYNs it answered with a RST.
    #[serde(default)]
    pub refused: u64,
    pub new_flows_per_s: f64,
}

/// Renders the snapshot as tables for a terminal.
pub fn render(s: &Status) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let flows = match (s.flows_age_s, s.flow_table) {
        (Some(a), Some(t)) => format!(
            "flows counted {a}s ago: {} held, {} of {} table entries in use",
            t.held, t.in_use, t.entries
        ),
        (Some(a), None) => format!("flows counted {a}s ago"),
        (None, _) => "flows not counted yet".into(),
    };
    let mut out = format!(
        "instance {}  (config {}, up {}s, {flows})\n",
        s.instance, s.config, s.uptime_s
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "VIP",
        "backend",
        "weight",
        "state",
        "health",
        "last probe",
        "flows",
        "packets",
        "bytes",
        "new/s",
        "drops",
    ]);
    for v in &s.vips {
        let addr = if v.address.contains(':') {
            format!("[{}]", v.address)
        } else {
            v.address.clone()
        };
        t.add_row(vec![
            format!("{} {}:{}/{}", v.name, addr, v.port, v.protocol),
            String::new(),
            String::new(),
            v.state.to_uppercase(),
            String::new(),
            String::new(),
            String::new(),
            v.packets.to_string(),
            v.bytes.to_string(),
            format!("{:.1}", v.new_flows_per_s),
            v.drops.to_string(),
        ]);
        if !v.listed {
            let c = &v.counts;
            t.add_row(vec![
                String::new(),
                format!("{} backends", c.backends),
                c.weight.to_string(),
                String::new(),
                c.health(),
                String::new(),
                c.active_flows.to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for b in &v.backends {
            let mut probe = match (&b.last_probe, b.latency_ms) {
                (Some(d), Some(ms)) => format!("{d} ({ms:.1} ms)"),
                (Some(d), None) => d.clone(),
                _ => "-".into(),
            };
            if let Some(ms) = b.handshake_ms {
                probe.push_str(&format!("; handshake {ms:.2} ms"));
            }
            if b.refused > 0 {
                probe.push_str(&format!("; {} refused", b.refused));
            }
            t.add_row(vec![
                String::new(),
                b.address.clone(),
                b.weight.to_string(),
                b.state.clone(),
                b.health.clone(),
                probe,
                match b.connections {
                    Some(c) => format!("{} ({c} conns)", b.active_flows),
                    None => b.active_flows.to_string(),
                },
                b.packets.to_string(),
                b.bytes.to_string(),
                format!("{:.1}", b.new_flows_per_s),
                String::new(),
            ]);
        }
    }
    out.push_str(&t.to_string());
    out.push('\n');
    let hidden: u64 = s
        .vips
        .iter()
        .filter(|v| !v.listed)
        .map(|v| v.counts.backends + v.counts.removed)
        .sum();
    if hidden > 0 {
        out.push_str(&format!(
            "{hidden} backends not listed: `lb status --vip NAME` lists one VIP's, `--all` every one\n"
        ));
    }
    if !s.counters.is_empty() {
        let c: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("counters: {}\n", c.join(" ")));
    }
    out
}

#[cfg(test)]
impl VipStatus {
    /// A test VIP 10.0.0.1:80/tcp, up, no traffic, its backends counted
    /// and not listed.
    pub(crate) fn unlisted(name: &str, counts: BackendCounts) -> Self {
        VipStatus {
            name: name.into(),
            address: "10.0.0.1".into(),
            port: 80,
            protocol: "tcp".into(),
            state: "up".into(),
            packets: 0,
            bytes: 0,
            new_flows: 0,
            new_flows_per_s: 0.0,
            drops: 0,
            counts,
            listed: false,
            backends: vec![],
            table_slots: 65537,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_goes_over_the_socket_and_back() {
        for s in [
            Scope::Default,
            Scope::Summary,
            Scope::All,
            Scope::Vip("web".into()),
        ] {
            assert_eq!(Scope::parse(&s.request()), Some(s.clone()), "{s:?}");
        }
        for other in ["stop", "statusall", "status vip", "status everything"] {
            assert_eq!(Scope::parse(other), None, "{other}");
        }
    }

    #[test]
    fn backends_are_listed_up_to_the_limit_unless_asked() {
        assert_eq!(Scope::Default.shows("web", LIST_LIMIT), (true, true));
        assert_eq!(Scope::Default.shows("web", LIST_LIMIT + 1), (true, false));
        assert_eq!(Scope::Summary.shows("web", 1), (true, false));
        assert_eq!(Scope::All.shows("web", 1 << 20), (true, true));
        let one = Scope::Vip("web".into());
        assert_eq!(one.shows("web", 1 << 20), (true, true));
        assert_eq!(one.shows("dns", 1), (false, false));
    }

    #[test]
    fn a_vip_not_listed_shows_its_counts_and_says_how_to_list_them() {
        let s = Status {
            instance: "lb0".into(),
            config: "pool.yaml".into(),
            uptime_s: 1,
            flows_age_s: Some(2),
            flow_table: Some(FlowTableStatus {
                held: 9000,
                in_use: 65_536,
                entries: 131_072,
            }),
            vips: vec![VipStatus::unlisted(
                "web",
                BackendCounts {
                    backends: 1000,
                    up: 997,
                    down: 2,
                    unchecked: 1,
                    drain: 3,
                    removed: 4,
                    active_flows: 12345,
                    weight: 100_000,
                    ..Default::default()
                },
            )],
            counters: BTreeMap::new(),
        };
        let text = render(&s);
        assert!(
            text.contains("flows counted 2s ago: 9000 held, 65536 of 131072 table entries in use"),
            "{text}"
        );
        assert!(text.contains("1000 backends"), "{text}");
        assert!(
            text.contains("997 up, 2 down, 1 unchecked, 3 drain, 4 removed"),
            "{text}"
        );
        assert!(text.contains("12345") && text.contains("100000"), "{text}");
        assert!(
            text.contains("1004 backends not listed: `lb status --vip NAME`"),
            "{text}"
        );
        let listed = Status {
            vips: vec![VipStatus {
                listed: true,
                ..s.vips[0].clone()
            }],
            ..s
        };
        assert!(!render(&listed).contains("not listed"));
    }
}
