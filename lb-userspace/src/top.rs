//! `lb top`: a live view of a running daemon through its control socket,
//! refreshed every second. Per VIP and per backend: packets and bits a
//! second, new flows a second, active flows, health and state, in 80
//! columns. Keys: `p` packets, `b` bits, `n` new flows, `a` active flows,
//! `o` file order; `q` quits.
use crate::status::{BackendStatus, Status, VipStatus};

/// The column rows are sorted by (descending), or the pool file's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    #[default]
    File,
    Packets,
    Bits,
    NewFlows,
    Active,
}

impl SortBy {
    /// The sort a key selects.
    pub fn from_key(c: char) -> Option<SortBy> {
        Some(match c {
            'o' => SortBy::File,
            'p' => SortBy::Packets,
            'b' => SortBy::Bits,
            'n' => SortBy::NewFlows,
            'a' => SortBy::Active,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SortBy::File => "file order",
            SortBy::Packets => "packets/s",
            SortBy::Bits => "bits/s",
            SortBy::NewFlows => "new flows/s",
            SortBy::Active => "active flows",
        }
    }
}

/// Width of every line `frame` draws.
pub const WIDTH: usize = 80;

/// One row's rates between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub pps: f64,
    pub bps: f64,
    pub nfps: f64,
}

fn rates(now: (u64, u64, u64), before: Option<(u64, u64, u64)>, secs: f64) -> Rates {
    let Some(b) = before.filter(|_| secs > 0.0) else {
        return Rates::default();
    };
    let d = |n: u64, o: u64| n.saturating_sub(o) as f64 / secs;
    Rates {
        pps: d(now.0, b.0),
        bps: d(now.1, b.1) * 8.0,
        nfps: d(now.2, b.2),
    }
}

fn vip_counts(v: &VipStatus) -> (u64, u64, u64) {
    (v.packets, v.bytes, v.new_flows)
}

fn backend_counts(b: &BackendStatus) -> (u64, u64, u64) {
    (b.packets, b.bytes, b.new_flows)
}

/// 1234 -> "1.2k", in at most 6 characters.
pub fn si(v: f64) -> String {
    let (v, unit) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    if unit.is_empty() {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// Cuts `s` to `n` characters.
fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// The lines of one frame: `cur` against `prev` taken `secs` earlier.
pub fn frame(cur: &Status, prev: Option<&Status>, secs: f64, sort: SortBy) -> Vec<String> {
    let mut lines = vec![
        fit(
            &format!(
                "lb top  {}  up {}s  flows counted {}  sort: {}",
                cur.instance,
                cur.uptime_s,
                cur.flows_age_s
                    .map_or("not yet".into(), |a| format!("{a}s ago")),
                sort.name()
            ),
            WIDTH,
        ),
        fit(
            "keys: p b n a sort (packets, bits, new flows, active)  o file order  q quit",
            WIDTH,
        ),
        format!(
            "{:<30} {:<9} {:>7} {:>7} {:>7} {:>8} {:>6}",
            "VIP / backend", "state", "pkt/s", "bit/s", "new/s", "active", "weight"
        ),
    ];
    let prev_vip = |name: &str| prev.and_then(|p| p.vips.iter().find(|v| v.name == name));
    let key = |r: &Rates, active: u64| -> f64 {
        match sort {
            SortBy::File => 0.0,
            SortBy::Packets => r.pps,
            SortBy::Bits => r.bps,
            SortBy::NewFlows => r.nfps,
            SortBy::Active => active as f64,
        }
    };
    let mut vips: Vec<(&VipStatus, Rates, u64)> = cur
        .vips
        .iter()
        .map(|v| {
            let r = rates(vip_counts(v), prev_vip(&v.name).map(vip_counts), secs);
            let active = match v.listed {
                true => v.backends.iter().map(|b| b.active_flows).sum(),
                false => v.counts.active_flows,
            };
            (v, r, active)
        })
        .collect();
    if sort != SortBy::File {
        vips.sort_by(|a, b| key(&b.1, b.2).total_cmp(&key(&a.1, a.2)));
    }
    for (v, r, active) in vips {
        let name = format!("{} {}:{}/{}", v.name, v.address, v.port, v.protocol);
        lines.push(format!(
            "{:<30} {:<9} {:>7} {:>7} {:>7} {:>8} {:>6}",
            fit(&name, 30),
            fit(&v.state.to_uppercase(), 9),
            si(r.pps),
            si(r.bps),
            si(r.nfps),
            si(active as f64),
            ""
        ));
        let before = prev_vip(&v.name);
        let mut backends: Vec<(&BackendStatus, Rates)> = v
            .backends
            .iter()
            .map(|b| {
                let old = before
                    .and_then(|p| p.backends.iter().find(|o| o.address == b.address))
                    .map(backend_counts);
                (b, rates(backend_counts(b), old, secs))
            })
            .collect();
        if sort != SortBy::File {
            backends.sort_by(|a, b| {
                key(&b.1, b.0.active_flows).total_cmp(&key(&a.1, a.0.active_flows))
            });
        }
        if !v.listed {
            // Above the listing limit: the counts, as `lb status` gives them.
            let c = &v.counts;
            lines.push(format!(
                "  {:<28} {:<9} {:>7} {:>7} {:>7} {:>8} {:>6}",
                fit(&format!("{} backends, not listed", c.backends), 28),
                fit(&format!("{} down", si(c.down as f64)), 9),
                "",
                "",
                "",
                si(c.active_flows as f64),
                si(c.weight as f64)
            ));
        }
        for (b, r) in backends {
            let state = match (b.state.as_str(), b.health.as_str()) {
                ("active", h) => h.to_string(),
                (s, "-") => s.to_string(),
                (s, h) => format!("{s},{h}"),
            };
            lines.push(format!(
                "  {:<28} {:<9} {:>7} {:>7} {:>7} {:>8} {:>6}",
                fit(&b.address, 28),
                fit(&state, 9),
                si(r.pps),
                si(r.bps),
                si(r.nfps),
                si(b.active_flows as f64),
                b.weight
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(addr: &str, packets: u64, bytes: u64, new_flows: u64) -> BackendStatus {
        BackendStatus {
            address: addr.into(),
            weight: 100,
            state: "active".into(),
            health: "up".into(),
            last_probe: None,
            latency_ms: None,
            active_flows: new_flows,
            connections: None,
            handshake_ms: None,
            refused: 0,
            packets,
            bytes,
            new_flows,
            syn_retransmits: 0,
            new_flows_per_s: 0.0,
        }
    }

    fn status(scale: u64) -> Status {
        let vip = |name: &str, addr: &str, b: Vec<BackendStatus>| VipStatus {
            name: name.into(),
            address: addr.into(),
            port: 80,
            protocol: "tcp".into(),
            state: "up".into(),
            packets: b.iter().map(|b| b.packets).sum(),
            bytes: b.iter().map(|b| b.bytes).sum(),
            new_flows: b.iter().map(|b| b.new_flows).sum(),
            new_flows_per_s: 0.0,
            drops: 0,
            counts: Default::default(),
            listed: true,
            backends: b,
            table_slots: 65537,
        };
        Status {
            instance: "lb0".into(),
            config: "/etc/lb/pool.yaml".into(),
            uptime_s: 10,
            flows_age_s: Some(1),
            flow_table: None,
            vips: vec![
                vip(
                    "a-very-long-vip-name-that-does-not-fit",
                    "fd00:100::1234:5678:9abc",
                    vec![backend(
                        "fd00:1::1234:5678:9abc:def0",
                        10 * scale,
                        1000 * scale,
                        scale,
                    )],
                ),
                vip(
                    "web",
                    "10.100.0.1",
                    vec![
                        backend("10.0.1.1", 100 * scale, 150_000 * scale, 10 * scale),
                        backend("10.0.1.2", 300 * scale, 150 * scale, 30 * scale),
                    ],
                ),
            ],
            counters: Default::default(),
        }
    }

    #[test]
    fn rates_come_from_two_snapshots_and_every_line_fits_80_columns() {
        let (before, now) = (status(1), status(3));
        let lines = frame(&now, Some(&before), 2.0, SortBy::File);
        for l in &lines {
            assert!(
                l.chars().count() <= WIDTH,
                "{} columns: {l}",
                l.chars().count()
            );
        }
        // 10.0.1.1: (300 - 100) packets in 2 s = 100/s; 300000 bytes in 2 s
        // = 1.2 Mbit/s; 20 new flows in 2 s = 10/s.
        let b1 = lines.iter().find(|l| l.contains("10.0.1.1")).unwrap();
        let cols: Vec<&str> = b1.split_whitespace().collect();
        assert_eq!(&cols[1..6], ["up", "100", "1.2M", "10", "30"], "{b1}");
        // The VIP row adds its backends up: 100 + 300 packets/s.
        let web = lines.iter().find(|l| l.starts_with("web ")).unwrap();
        assert!(web.contains(" 400 "), "{web}");
        // Without an earlier snapshot the rates are 0.
        let first = frame(&now, None, 0.0, SortBy::File);
        assert!(first
            .iter()
            .any(|l| l.contains("10.0.1.1") && l.contains(" 0 ")));
    }

    #[test]
    fn rows_sort_by_the_chosen_column() {
        let (before, now) = (status(1), status(3));
        let order = |sort| -> Vec<String> {
            frame(&now, Some(&before), 2.0, sort)
                .into_iter()
                .filter(|l| {
                    l.contains("10.0.1.") || l.starts_with("web ") || l.starts_with("a-very")
                })
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            order(SortBy::File),
            [
                "a-very-long-vip-name-that-doe~",
                "web",
                "10.0.1.1",
                "10.0.1.2"
            ]
        );
        // By packets: web first, and 10.0.1.2 (600/s) before 10.0.1.1.
        assert_eq!(
            order(SortBy::Packets),
            [
                "web",
                "10.0.1.2",
                "10.0.1.1",
                "a-very-long-vip-name-that-doe~"
            ]
        );
        // By bits: 10.0.1.1 carries the bytes.
        assert_eq!(order(SortBy::Bits)[1], "10.0.1.1");
        assert_eq!(SortBy::from_key('n'), Some(SortBy::NewFlows));
        assert_eq!(SortBy::from_key('x'), None);
    }

    #[test]
    fn a_vip_not_listed_shows_its_counts_in_80_columns() {
        let counts = crate::status::BackendCounts {
            backends: 1000,
            up: 990,
            down: 10,
            active_flows: 12_000,
            weight: 100_000,
            ..Default::default()
        };
        let st = Status {
            vips: vec![VipStatus::unlisted("web", counts)],
            ..status(1)
        };
        let lines = frame(&st, None, 1.0, SortBy::Packets);
        let row = lines
            .iter()
            .find(|l| l.contains("1000 backends, not listed"))
            .unwrap_or_else(|| panic!("{lines:#?}"));
        assert!(
            row.contains("10 down") && row.contains("12.0k") && row.contains("100k"),
            "{row}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1234.0), "1.2k");
        assert_eq!(si(123_456_789.0), "123M");
        assert_eq!(si(9.9e9), "9.9G");
    }
}
