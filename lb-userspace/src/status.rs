//! What `lb status` shows: the snapshot the daemon sends over its control
//! socket, and its rendering as tables.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub config: String,
    pub uptime_s: u64,
    /// Age of the per-backend flow counts (counted in the background); None until the first count.
    pub flows_age_s: Option<u64>,
    pub vips: Vec<VipStatus>,
    /// Data-path counters by name (non-zero ones).
    pub counters: BTreeMap<String, u64>,
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
    pub backends: Vec<BackendStatus>,
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
    let flows = match s.flows_age_s {
        Some(a) => format!("flows counted {a}s ago"),
        None => "flows not counted yet".into(),
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
    if !s.counters.is_empty() {
        let c: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("counters: {}\n", c.join(" ")));
    }
    out
}
