//! The pool file's tests: what is read, the defaults, and every class of
//! problem with its line and column.
use super::*;
use crate::health::ProbeKind;
use std::net::IpAddr;

mod health;
mod options;
mod reading;
mod tables;
mod vips;

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
    let pool = ok(include_str!("../../../../deploy/pool.example.yaml"));
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
            gue_port: 6080,
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
            gue_port: 6080,
        }
    );
    assert_eq!(
        pool.tables,
        Tables {
            maglev_size: 65537,
            flow_table_size: 1 << 20,
            flow_table_grows: true,
            udp_idle_timeout: Duration::from_secs(30),
            new_flows_per_cpu: 125_000,
            max_vips: 64,
            max_backends: 4096,
            max_backends_per_vip: 4096,
            persistence_table_size: 1 << 18,
            nat_tcp_timeout: Duration::from_secs(900),
            nat_closed_timeout: Duration::from_secs(60),
            stateless_window: Duration::from_secs(3600),
            max_stateless_vips: 4,
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
            max_connections: None,
            port: None,
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
  flow_table_grows: false
  udp_idle_timeout: 1m 30s
  new_flows_per_cpu: 0
  max_vips: 2
  max_backends: 10
  persistence_table_size: 2048
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
            flow_table_grows: false,
            udp_idle_timeout: Duration::from_secs(90),
            new_flows_per_cpu: 0,
            max_vips: 2,
            max_backends: 10,
            max_backends_per_vip: 10,
            persistence_table_size: 2048,
            nat_tcp_timeout: Duration::from_secs(900),
            nat_closed_timeout: Duration::from_secs(60),
            stateless_window: Duration::from_secs(3600),
            max_stateless_vips: 4,
        }
    );
    assert_eq!(pool.hash_secret_file, PathBuf::from("/etc/lb/secret"));
    assert_eq!(pool.control_socket, PathBuf::from("/tmp/lb.sock"));
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
        "expected a list of interfaces",
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
    scheduler: fastest
    forwarding: tproxy
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
        "`fastest` is not a valid scheduler; expected one of `maglev`, `random`, `source_hash`, `round_robin`, `weighted_round_robin`, `least_response_time`",
    );
    assert_has(
        &errs,
        12,
        17,
        "vips[0].forwarding",
        "`tproxy` is not a valid forwarding; expected one of `encap`, `dsr_l2`, `nat`, `gue`",
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
