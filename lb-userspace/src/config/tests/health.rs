//! Health checks: fields that fit the kind, layering, ports, timings, and
//! UDP VIPs.
use super::*;

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
