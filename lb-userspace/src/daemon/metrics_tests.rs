//! The metrics endpoint's tests: names, the dashboard, the alert rules.
use super::*;

/// The metric names a PromQL expression uses (`lb_...`, a histogram's
/// `_bucket`/`_sum`/`_count` series under their histogram's name).
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("lb_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if before_ok {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
                .unwrap_or(name);
            out.push(base.to_string());
        }
        i = end;
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn every_exported_metric_is_listed_and_registered() {
    let m = Metrics::new();
    let st = Status {
        instance: "t".into(),
        config: "t.yaml".into(),
        uptime_s: 1,
        flows_age_s: Some(0),
        flow_table: None,
        vips: vec![],
        counters: [("new_flow".to_string(), 1)].into(),
    };
    let text = m.render(&st, 1024);
    let types: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    for name in &types {
        assert!(NAMES.contains(name), "{name} exported but not in NAMES");
    }
}

#[test]
fn the_grafana_dashboard_loads_and_queries_only_exported_metrics() {
    let text = include_str!("../../../deploy/grafana/lb.json");
    let dash: serde_json::Value = serde_json::from_str(text).expect("lb.json is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(!p["targets"].as_array().expect("targets").is_empty(), "{p}");
    }
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= panels.len());
    let mut used = std::collections::BTreeSet::new();
    for e in &all {
        let names = names_in(e);
        assert!(!names.is_empty(), "no lb_ metric in {e}");
        for n in names {
            assert!(
                NAMES.contains(&n.as_str()),
                "{n} (in `{e}`) is not exported"
            );
            used.insert(n);
        }
    }
    // The panels: traffic, new flows, health, drops, probe
    // latency, flow-table fill.
    for n in [
        "lb_vip_bytes_total",
        "lb_backend_new_flows_total",
        "lb_backend_up",
        "lb_datapath_packets_total",
        "lb_probe_duration_seconds",
        "lb_flow_table_capacity",
    ] {
        assert!(used.contains(n), "the dashboard does not show {n}");
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_name_exported_metrics() {
    let rules = include_str!("../../../deploy/prometheus/alerts.yml");
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
        for n in names_in(line) {
            assert!(
                NAMES.contains(&n.as_str()),
                "{n} (in `{line}`) is not exported"
            );
        }
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
    let run = |args: &[&str]| {
        std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
    };
    let Ok(out) = run(&["check", "rules", "alerts.yml"]) else {
        assert!(
            std::env::var_os("LB_REQUIRE_ROOT_TESTS").is_none(),
            "promtool is missing (apt-get install prometheus; cargo xtask setup does)"
        );
        eprintln!("promtool not installed: rule checks skipped");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&["test", "rules", "alerts_test.yml"]).expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn above_the_listing_limit_a_vip_has_its_counts_and_no_backend_series() {
    let m = Metrics::new();
    let vip = VipStatus::unlisted(
        "web",
        BackendCounts {
            backends: 5000,
            up: 4990,
            down: 10,
            active_flows: 77,
            ..Default::default()
        },
    );
    let st = Status {
        instance: "t".into(),
        config: "t.yaml".into(),
        uptime_s: 1,
        flows_age_s: Some(0),
        flow_table: Some(crate::status::FlowTableStatus {
            held: 80,
            in_use: 32_768,
            entries: 131_072,
        }),
        vips: vec![vip],
        counters: Default::default(),
    };
    let text = m.render(&st, 1024);
    assert!(
        text.contains("lb_vip_backends{health=\"up\",vip=\"web\"} 4990"),
        "{text}"
    );
    assert!(
        text.contains("lb_vip_backends{health=\"down\",vip=\"web\"} 10"),
        "{text}"
    );
    assert!(text.contains("lb_flow_table_active_flows 77"), "{text}");
    assert!(
        text.contains("lb_flow_table_entries_in_use 32768"),
        "{text}"
    );
    assert!(!text.contains("lb_backend_up{"), "{text}");
}
