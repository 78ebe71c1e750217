//! VIPs and backends: addresses, duplicates, weights, empty VIPs.
use super::*;

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
