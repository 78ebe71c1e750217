//! Map sizes, encapsulation and address families.
use super::*;

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
fn a_vip_may_have_a_smaller_table_of_its_own() {
    let with = |size: &str, tables: &str| format!("{HEAD}{WEB}    maglev_size: {size}\n{tables}");
    let pool = ok(&with("4099", ""));
    assert_eq!(pool.vips[0].maglev_size, Some(4099));
    assert_eq!(ok(&format!("{HEAD}{WEB}")).vips[0].maglev_size, None);
    // Line 13, column 18: the VIP's `maglev_size` value.
    assert_only(
        &with("4098", ""),
        13,
        18,
        "vips[0].maglev_size",
        "`4098` is not a prime; Maglev needs a prime table size (nearest primes: `4093` or `4099`)",
    );
    assert_only(
        &with("65537", "tables:\n  maglev_size: 4099\n"),
        13,
        18,
        "vips[0].maglev_size",
        "maglev_size 65537 is larger than tables.maglev_size (4099), the room every VIP's table \
         has",
    );
    // Each backend needs a slot.
    let backends: String = (0..1010)
        .map(|i| format!("      - address: 10.2.{}.{}\n", i / 250, 1 + i % 250))
        .collect();
    let many = format!("{HEAD}{WEB}{backends}    maglev_size: 1009\n");
    let errs = errors(&many);
    assert_eq!(errs.len(), 1, "{errs}");
    assert!(
        errs.to_string()
            .contains("maglev_size 1009 is smaller than the VIP's 1011 backends"),
        "{errs}"
    );
    // The same with the room's size, at the VIP's `backends` (its list
    // starts at line 12, column 7).
    let room = format!("{HEAD}{WEB}{backends}tables:\n  maglev_size: 1009\n");
    assert_only(
        &room,
        12,
        7,
        "vips[0].backends",
        "the VIP's 1011 backends are more than the slots of its Maglev table \
         (tables.maglev_size, 1009)",
    );
}

#[test]
fn table_sizes_are_checked() {
    let text = format!(
        "{HEAD}{WEB}tables:
  flow_table_size: 512
  udp_idle_timeout: 0s
  max_vips: 65536
  maglev_size: 1000003
  max_backends: 1048576
  max_backends_per_vip: 65536
"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 5, "{errs}");
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
    // Previous backends are named in 20 bits (stateless VIPs), a VIP's
    // backends by 16-bit indices in its table.
    assert_has(
        &errs,
        18,
        17,
        "tables.max_backends",
        "`1048576` is out of range; it must be from 1 to 1048575",
    );
    assert_has(
        &errs,
        19,
        25,
        "tables.max_backends_per_vip",
        "`65536` is out of range; it must be from 1 to 65535",
    );
}

#[test]
fn a_vip_with_more_backends_than_its_table_names_is_reported() {
    let text = format!(
        "{HEAD}{WEB}      - address: 10.0.1.2
      - address: 10.0.1.3
tables:
  max_backends: 100000
  max_backends_per_vip: 2
"
    );
    assert_only(
        &text,
        14,
        18,
        "vips[0].backends[2].address",
        "this is backend number 3 of this VIP, more than tables.max_backends_per_vip (2)",
    );
    let ok_text = text.replace("per_vip: 2", "per_vip: 3");
    let pool = ok(&ok_text);
    assert_eq!(
        (pool.tables.max_backends, pool.tables.max_backends_per_vip),
        (100_000, 3)
    );
    // Not given: max_backends, within 65 535 and 64 MiB of members.
    let pool = ok(&text.replace("  max_backends_per_vip: 2\n", ""));
    assert_eq!(pool.tables.max_backends_per_vip, 65_535);
    assert_eq!(default_max_backends_per_vip(512, 512_000), 8192);
    assert_eq!(default_max_backends_per_vip(64, 5000), 5000);
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
