//! The optional sections and per-VIP options: metrics, announce,
//! passive health, schedulers, slow start.
use super::*;

#[test]
fn metrics_listen_is_an_address_and_port() {
    let base = "instance: lb0\ninterfaces: [eth0]\nvips: []\n";
    let pool = ok(&format!("{base}metrics:\n  listen: \"127.0.0.1:9477\"\n"));
    assert_eq!(pool.metrics, Some("127.0.0.1:9477".parse().unwrap()));
    assert_eq!(ok(base).metrics, None);
    assert_only(
        &format!("{base}metrics:\n  listen: 127.0.0.1\n"),
        5,
        11,
        "metrics.listen",
        "`127.0.0.1` is not an address and port",
    );
    assert_only(
        &format!("{base}metrics: {{}}\n"),
        4,
        10,
        "metrics.listen",
        "`metrics` has no `listen`",
    );
}

#[test]
fn passive_health_is_read_and_checked() {
    let vip = |extra: &str| format!("{HEAD}{WEB}    passive_health: {extra}\n");
    let pool = ok(&vip("{ window: 4s, min_samples: 5, failure_ratio: 0.25 }"));
    assert_eq!(
        pool.vips[0].passive_health,
        Some(PassiveHealth {
            window: Duration::from_secs(4),
            min_samples: 5,
            failure_ratio: 0.25,
        })
    );
    let pool = ok(&vip("{}"));
    assert_eq!(
        pool.vips[0].passive_health,
        Some(PassiveHealth {
            window: DEFAULT_PASSIVE_WINDOW,
            min_samples: DEFAULT_PASSIVE_MIN_SAMPLES,
            failure_ratio: DEFAULT_PASSIVE_RATIO,
        })
    );
    assert_eq!(ok(&format!("{HEAD}{WEB}")).vips[0].passive_health, None);
    let errs = errors(&vip("{ window: 1s, failure_ratio: 1.5 }"));
    assert_has(
        &errs,
        13,
        31,
        "vips[0].passive_health.window",
        "out of range; use 2s to 10m",
    );
    assert_has(
        &errs,
        13,
        50,
        "vips[0].passive_health.failure_ratio",
        "out of range",
    );
    assert_eq!(errs.len(), 2, "{errs}");
}

#[test]
fn announce_has_defaults_and_reads_drain() {
    let base = "instance: lb0\ninterfaces: [eth0]\nvips: []\n";
    assert_eq!(ok(base).announce, None);
    let a = ok(&format!("{base}announce: {{}}\n")).announce.unwrap();
    assert_eq!(a.bird_include, PathBuf::from("/run/bird/lb-lb0.conf"));
    assert_eq!(a.bird_socket, PathBuf::from(DEFAULT_BIRD_SOCKET));
    assert!(!a.drain);
    let a = ok(&format!(
        "{base}announce:\n  bird_include: /etc/bird/lb.conf\n  bird_socket: /tmp/b.ctl\n  drain: true\n"
    ))
    .announce
    .unwrap();
    assert_eq!(
        (a.bird_include, a.bird_socket, a.drain),
        (
            PathBuf::from("/etc/bird/lb.conf"),
            PathBuf::from("/tmp/b.ctl"),
            true
        )
    );
    assert_only(
        &format!("{base}announce:\n  drain: yes\n"),
        5,
        10,
        "announce.drain",
        "expected true or false, found `yes`",
    );
    assert_only(
        &format!("{base}announce:\n  bird_include: relative.conf\n"),
        5,
        17,
        "announce.bird_include",
        "absolute",
    );
}

#[test]
fn schedulers_are_read_by_name() {
    for (name, want) in [
        ("maglev", Scheduler::Maglev),
        ("random", Scheduler::Random),
        ("source_hash", Scheduler::SourceHash),
        ("round_robin", Scheduler::RoundRobin),
        ("weighted_round_robin", Scheduler::RoundRobin),
        ("least_response_time", Scheduler::LeastResponseTime),
    ] {
        let text = format!("{HEAD}{WEB}    scheduler: {name}\n    source_prefix_v4: 24\n");
        let v = &ok(&text).vips[0];
        assert_eq!(v.scheduler, want, "{name}");
        assert_eq!((v.source_prefix_v4, v.source_prefix_v6), (24, 128));
    }
}

#[test]
fn slow_start_is_read_and_bounded() {
    let v = |extra: &str| format!("{HEAD}{WEB}    slow_start: {extra}\n");
    assert_eq!(
        ok(&v("30s")).vips[0].slow_start,
        Some(Duration::from_secs(30))
    );
    assert_eq!(ok(&format!("{HEAD}{WEB}")).vips[0].slow_start, None);
    assert_only(
        &v("2h"),
        13,
        17,
        "vips[0].slow_start",
        "out of range; use 1s to 1h",
    );
}

#[test]
fn persistence_is_read_and_checked() {
    let vip = |extra: &str| format!("{HEAD}{WEB}    persistence: {extra}\n");
    let pool = ok(&vip("{ timeout: 10m, prefix_v4: 24 }"));
    assert_eq!(
        pool.vips[0].persistence,
        Some(Persistence {
            timeout: Duration::from_secs(600),
            prefix_v4: 24,
            prefix_v6: 128,
        })
    );
    let pool = ok(&vip("{}"));
    assert_eq!(
        pool.vips[0].persistence,
        Some(Persistence {
            timeout: DEFAULT_PERSISTENCE_TIMEOUT,
            prefix_v4: 32,
            prefix_v6: 128,
        })
    );
    assert_eq!(ok(&format!("{HEAD}{WEB}")).vips[0].persistence, None);
    let errs = errors(&vip("{ timeout: 2d, prefix_v6: 129 }"));
    assert_has(
        &errs,
        13,
        29,
        "vips[0].persistence.timeout",
        "persistence timeout 2days is out of range; use 1s to 24h",
    );
    assert_has(
        &errs,
        13,
        44,
        "vips[0].persistence.prefix_v6",
        "out of range",
    );
    assert_eq!(errs.len(), 2, "{errs}");
    // With source_hash, one client prefix for both.
    let text = format!(
        "{HEAD}{WEB}    scheduler: source_hash\n    source_prefix_v4: 24\n    persistence: {{}}\n"
    );
    assert_only(
        &text,
        15,
        18,
        "vips[0].persistence",
        "persistence prefixes /32 and /128 differ from source_prefix_v4 /24",
    );
    let text = format!(
        "{HEAD}{WEB}    scheduler: source_hash\n    source_prefix_v4: 24\n    persistence: {{ prefix_v4: 24 }}\n"
    );
    assert_eq!(ok(&text).vips[0].persistence.unwrap().prefix_v4, 24);
}

#[test]
fn max_connections_is_per_vip_with_a_backend_override() {
    let text = format!(
        "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    max_connections: 1000
    backends:
      - address: 10.0.1.1
      - {{ address: 10.0.1.2, max_connections: 50 }}
"
    );
    let v = &ok(&text).vips[0];
    assert_eq!(v.max_connections, Some(1000));
    let limits: Vec<_> = v.backends.iter().map(|b| b.max_connections).collect();
    assert_eq!(limits, [Some(1000), Some(50)]);
    let v = &ok(&format!("{HEAD}{WEB}")).vips[0];
    assert_eq!(
        (v.max_connections, v.backends[0].max_connections),
        (None, None)
    );
    assert_only(
        &text.replace("max_connections: 50", "max_connections: 0"),
        14,
        47,
        "vips[0].backends[1].max_connections",
        "out of range",
    );
}

#[test]
fn least_connections_schedulers_are_named_and_exact_is_bounded() {
    for (name, s, number) in [
        (
            "least_connections",
            Scheduler::LeastConnections,
            lb_common::scheduler::LEAST_CONN,
        ),
        (
            "weighted_least_connections",
            Scheduler::LeastConnections,
            lb_common::scheduler::LEAST_CONN,
        ),
        (
            "least_connections_exact",
            Scheduler::LeastConnectionsExact,
            lb_common::scheduler::LEAST_CONN_EXACT,
        ),
    ] {
        let v = &ok(&format!("{HEAD}{WEB}    scheduler: {name}\n")).vips[0];
        assert_eq!((v.scheduler, v.scheduler.number()), (s, number));
        assert!(v.scheduler.counts());
    }
    let many: String = (1..=9)
        .map(|i| format!("      - address: 10.0.{}.{}\n", i / 200, i % 200 + 1))
        .collect();
    let text = format!(
        "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    scheduler: least_connections_exact
    backends:
{many}"
    );
    assert_only(
        &text,
        11,
        16,
        "vips[0].scheduler",
        "least_connections_exact takes at most 8 backends (9 given)",
    );
}

#[test]
fn forwarding_modes_are_read_with_their_needs() {
    let v = |forwarding: &str, backend: &str| {
        format!(
            "instance: lb0
interfaces: [eth0]
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    forwarding: {forwarding}
    backends:
      - address: {backend}
"
        )
    };
    // L2 direct return needs no outer source; it needs the VIP's family.
    let p = ok(&v("dsr_l2", "10.0.1.1"));
    assert_eq!(p.vips[0].forwarding, Forwarding::DsrL2);
    assert_eq!(p.vips[0].forwarding.number(), lb_common::mode::DSR_L2);
    assert_only(
        &v("dsr_l2", "\"fd00:1::1\""),
        10,
        18,
        "vips[0].backends[0].address",
        "backend fd00:1::1 and VIP 10.100.0.1 are of different families",
    );
    // GUE encapsulates: it needs the outer source, and takes the port.
    assert_only(
        &v("gue", "10.0.1.1"),
        10,
        18,
        "vips[0].backends[0].address",
        "encapsulation.source_v4 is not set",
    );
    let text = format!(
        "{}encapsulation:\n  source_v4: 10.255.0.0/24\n  gue_port: 5555\n",
        v("gue", "10.0.1.1")
    );
    let p = ok(&text);
    assert_eq!(p.vips[0].forwarding.number(), lb_common::mode::GUE);
    assert_eq!(p.encapsulation.gue_port, 5555);
    assert_eq!(ok(&v("dsr_l2", "10.0.1.1")).encapsulation.gue_port, 6080);
}

#[test]
fn nat_needs_its_source_addresses_and_only_it_takes_ports() {
    let v = |extra: &str, backend: &str| {
        format!(
            "instance: lb0
interfaces: [eth0]
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
{extra}    backends:
      - {backend}
"
        )
    };
    let p = ok(&v(
        "    forwarding: nat\n    snat_addresses: [10.10.0.2, \"fd10::2\"]\n    snat_ports: 20000-29999\n",
        "{ address: 10.0.1.1, port: 8080 }",
    ));
    let vip = &p.vips[0];
    assert_eq!(vip.forwarding.number(), lb_common::mode::NAT);
    assert_eq!(
        vip.nat,
        Some(Nat {
            addresses: vec!["10.10.0.2".parse().unwrap(), "fd10::2".parse().unwrap()],
            ports: (20000, 29999),
        })
    );
    assert_eq!(vip.backends[0].port, Some(8080));
    // The health check probes the backend's port.
    assert_eq!(vip.backends[0].health.as_ref().unwrap().target.port(), 8080);
    let p = ok(&v(
        "    forwarding: nat\n    snat_addresses: [10.10.0.2]\n",
        "{ address: 10.0.1.1 }",
    ));
    assert_eq!(
        p.vips[0].nat.as_ref().unwrap().ports,
        lb_common::DEFAULT_NAT_PORTS
    );
    // Without source addresses; with none of the backend's family.
    let errs = errors(&v("    forwarding: nat\n", "{ address: 10.0.1.1 }"));
    assert!(errs.to_string().contains("snat_addresses"), "{errs}");
    let errs = errors(&v(
        "    forwarding: nat\n    snat_addresses: [\"fd10::2\"]\n",
        "{ address: 10.0.1.1 }",
    ));
    assert!(
        errs.to_string()
            .contains("backend 10.0.1.1 is IPv4, and snat_addresses has no address of that family"),
        "{errs}"
    );
    // A port, or source addresses, without NAT.
    let errs = errors(&v("", "{ address: 10.0.1.1, port: 8080 }"));
    assert!(
        errs.to_string()
            .contains("a backend `port` needs `forwarding: nat`"),
        "{errs}"
    );
    let errs = errors(&v("    snat_ports: 1-2\n", "{ address: 10.0.1.1 }"));
    assert!(
        errs.to_string()
            .contains("`snat_ports` needs `forwarding: nat`"),
        "{errs}"
    );
    let errs = errors(&v(
        "    forwarding: nat\n    snat_addresses: [10.10.0.2]\n    snat_ports: 30000-20000\n",
        "{ address: 10.0.1.1 }",
    ));
    assert!(errs.to_string().contains("snat_ports"), "{errs}");
}

#[test]
fn state_stateless_needs_gue_maglev_and_no_connection_state() {
    let vip = |extra: &str| format!("{HEAD}{WEB}    state: stateless\n{extra}");
    let pool = ok(&vip("    forwarding: gue\n"));
    assert!(pool.vips[0].stateless);
    assert!(!ok(&format!("{HEAD}{WEB}")).vips[0].stateless);
    assert_eq!(pool.tables.stateless_window, Duration::from_secs(3600));
    assert_eq!(pool.tables.max_stateless_vips, 4);
    // Line 13, column 12: the `state` value.
    assert_only(&vip(""), 13, 12, "vips[0].state", "needs `forwarding: gue`");
    assert_only(
        &vip("    forwarding: gue\n    scheduler: round_robin\n"),
        13,
        12,
        "vips[0].state",
        "only `scheduler: maglev`",
    );
    assert_only(
        &vip("    forwarding: gue\n    max_connections: 5\n"),
        15,
        22,
        "vips[0].max_connections",
        "a stateless VIP keeps none",
    );
    let two = format!(
        "{}tables:\n  max_stateless_vips: 1\n",
        vip("    forwarding: gue\n")
            + &WEB
                .replace("port: 80", "port: 81")
                .replace("name: web", "name: web2")
            + "    state: stateless\n    forwarding: gue\n"
    );
    let errs = errors(&two);
    assert_eq!(errs.len(), 1, "{errs}");
    assert!(
        errs.to_string().contains("max_stateless_vips (1)"),
        "{errs}"
    );
    let w = format!(
        "{}tables:\n  stateless_window: 8d\n",
        vip("    forwarding: gue\n")
    );
    assert!(errors(&w)
        .to_string()
        .contains("stateless_window 8days is out of range"));
}
