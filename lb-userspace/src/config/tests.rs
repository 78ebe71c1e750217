use super::*;
use crate::health::ProbeKind;

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
    let pool = ok(include_str!("../../../deploy/pool.example.yaml"));
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
        }
    );
    assert_eq!(
        pool.tables,
        Tables {
            maglev_size: 65537,
            flow_table_size: 1 << 20,
            udp_idle_timeout: Duration::from_secs(30),
            max_vips: 64,
            max_backends: 4096,
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
  udp_idle_timeout: 1m 30s
  max_vips: 2
  max_backends: 10
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
            udp_idle_timeout: Duration::from_secs(90),
            max_vips: 2,
            max_backends: 10,
        }
    );
    assert_eq!(pool.hash_secret_file, PathBuf::from("/etc/lb/secret"));
    assert_eq!(pool.control_socket, PathBuf::from("/tmp/lb.sock"));
}

#[test]
fn yaml_syntax_errors_are_located() {
    assert_only(
        "instance: lb0\ninterfaces: [eth0\nvips: []\n",
        3,
        5,
        "",
        "not valid YAML",
    );
    assert_only(
        "instance: lb0\n  interfaces: [eth0]\n",
        2,
        13,
        "",
        "mapping values are not allowed",
    );
    assert_only("", 1, 1, "", "the pool file is empty");
    assert_only("a: 1\n---\nb: 2\n", 2, 1, "", "more than one YAML document");
    assert_only(
        "- 1\n",
        1,
        1,
        "",
        "expected the pool file (a mapping of fields), found a list",
    );
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
fn bad_addresses_are_reported() {
    let text = format!(
        "{HEAD}  - name: web
    address: 10.0.1.300
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1:80
      - address: fd00::/64
      - address: backend-1
"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs}");
    assert_has(
        &errs,
        8,
        14,
        "vips[0].address",
        "`10.0.1.300` is not an IP address",
    );
    assert_has(&errs, 12, 18, "vips[0].backends[0].address", "no port");
    assert_has(
        &errs,
        13,
        18,
        "vips[0].backends[1].address",
        "without a prefix length",
    );
    assert_has(
        &errs,
        14,
        18,
        "vips[0].backends[2].address",
        "`backend-1` is not an IP address",
    );
    assert_eq!(
        errs.errors[0].to_string(),
        "8:14: vips[0].address: `10.0.1.300` is not an IP address"
    );
}

#[test]
fn unusable_vip_addresses_are_rejected() {
    for (addr, what) in [
        ("0.0.0.0", "the unspecified address"),
        ("255.255.255.255", "the broadcast address"),
        ("224.0.0.1", "a multicast address"),
        ("127.0.0.1", "a loopback address"),
        ("\"::\"", "the unspecified address"),
        ("\"::1\"", "the loopback address"),
        ("\"ff02::1\"", "a multicast address"),
        ("\"::ffff:10.0.0.1\"", "IPv4-mapped"),
    ] {
        let text = format!("{HEAD}{}", WEB.replace("10.100.0.1", addr));
        assert_only(&text, 8, 14, "vips[0].address", what);
        assert_has(&errors(&text), 8, 14, "vips[0].address", "cannot be a VIP");
    }
    // A network-looking address is a fine /32 VIP.
    ok(&format!(
        "{HEAD}{}",
        WEB.replace("10.100.0.1", "10.100.0.0")
    ));
    // Backends are held to the same rule.
    let text = format!("{HEAD}{}", WEB.replace("10.0.1.1", "127.0.0.1"));
    assert_only(
        &text,
        12,
        18,
        "vips[0].backends[0].address",
        "cannot be a backend",
    );
}

#[test]
fn duplicate_vips_and_names_are_reported() {
    let text = format!(
        "{HEAD}{WEB}  - name: web
    address: 10.100.0.2
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
  - name: web-again
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
  - name: web-udp
    address: 10.100.0.1
    port: 80
    protocol: udp
    health_check: {{ kind: none }}
    backends:
      - address: 10.0.1.1
"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs}");
    assert_has(
        &errs,
        13,
        11,
        "vips[1].name",
        "VIP name `web` is used twice (first at line 7)",
    );
    assert_has(
        &errs,
        20,
        14,
        "vips[2].address",
        "VIP 10.100.0.1 port 80 tcp is defined twice (first as vips[0] at line 8)",
    );
}

#[test]
fn duplicate_backends_within_a_vip_are_reported() {
    let text = format!(
        "{HEAD}{WEB}      - address: 10.0.1.2
      - address: 10.0.1.1
        weight: 5
  - name: other
    address: 10.100.0.2
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
"
    );
    // The same backend in another VIP is fine.
    assert_only(
        &text,
        14,
        18,
        "vips[0].backends[2].address",
        "backend 10.0.1.1 is listed twice in this VIP (first at line 12)",
    );
}

#[test]
fn weights_out_of_range_are_reported() {
    let text = format!(
        "{HEAD}{WEB}        weight: 0
      - address: 10.0.1.2
        weight: 65536
      - address: 10.0.1.3
        weight: -1
      - address: 10.0.1.4
        weight: heavy
      - address: 10.0.1.5
        weight: 65535
"
    );
    let errs = errors(&text);
    assert_eq!(
        lines(&errs),
        [(13, 17), (15, 17), (17, 17), (19, 17)],
        "{errs}"
    );
    assert_has(
        &errs,
        13,
        17,
        "vips[0].backends[0].weight",
        "weight `0` is out of range; it must be from 1 to 65535",
    );
    assert_has(
        &errs,
        15,
        17,
        "vips[0].backends[1].weight",
        "weight `65536` is out of range",
    );
    assert_has(
        &errs,
        17,
        17,
        "vips[0].backends[2].weight",
        "weight `-1` is out of range",
    );
    assert_has(
        &errs,
        19,
        17,
        "vips[0].backends[3].weight",
        "expected weight, an integer from 1 to 65535, found `heavy`",
    );
}

#[test]
fn vip_without_backends_is_reported() {
    let text = format!(
        "{HEAD}  - name: empty
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends: []
  - name: none
    address: 10.100.0.2
    port: 80
    protocol: tcp
"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs}");
    assert_has(
        &errs,
        11,
        15,
        "vips[0].backends",
        "VIP `empty` has no backends; list at least one",
    );
    assert_has(
        &errs,
        12,
        5,
        "vips[1].backends",
        "this VIP has no `backends`",
    );
}

#[test]
fn too_many_vips_and_backends_are_reported() {
    let text = format!(
        "{HEAD}{WEB}      - address: 10.0.1.2
  - name: two
    address: 10.100.0.2
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
      - address: 10.0.1.3
      - address: 10.0.1.4
tables:
  max_vips: 1
  max_backends: 2
"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs}");
    assert_has(
        &errs,
        14,
        5,
        "vips[1]",
        "2 VIPs are listed, more than tables.max_vips (1)",
    );
    // 10.0.1.1 behind a second VIP takes a slot of its own: the third.
    assert_has(
        &errs,
        19,
        18,
        "vips[1].backends[0].address",
        "backend slot number 3 (one per VIP and backend), more than tables.max_backends (2)",
    );
}

#[test]
fn maglev_size_must_be_prime_and_in_range() {
    let with = |size: &str| format!("{HEAD}{WEB}tables:\n  maglev_size: {size}\n");
    assert_only(
        &with("65536"),
        14,
        16,
        "tables.maglev_size",
        "not a prime; Maglev needs a prime table size (nearest primes: `65521` or `65537`)",
    );
    assert_only(
        &with("997"),
        14,
        16,
        "tables.maglev_size",
        "maglev_size `997` is out of range; it must be from 1009 to 1000003",
    );
    assert_only(
        &with("1000033"),
        14,
        16,
        "tables.maglev_size",
        "out of range",
    );
    ok(&with("1000003"));
    ok(&with("1009"));
    assert!(is_prime(65537) && is_prime(1_000_003) && is_prime(2) && is_prime(1009));
    assert!(!is_prime(1) && !is_prime(65536) && !is_prime(1_000_001) && !is_prime(9));
}

#[test]
fn table_sizes_are_checked() {
    let text = format!(
        "{HEAD}{WEB}tables:
  flow_table_size: 512
  udp_idle_timeout: 0s
  max_vips: 65536
  maglev_size: 1000003
  max_backends: 65536
"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs}");
    assert_has(
        &errs,
        14,
        20,
        "tables.flow_table_size",
        "flow_table_size `512` is out of range; it must be from 1024 to 67108864",
    );
    assert_has(
        &errs,
        15,
        21,
        "tables.udp_idle_timeout",
        "udp_idle_timeout must be longer than zero",
    );
    assert_has(
        &errs,
        16,
        13,
        "tables.max_vips",
        "Maglev table elements, more than one BPF array holds",
    );
    // Backend ids are 16 bits in the Maglev tables.
    assert_has(
        &errs,
        18,
        17,
        "tables.max_backends",
        "`65536` is out of range; it must be from 1 to 65535",
    );
}

#[test]
fn backend_family_needs_an_outer_source() {
    let text = "\
instance: lb0
interfaces: [eth0]
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends:
      - address: 10.0.1.1
      - address: fd00::1
";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs}");
    assert_has(
        &errs,
        9,
        18,
        "vips[0].backends[0].address",
        "backend 10.0.1.1 is IPv4, but encapsulation.source_v4 is not set",
    );
    assert_has(
        &errs,
        10,
        18,
        "vips[0].backends[1].address",
        "backend fd00::1 is IPv6, but encapsulation.source_v6 is not set",
    );
}

#[test]
fn ipv6_vip_with_ipv4_backend_is_6in4() {
    let text = format!(
        "{HEAD}  - name: v6
    address: 2001:db8::1
    port: 443
    protocol: tcp
    backends:
      - address: 2001:db8:1::1
      - address: 10.0.1.1
"
    );
    assert_only(
        &text,
        13,
        18,
        "vips[0].backends[1].address",
        "6in4 is not supported",
    );
    // 4in6 is fine.
    ok(&format!("{HEAD}{}", WEB.replace("10.0.1.1", "fd00::1")));
}

#[test]
fn encapsulation_is_checked() {
    let text = "\
instance: lb0
interfaces: [eth0]
encapsulation:
  source_v4: 10.255.0.0/8
  source_v6: fd00:255::1/112
  gateway_mac: 02:00:00:00:01
  mtu: 1000
vips: []
";
    let errs = errors(text);
    assert_eq!(errs.len(), 3, "{errs}");
    assert_has(
        &errs,
        4,
        14,
        "encapsulation.source_v4",
        "prefix length /8 of `10.255.0.0/8` is too short; source_v4 needs /16 to /32",
    );
    assert_has(
        &errs,
        5,
        14,
        "encapsulation.source_v6",
        "has host bits set (they are chosen per flow); write the network `fd00:255::/112`",
    );
    assert_has(
        &errs,
        6,
        16,
        "encapsulation.gateway_mac",
        "`02:00:00:00:01` is not a MAC address",
    );
    // An invalid source_v6 is not taken as set, so mtu 1000 (< 1280) is not reported.
    assert!(errs.iter().all(|e| e.path != "encapsulation.mtu"), "{errs}");

    let text = "\
instance: lb0
interfaces: [eth0]
encapsulation:
  source_v4: \"fd00::/112\"
  source_v6: \"fd00::/112\"
  gateway_mac: ff:ff:ff:ff:ff:ff
  mtu: 1200
vips: []
";
    let errs = errors(text);
    assert_eq!(errs.len(), 3, "{errs}");
    assert_has(
        &errs,
        4,
        14,
        "encapsulation.source_v4",
        "did you mean to put it under `source_v6`?",
    );
    assert_has(
        &errs,
        6,
        16,
        "encapsulation.gateway_mac",
        "multicast (or broadcast) MAC",
    );
    assert_has(&errs, 7, 8, "encapsulation.mtu", "below 1280");

    let pool = ok("instance: lb0\ninterfaces: [eth0]\nencapsulation:\n  source_v4: 192.0.2.7\n  gateway_mac: 0A-1b-2c-3d-4e-5f\nvips: []\n");
    assert_eq!(
        pool.encapsulation.source_v4,
        Some((Ipv4Addr::new(192, 0, 2, 7), 32))
    );
    assert_eq!(
        pool.encapsulation.gateway_mac,
        Some([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f])
    );
    assert!(pool.vips.is_empty());
}

#[test]
fn bad_mac_is_reported() {
    for mac in [
        "02:00:00:00:00:0g",
        "020000000001",
        "00:00:00:00:00:00",
        "01:00:5e:00:00:01",
    ] {
        let text = format!(
                "instance: lb0\ninterfaces: [eth0]\nencapsulation:\n  gateway_mac: \"{mac}\"\nvips: []\n"
            );
        assert_only(&text, 4, 16, "encapsulation.gateway_mac", "MAC address");
    }
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
    scheduler: round_robin
    forwarding: nat
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
        "`round_robin` is not a valid scheduler; only `maglev` is supported for now",
    );
    assert_has(
        &errs,
        12,
        17,
        "vips[0].forwarding",
        "only `encap` is supported for now",
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
fn health_fields_must_fit_the_kind() {
    let text = format!(
        "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check:
      kind: tcp
      path: /healthz
      send: hello
    backends:
      - address: 10.0.1.1
        health_check: {{command: /bin/true}}
      - address: 10.0.1.2
        health_check: {{kind: none, interval: 1s}}
  - name: udp
    address: 10.100.0.1
    port: 53
    protocol: udp
    health_check: {{kind: exec, command: /bin/check, expect_status: 204}}
    backends:
      - address: 10.0.1.3
"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 5, "{errs}");
    assert_has(&errs, 13, 13, "vips[0].health_check.path", "`path` applies only to http checks, but this health check is tcp; remove it or set `kind: http`");
    assert_has(
        &errs,
        14,
        13,
        "vips[0].health_check.send",
        "`send` applies only to udp checks",
    );
    assert_has(
        &errs,
        17,
        33,
        "vips[0].backends[0].health_check.command",
        "`command` applies only to exec checks",
    );
    assert_has(
        &errs,
        19,
        46,
        "vips[0].backends[1].health_check.interval",
        "has no effect: this health check is off (kind `none`)",
    );
    assert_has(
        &errs,
        24,
        68,
        "vips[1].health_check.expect_status",
        "applies only to http checks, but this health check is exec",
    );
}

#[test]
fn changing_the_kind_drops_the_old_kind_fields() {
    let text = format!(
        "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check: {{kind: http, path: /ready, host: a.example}}
    backends:
      - address: 10.0.1.1
        health_check: {{kind: udp, send: hi}}
      - address: 10.0.1.2
        health_check: {{kind: http}}
health_defaults:
  kind: exec
  command: /bin/check
"
    );
    let pool = ok(&text);
    let b = &pool.vips[0].backends;
    assert_eq!(
        b[0].health.as_ref().unwrap().kind,
        ProbeKind::Udp {
            send: b"hi".to_vec(),
            expect: None
        }
    );
    // Same kind again: the VIP's http fields stay.
    assert_eq!(
        b[1].health.as_ref().unwrap().kind,
        ProbeKind::Http {
            path: "/ready".into(),
            expect_status: 200,
            host: Some("a.example".into())
        }
    );
}

#[test]
fn health_override_precedence() {
    let text = format!(
        "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check:
      path: /vip
      rise: 5
    backends:
      - address: 10.0.1.1
        health_check: {{port: 9000, fall: 4}}
      - address: 10.0.1.2
      - address: 10.0.1.3
        health_check: {{kind: tcp}}
      - address: 10.0.1.4
        health_check: {{kind: none}}
  - name: other
    address: 10.100.0.2
    port: 81
    protocol: tcp
    backends:
      - address: 10.0.1.1
health_defaults:
  kind: http
  path: /defaults
  interval: 1s
  timeout: 500ms
  expect_status: 204
"
    );
    let pool = ok(&text);
    let web = &pool.vips[0].backends;
    let http = |path: &str| ProbeKind::Http {
        path: path.into(),
        expect_status: 204,
        host: None,
    };
    let spec = |kind, target: &str, rise, fall| ProbeSpec {
        kind,
        target: target.parse().unwrap(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        rise,
        fall,
    };
    // backend override > VIP > health_defaults > built-in defaults
    assert_eq!(
        web[0].health,
        Some(spec(http("/vip"), "10.0.1.1:9000", 5, 4))
    );
    assert_eq!(web[1].health, Some(spec(http("/vip"), "10.0.1.2:80", 5, 2)));
    assert_eq!(
        web[2].health,
        Some(spec(ProbeKind::Tcp, "10.0.1.3:80", 5, 2))
    );
    assert_eq!(web[3].health, None);
    // A VIP without health_check gets health_defaults on its own port.
    assert_eq!(
        pool.vips[1].backends[0].health,
        Some(spec(http("/defaults"), "10.0.1.1:81", 2, 2))
    );
}

#[test]
fn port_zero_vip_needs_a_health_port() {
    let any_port = |health: &str| {
        format!(
            "{HEAD}  - name: any
    address: 10.100.0.1
    port: 0
    protocol: tcp{health}
    backends:
      - address: 10.0.1.1
      - address: 10.0.1.2
"
        )
    };
    // The default tcp check: reported once, at the VIP's port.
    assert_only(&any_port(""), 9, 11, "vips[0].port", "a tcp health check needs a port, and VIP `any` listens on every port (port 0); set `port` in its health_check");
    assert_only(
        &any_port("\n    health_check: {kind: http}"),
        11,
        19,
        "vips[0].health_check.port",
        "a http health check needs a port",
    );
    let pool = ok(&any_port("\n    health_check: {port: 22}"));
    assert_eq!(
        pool.vips[0].backends[1].health.as_ref().unwrap().target,
        "10.0.1.2:22".parse().unwrap()
    );
    let pool = ok(&any_port(
        "\n    health_check: {kind: exec, command: /bin/check}",
    ));
    assert_eq!(
        pool.vips[0].backends[0].health.as_ref().unwrap().target,
        "10.0.1.1:0".parse().unwrap()
    );
    let pool = ok(&any_port("\n    health_check: {kind: none}"));
    assert_eq!(pool.vips[0].backends[0].health, None);
    assert_only(
        &any_port("\n    health_check: {port: 0}"),
        11,
        26,
        "vips[0].health_check.port",
        "health-check port `0` is out of range; it must be from 1 to 65535",
    );
}

#[test]
fn bad_durations_and_timings_are_reported() {
    let text = format!(
        "{HEAD}  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check:
      interval: 5
      timeout: fast
      rise: 0
      fall: 0
    backends:
      - address: 10.0.1.1
        health_check: {{interval: 0ms}}
  - name: slow
    address: 10.100.0.2
    port: 80
    protocol: tcp
    health_check: {{timeout: 1s}}
    backends:
      - address: 10.0.1.1
"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 6, "{errs}");
    assert_has(
        &errs,
        12,
        17,
        "vips[0].health_check.interval",
        "`5` is not a duration (time unit needed",
    );
    assert_has(
        &errs,
        13,
        16,
        "vips[0].health_check.timeout",
        "`fast` is not a duration",
    );
    assert_has(
        &errs,
        14,
        13,
        "vips[0].health_check.rise",
        "rise `0` is out of range; it must be from 1 to",
    );
    assert_has(
        &errs,
        15,
        13,
        "vips[0].health_check.fall",
        "fall `0` is out of range",
    );
    assert_has(
        &errs,
        18,
        34,
        "vips[0].backends[0].health_check.interval",
        "must be longer than zero, found `0ms`",
    );
    assert_has(
        &errs,
        23,
        29,
        "vips[1].health_check.timeout",
        "health-check timeout 1s is longer than its interval 200ms",
    );
}

#[test]
fn exec_needs_a_command_and_http_a_path() {
    let text = format!(
        "{HEAD}{WEB}        health_check: {{kind: exec}}
      - address: 10.0.1.2
        health_check: {{kind: http, path: healthz}}
"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs}");
    assert_has(
        &errs,
        13,
        30,
        "vips[0].backends[0].health_check.kind",
        "an exec health check needs `command`",
    );
    assert_has(
        &errs,
        15,
        42,
        "vips[0].backends[1].health_check.path",
        "`healthz` is not an HTTP path",
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

#[test]
fn aliases_are_expanded() {
    let text = "\
instance: lb0
interfaces: [eth0]
encapsulation: {source_v4: 10.255.0.0/24}
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends: &pool
      - address: 10.0.1.1
      - address: 10.0.1.2
  - name: web-tls
    address: 10.100.0.1
    port: 443
    protocol: tcp
    backends: *pool
";
    let pool = ok(text);
    assert_eq!(pool.vips[1].backends.len(), 2);
    assert_eq!(
        pool.vips[1].backends[1].health.as_ref().unwrap().target,
        "10.0.1.2:443".parse().unwrap()
    );
}

#[test]
fn several_different_errors_are_reported_at_once() {
    let text = "\
instance: LB-0
interfaces: []
xdp_mode: auto
encapsulation:
  source_v4: 10.255.0.0/24
  mtu: 10000
tables:
  maglev_size: 1000
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check: {kind: tcp, path: /x}
    backends:
      - address: 10.0.1.1
        weight: 0
      - address: 10.0.1.1
      - address: fd00::5
  - name: web
    address: 0.0.0.0
    port: 81
    protocol: tcp
    backends: []
verbose: 1
";
    let errs = errors(text);
    assert_eq!(
        lines(&errs),
        [
            (1, 11),  // instance name
            (2, 13),  // no interfaces
            (6, 8),   // mtu out of range
            (8, 16),  // maglev_size out of range
            (14, 37), // path on a tcp check
            (17, 17), // weight 0
            (18, 18), // duplicate backend
            (19, 18), // IPv6 backend without source_v6
            (20, 11), // duplicate VIP name
            (21, 14), // unspecified VIP address
            (24, 15), // no backends
            (25, 1),  // unknown field
        ],
        "{errs}"
    );
    let shown = errs.to_string();
    let shown: Vec<&str> = shown.lines().collect();
    assert_eq!(shown.len(), 13);
    assert_eq!(
        shown[0],
        "t.yaml:1:11: instance: `LB-0` is not a valid instance name; use 1 to 15 characters \
             from a-z, 0-9, `_` and `-` (it names /sys/fs/bpf/<instance>/)"
    );
    assert_eq!(shown[12], "12 problems in t.yaml");
}

#[test]
fn scalars_are_read_strictly() {
    let with_port = |port: &str| format!("{HEAD}{}", WEB.replace("port: 80", port));
    assert_only(
        &with_port("port: \"80\""),
        9,
        11,
        "vips[0].port",
        "found `80` (write it without quotes)",
    );
    assert_only(
        &with_port("port: 0x50"),
        9,
        11,
        "vips[0].port",
        "found `0x50`",
    );
    assert_only(
        &with_port("port: 8e1"),
        9,
        11,
        "vips[0].port",
        "found `8e1`",
    );
    // YAML 1.1 booleans and sexagesimal numbers are plain strings.
    let pool = ok(&format!("{HEAD}{}", WEB.replace("name: web", "name: yes")));
    assert_eq!(pool.vips[0].name, "yes");
    let pool = ok("instance: lb0\ninterfaces: [eth0]\nencapsulation:\n  gateway_mac: 02:00:00:00:00:01\nvips: []\n");
    assert_eq!(pool.encapsulation.gateway_mac, Some([2, 0, 0, 0, 0, 1]));
    // `~` and an empty value are "not given".
    let pool = ok(&format!("{HEAD}{WEB}        weight: ~\n        state:\n"));
    assert_eq!(
        (
            pool.vips[0].backends[0].weight,
            pool.vips[0].backends[0].state
        ),
        (100, BackendState::Active)
    );
}

#[test]
fn alias_bombs_and_merge_keys_are_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs}");
    assert!(
        errs.errors[0]
            .message
            .contains("too large or expands to too much"),
        "{errs}"
    );

    let text = format!("{HEAD}  - &web\n    name: web\n    address: 10.100.0.1\n    port: 80\n    protocol: tcp\n    backends: [{{address: 10.0.1.1}}]\n  - <<: *web\n    name: web2\n");
    assert_has(
        &errors(&text),
        13,
        5,
        "vips[1].<<",
        "merge keys (`<<`) are not supported",
    );
}

#[test]
fn a_udp_vip_needs_a_health_check_that_can_pass() {
    // No health_check: the default tcp check of the VIP port.
    let vip = |check: &str| {
        format!(
            "{HEAD}  - name: dns
    address: 10.100.0.1
    port: 53
    protocol: udp
{check}    backends:
      - address: 10.0.1.1
"
        )
    };
    assert_only(&vip(""), 10, 15, "vips[0].protocol", "is UDP");
    assert_only(
        &vip("    health_check: { kind: http }\n"),
        11,
        27,
        "vips[0].health_check.kind",
        "(kind `http`) probes the VIP port over TCP",
    );
    // What can pass: udp, exec, none, or a TCP check of another port.
    for ok in [
        "    health_check: { kind: udp, send: ping }\n",
        "    health_check: { kind: none }\n",
        "    health_check: { kind: exec, command: /bin/true }\n",
        "    health_check: { kind: tcp, port: 8053 }\n",
    ] {
        let pool = parse(&vip(ok), "t.yaml").unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(pool.vips.len(), 1);
    }
    // health_defaults count too: a tcp default with no port is refused.
    let text = vip("").replace("vips:\n", "health_defaults: { kind: tcp }\nvips:\n");
    assert!(errors(&text).iter().any(|e| e.message.contains("is UDP")));
}

#[test]
fn a_udp_idle_timeout_under_two_seconds_is_refused() {
    let text =
        format!("{HEAD}{WEB}").replace("vips:\n", "tables: { udp_idle_timeout: 1500ms }\nvips:\n");
    assert_only(&text, 6, 29, "tables.udp_idle_timeout", "shorter than 2s");
    let text =
        format!("{HEAD}{WEB}").replace("vips:\n", "tables: { udp_idle_timeout: 2s }\nvips:\n");
    assert_eq!(
        ok(&text).tables.udp_idle_timeout,
        std::time::Duration::from_secs(2)
    );
}

#[test]
fn mutated_pool_files_never_panic_and_every_problem_has_a_place() {
    // The parser fuzzed: the example file with bytes flipped, lines cut,
    // swapped or repeated, truncated. Each result is a pool or problems
    // that all carry a line and column.
    let example = include_str!("../../../deploy/pool.example.yaml");
    let mut rng = fastrand::Rng::with_seed(20261130);
    let mut rejected = 0;
    for _ in 0..3000 {
        let mut lines: Vec<String> = example.lines().map(str::to_owned).collect();
        for _ in 0..rng.usize(1..4) {
            if lines.is_empty() {
                break;
            }
            let i = rng.usize(..lines.len());
            match rng.u8(..5) {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let l = lines[i].clone();
                    lines.insert(rng.usize(..lines.len()), l);
                }
                2 => {
                    let cut = rng.usize(..=lines[i].len());
                    lines[i] = lines[i].chars().take(cut).collect();
                }
                3 => {
                    let mut b = lines[i].clone().into_bytes();
                    if !b.is_empty() {
                        let j = rng.usize(..b.len());
                        let chars = b"x:{}[]-,'\" 9\t&*!|>#";
                        b[j] = chars[rng.usize(..chars.len())];
                    }
                    lines[i] = String::from_utf8_lossy(&b).into_owned();
                }
                _ => lines.truncate(i),
            }
        }
        let text = lines.join("\n");
        if let Err(errs) = parse(&text, "fuzz.yaml") {
            rejected += 1;
            for e in errs.iter() {
                assert!(
                    e.line > 0 && e.column > 0,
                    "{e:?} has no place, in:\n{text}"
                );
            }
        }
    }
    assert!(
        rejected > 1000,
        "only {rejected} of 3000 mutations were rejected"
    );
}
