//! Packet tests: the real XDP object, real maps, BPF_PROG_TEST_RUN. Each test
//! asserts the action, the exact bytes that leave, and the counters.
use etherparse::{Icmpv4Header, Icmpv4Type, Ipv4Header, PacketBuilder, SlicedPacket};
use lb_common::{
    counter, decap_counter, flow_hash, vip_filter_bit, Config, VipInfo, BACKEND_F_DOWN,
    CONFIG_F_GATEWAY_MAC, CONFIG_F_SRC_V4, CONFIG_F_SRC_V6, NO_BACKEND, PROTO_TCP, PROTO_UDP,
};
use lb_tests::packets::*;
use lb_tests::*;
use lb_userspace::dataplane::{DataPlane, DecapVip};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0x0fed_cba9_8765_4321];
const SRC_V4: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 0);
const SRC_V4_BITS: u32 = 8;
const SRC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x255, 0, 0, 0, 0, 0, 0);
const SRC_V6_BITS: u32 = 16;

const WEB: u32 = 0; // 10.100.0.1:80/tcp
const DNS: u32 = 1; // 10.100.0.1:53/udp
const WEB6: u32 = 2; // [fd00:100::1]:80/tcp
const MIXED: u32 = 3; // 10.100.0.2:80/tcp -> IPv6 backends
const ANY: u32 = 4; // 10.100.0.3:0/tcp (every port)
const EMPTY: u32 = 5; // 10.100.0.4:80/tcp, no backend
const EXTRA: u32 = 7; // not set up: for tests that add a VIP (backend 20)

/// Runs `c` with `sh -c` in this test's namespace; it must succeed.
fn shell(c: &str) {
    let st = std::process::Command::new("sh")
        .args(["-c", c])
        .status()
        .unwrap();
    assert!(st.success(), "{c}");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(ring_size: u32) -> Config {
    Config {
        hash_key: KEY,
        ring_size,
        flags: CONFIG_F_GATEWAY_MAC | CONFIG_F_SRC_V4 | CONFIG_F_SRC_V6,
        udp_idle_timeout_ns: 30_000_000_000,
        src_v4: u32::from_ne_bytes(SRC_V4.octets()),
        src_v4_mask: host_mask(SRC_V4_BITS),
        src_v6: addr_words(IpAddr::V6(SRC_V6)).0,
        src_v6_mask: host_mask(SRC_V6_BITS),
        mtu: 1500,
        gateway_mac: GATEWAY_MAC,
        gue_port: lb_common::DEFAULT_GUE_PORT.to_be(),
        ..Config::default()
    }
}

/// Backend slots: (id, address, VIP). As in the daemon, a backend address
/// behind two VIPs has a slot per VIP.
fn backends() -> Vec<(u32, IpAddr, u32)> {
    vec![
        (1, ip("10.0.1.1"), WEB),
        (2, ip("10.0.1.2"), WEB),
        (3, ip("10.0.1.3"), WEB),
        (4, ip("10.0.1.1"), DNS),
        (5, ip("10.0.1.2"), DNS),
        (6, ip("10.0.1.3"), ANY),
        (10, ip("fd00:1::1"), WEB6),
        (11, ip("fd00:1::2"), WEB6),
        (12, ip("fd00:1::1"), MIXED),
        (13, ip("fd00:1::2"), MIXED),
        (20, ip("10.0.1.20"), EXTRA),
    ]
}

/// A ring whose slot i holds ids[i % len].
fn ring(ids: &[u32], size: u32) -> Vec<u32> {
    (0..size)
        .map(|i| {
            if ids.is_empty() {
                NO_BACKEND
            } else {
                ids[i as usize % ids.len()]
            }
        })
        .collect()
}

/// Replaces the table of VIP `vip_id` (at `key`) with one over `ids` as the
/// daemon does: writes the idle buffer, then flips the VIP to it.
fn replace_table(lb: &mut Balancer, key: lb_common::VipKey, vip_id: u32, ids: &[u32]) {
    lb.write_ring(vip_id, 1, &ring(ids, test_sizes().ring_size))
        .unwrap();
    lb.add_vip(
        key,
        VipInfo {
            active_ring: 1,
            ..vip(vip_id)
        },
    )
    .unwrap();
}

fn vip(id: u32) -> VipInfo {
    VipInfo {
        vip_id: id,
        ..VipInfo::default()
    }
}

/// A balancer in a private network namespace with the VIPs above.
fn setup() -> Option<Balancer> {
    setup_sized(test_sizes())
}

fn setup_sized(sizes: Sizes) -> Option<Balancer> {
    root_env("packet tests")?;
    private_netns().unwrap();
    let mut lb = Balancer::load(sizes).unwrap();
    lb.set_config(config(sizes.ring_size)).unwrap();
    for (id, addr, vip_id) in backends() {
        lb.set_backend(id, backend(addr, 0, vip_id)).unwrap();
    }
    let n = sizes.ring_size;
    for (key, id, ids) in [
        (vip_key(ip("10.100.0.1"), 80, PROTO_TCP), WEB, vec![1, 2, 3]),
        (vip_key(ip("10.100.0.1"), 53, PROTO_UDP), DNS, vec![4, 5]),
        (
            vip_key(ip("fd00:100::1"), 80, PROTO_TCP),
            WEB6,
            vec![10, 11],
        ),
        (
            vip_key(ip("10.100.0.2"), 80, PROTO_TCP),
            MIXED,
            vec![12, 13],
        ),
        (vip_key(ip("10.100.0.3"), 0, PROTO_TCP), ANY, vec![6]),
        (vip_key(ip("10.100.0.4"), 80, PROTO_TCP), EMPTY, vec![]),
    ] {
        lb.write_ring(id, 0, &ring(&ids, n)).unwrap();
        lb.add_vip(key, vip(id)).unwrap();
    }
    Some(lb)
}

fn hash(f: &Flow) -> u32 {
    flow_hash(&f.key(), &KEY) as u32
}

/// The backend the ring of a VIP with `ids` picks for flow `f`.
fn pick(f: &Flow, ids: &[u32]) -> u32 {
    ids[(hash(f) % test_sizes().ring_size) as usize % ids.len()]
}

fn addr_of(id: u32) -> IpAddr {
    backends().into_iter().find(|(i, _, _)| *i == id).unwrap().1
}

fn vip_of(id: u32) -> u32 {
    backends().into_iter().find(|(i, _, _)| *i == id).unwrap().2
}

fn outer_src(dst: IpAddr, h: u32) -> IpAddr {
    match dst {
        IpAddr::V4(_) => IpAddr::V4(outer_src_v4(SRC_V4, SRC_V4_BITS, h)),
        IpAddr::V6(_) => IpAddr::V6(outer_src_v6(SRC_V6, SRC_V6_BITS, h)),
    }
}

/// Runs `frame` and asserts it left encapsulated to backend `id`, byte for byte.
fn assert_encap(lb: &Balancer, frame: &[u8], f: &Flow, id: u32) {
    assert_encap_to(lb, frame, f, addr_of(id));
}

/// Runs `frame` and asserts it left encapsulated to `dst`, byte for byte.
fn assert_encap_to(lb: &Balancer, frame: &[u8], f: &Flow, dst: IpAddr) {
    let out = lb.run(frame).unwrap();
    assert_eq!(out.action, XDP_TX, "counters: {:?}", lb.counters());
    let h = hash(f);
    let expected = expected_encap(
        frame,
        &Encap {
            dmac: GATEWAY_MAC,
            smac: LB_MAC,
            src: outer_src(dst, h),
            dst,
            hash: h,
        },
    );
    assert_eq!(
        out.data, expected,
        "output differs from the expected encapsulation"
    );
    assert_outer_checksum(&out.data);
}

fn assert_outer_checksum(frame: &[u8]) {
    let l3 = &frame[ip_offset(frame)..];
    if l3[0] >> 4 == 4 {
        let (h, _) = Ipv4Header::from_slice(l3).unwrap();
        assert_eq!(
            h.header_checksum,
            h.calc_header_checksum(),
            "outer IPv4 checksum"
        );
    }
}

fn assert_passed_unchanged(lb: &Balancer, frame: &[u8]) {
    let out = lb.run(frame).unwrap();
    assert_eq!(out.action, XDP_PASS, "counters: {:?}", lb.counters());
    assert_eq!(out.data, frame, "a passed packet must be untouched");
}

#[test]
fn tcp_v4_vip_to_v4_backend() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.10", 40000, "10.100.0.1", 80);
    let want = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, want);
    assert_eq!(lb.flow(&f.key()).unwrap().backend, want);
    // The next segment hits the flow table.
    assert_encap(&lb, &f.packet("A", b"GET / HTTP/1.1\r\n\r\n"), &f, want);
    assert_eq!(lb.counter(counter::FLOW_HIT), 1);
    assert_eq!(lb.counter(counter::NEW_FLOW), 1);
    let s = lb.vip_stats(WEB);
    assert_eq!((s.packets, s.new_flows), (2, 1));
    assert_eq!(lb.backend_stats(want).packets, 2);
    let frame = f.packet("A", b"GET / HTTP/1.1\r\n\r\n");
    let _ = lb.run(&frame).unwrap();
    assert_eq!(
        lb.vip_stats(WEB).bytes,
        (f.packet("S", b"").len() - 14 + 2 * (frame.len() - 14)) as u64
    );
}

#[test]
fn udp_v4_vip_to_v4_backend() {
    let Some(lb) = setup() else { return };
    let f = Flow::udp("192.0.2.10", 5353, "10.100.0.1", 53);
    let want = pick(&f, &[4, 5]);
    assert_encap(&lb, &f.packet("", b"query"), &f, want);
    assert_encap(&lb, &f.packet("", b"query 2"), &f, want);
    assert_eq!(lb.counter(counter::FLOW_HIT), 1);
}

#[test]
fn flows_spread_over_backends_as_the_ring_says() {
    let Some(lb) = setup() else { return };
    let mut seen = std::collections::BTreeMap::new();
    for port in 1000..1200 {
        let f = Flow::tcp("192.0.2.10", port, "10.100.0.1", 80);
        let want = pick(&f, &[1, 2, 3]);
        assert_encap(&lb, &f.packet("S", b""), &f, want);
        *seen.entry(want).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "all three backends get flows: {seen:?}");
}

#[test]
fn a_vip_with_a_table_of_its_own_size_hashes_new_flows_to_its_slots() {
    let Some(mut lb) = setup() else { return };
    // A table of 257 slots where each buffer has room for 1009.
    const SMALL: u32 = 257;
    let ids = [1, 2, 3];
    let key = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    lb.write_ring(WEB, 1, &ring(&ids, SMALL)).unwrap();
    let info = VipInfo {
        active_ring: 1,
        ring_size: SMALL,
        ..vip(WEB)
    };
    lb.add_vip(key, info).unwrap();
    assert_eq!(lb.vip_info(&key).unwrap().ring_size, SMALL);
    let mut differ = 0;
    for port in 1000..1060 {
        let f = Flow::tcp("192.0.2.10", port, "10.100.0.1", 80);
        let want = ids[(hash(&f) % SMALL) as usize % ids.len()];
        // The room's size would send some elsewhere.
        differ += usize::from(want != pick(&f, &ids));
        assert_encap_to(&lb, &f.packet("S", b""), &f, addr_of(want));
        assert_eq!(lb.flow(&f.key()).unwrap().backend, want);
    }
    assert!(differ > 0, "the sizes agree on every flow");
    // A VIP written with no size gets the room's.
    lb.add_vip(key, vip(WEB)).unwrap();
    assert_eq!(lb.vip_info(&key).unwrap().ring_size, test_sizes().ring_size);
}

#[test]
fn backend_slots_past_16_bits_are_reached_through_the_tables_members() {
    // Slot ids need more than the 16 bits of a table slot: the slot holds
    // an index into the buffer's members, which hold the ids.
    let Some(mut lb) = setup_sized(Sizes {
        max_backends: 70_010,
        ..test_sizes()
    }) else {
        return;
    };
    let high = [
        (70_001, "10.0.1.71"),
        (70_009, "10.0.1.79"),
        (3, "10.0.1.3"),
    ];
    for (id, a) in high {
        lb.set_backend(id, backend(ip(a), 0, WEB)).unwrap();
    }
    let ids: Vec<u32> = high.iter().map(|h| h.0).collect();
    replace_table(&mut lb, vip_key(ip("10.100.0.1"), 80, PROTO_TCP), WEB, &ids);
    let mut seen = std::collections::BTreeSet::new();
    for port in 1000..1100 {
        let f = Flow::tcp("192.0.2.10", port, "10.100.0.1", 80);
        let want = pick(&f, &ids);
        let to = high.iter().find(|h| h.0 == want).unwrap().1;
        assert_encap_to(&lb, &f.packet("S", b""), &f, ip(to));
        // The flow remembers the whole id, and keeps to it.
        assert_eq!(lb.flow(&f.key()).unwrap().backend, want);
        assert_encap_to(&lb, &f.packet("A", b"x"), &f, ip(to));
        seen.insert(want);
    }
    assert_eq!(seen.len(), 3, "every backend gets flows: {seen:?}");
    // Read back as written (what a restarted daemon adopts).
    assert_eq!(
        lb.dp().read_ring(WEB, 1, test_sizes().ring_size).unwrap(),
        ring(&ids, test_sizes().ring_size)
    );
}

#[test]
fn slot_writes_held_while_applying_are_made_before_the_table_that_names_them() {
    // While the daemon applies a pool, slot records, limits and cleared
    // statistics are held and written in batches; any other write (here
    // the table) makes them first, so the kernel sees the daemon's order.
    let Some(mut lb) = setup() else { return };
    let fresh = [(40, "10.0.1.140"), (41, "10.0.1.141")];
    let present = |lb: &mut Balancer, id: u32| {
        lb.dp()
            .backends()
            .unwrap()
            .iter()
            .any(|(i, b)| *i == id && b.addr == addr_words(addr_of_slot(id)).0)
    };
    lb.dp().defer_writes(true).unwrap();
    for (id, a) in fresh {
        lb.set_backend(id, backend(ip(a), 0, WEB)).unwrap();
        lb.dp().clear_stats(None, Some(id)).unwrap();
    }
    assert!(!present(&mut lb, 40) && !present(&mut lb, 41), "held");
    let ids = [40, 41];
    lb.write_ring(WEB, 1, &ring(&ids, test_sizes().ring_size))
        .unwrap();
    assert!(
        present(&mut lb, 40) && present(&mut lb, 41),
        "made before the table"
    );
    // Held again, until the VIP record that makes the table live.
    lb.set_backend(42, backend(ip("10.0.1.142"), 0, WEB))
        .unwrap();
    assert!(!present(&mut lb, 42), "held");
    // (The VIP's address is marked already: the record alone flips it.)
    let key = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    let info = VipInfo {
        active_ring: 1,
        ..vip(WEB)
    };
    lb.dp().set_vip(&key, &info).unwrap();
    assert!(present(&mut lb, 42), "made before the VIP record");
    for port in 1000..1020 {
        let f = Flow::tcp("192.0.2.10", port, "10.100.0.1", 80);
        assert_encap_to(&lb, &f.packet("S", b""), &f, addr_of_slot(pick(&f, &ids)));
    }
    // Held again, until deferring ends.
    lb.set_backend(43, backend(ip("10.0.1.143"), 0, WEB))
        .unwrap();
    assert!(!present(&mut lb, 43), "held");
    lb.dp().defer_writes(false).unwrap();
    assert!(present(&mut lb, 43), "made when deferring ends");
}

/// The address the test above gives slot `id`.
fn addr_of_slot(id: u32) -> IpAddr {
    ip(&format!("10.0.1.{}", 100 + id))
}

#[test]
fn tcp_v6_vip_to_v6_backend() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("2001:db8::10", 40000, "fd00:100::1", 80);
    let want = pick(&f, &[10, 11]);
    assert_encap(&lb, &f.packet("S", b""), &f, want);
    assert_encap(&lb, &f.packet("A", b"hello"), &f, want);
}

#[test]
fn udp_v6_vip_to_v6_backend() {
    let Some(mut lb) = setup() else { return };
    lb.write_ring(WEB6, 1, &ring(&[10, 11], test_sizes().ring_size))
        .unwrap();
    let key = vip_key(ip("fd00:100::1"), 53, PROTO_UDP);
    lb.add_vip(key, vip(WEB6)).unwrap();
    let f = Flow::udp("2001:db8::10", 40000, "fd00:100::1", 53);
    let want = pick(&f, &[10, 11]);
    assert_encap(&lb, &f.packet("", b"q"), &f, want);
}

#[test]
fn v4_vip_to_v6_backend_is_4in6() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.10", 40001, "10.100.0.2", 80);
    let want = pick(&f, &[12, 13]);
    let mut frame = f.packet("S", b"");
    set_tos_v4(&mut frame, 0xb8); // DSCP EF: copied to the outer traffic class
    assert_encap(&lb, &frame, &f, want);
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.data[14] >> 4, 6);
    assert_eq!((out.data[14] << 4) | (out.data[15] >> 4), 0xb8);
    assert_eq!(out.data[14 + 6], 4, "next header IPIP");
}

#[test]
fn dscp_and_df_are_copied_to_the_outer_ipv4_header() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.10", 40002, "10.100.0.1", 80);
    let mut frame = f.packet("S", b"");
    set_tos_v4(&mut frame, 0x2a);
    let want = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &frame, &f, want);
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.data[15], 0x2a);
    assert_eq!(out.data[20] & 0x40, frame[20] & 0x40, "DF copied");
}

#[test]
fn outer_source_varies_per_flow_within_the_configured_prefix() {
    let Some(lb) = setup() else { return };
    let mut sources = std::collections::BTreeSet::new();
    for port in 2000..2050 {
        let f = Flow::tcp("192.0.2.10", port, "10.100.0.1", 80);
        let out = lb.run(&f.packet("S", b"")).unwrap();
        let src = Ipv4Addr::new(out.data[26], out.data[27], out.data[28], out.data[29]);
        assert_eq!(
            &src.octets()[..3],
            &SRC_V4.octets()[..3],
            "inside 10.255.0.0/24"
        );
        sources.insert(src);
    }
    assert!(sources.len() > 30, "sources vary: {}", sources.len());
}

#[test]
fn established_flow_keeps_backend_after_table_replaced_new_syn_follows_new_table() {
    let Some(mut lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.20", 41000, "10.100.0.1", 80);
    let old = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, old);
    // Replace the table: only some other backend remains. Write the idle
    // buffer, then flip, as the daemon does.
    let other = if old == 1 { 2 } else { 1 };
    let key = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    replace_table(&mut lb, key, WEB, &[other]);
    assert_eq!(lb.vip_info(&key).unwrap().active_ring, 1);
    // The established connection stays.
    assert_encap(&lb, &f.packet("A", b"more"), &f, old);
    // A new connection follows the new table.
    let g = f.with_sport(41001);
    assert_encap(&lb, &g.packet("S", b""), &g, other);
    // A SYN on the old 5-tuple (retransmitted, spoofed or reused) keeps the
    // entry while its backend can take it: a running connection never moves.
    assert_encap(&lb, &f.packet("S", b""), &f, old);
    assert_eq!(lb.counter(counter::SYN_KEPT_FLOW), 1);
    assert_eq!(lb.flow(&f.key()).unwrap().backend, old);
    // Once that backend is down, a SYN there is scheduled anew and replaces
    // the entry.
    lb.set_backend(old, backend(addr_of(old), BACKEND_F_DOWN, vip_of(old)))
        .unwrap();
    assert_encap(&lb, &f.packet("S", b""), &f, other);
    assert_eq!(lb.flow(&f.key()).unwrap().backend, other);
    assert_eq!(lb.counter(counter::SYN_KEPT_FLOW), 1);
}

#[test]
fn a_syn_seen_again_after_a_second_counts_as_a_retransmission_for_its_backend() {
    // Passive health: the client got no SYN-ACK and sent its SYN again.
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.21", 41000, "10.100.0.1", 80);
    let id = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, id);
    // At once (a duplicate, not a retransmission): kept, not counted.
    assert_encap(&lb, &f.packet("S", b""), &f, id);
    assert_eq!(lb.backend_stats(id).syn_retransmits, 0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_encap(&lb, &f.packet("S", b""), &f, id);
    assert_eq!(lb.backend_stats(id).syn_retransmits, 1);
    assert_eq!(lb.counter(counter::SYN_KEPT_FLOW), 2);
    // Repeats of a pending handshake are no new flows.
    assert_eq!(lb.backend_stats(id).new_flows, 1);
    // A connection that completed (its ACK came) and whose 4-tuple is used
    // again later (NAT, a busy client): its SYN is no retransmission.
    let g = f.with_sport(41001);
    let gid = pick(&g, &[1, 2, 3]);
    assert_encap(&lb, &g.packet("S", b""), &g, gid);
    assert_encap(&lb, &g.packet("A", b""), &g, gid);
    let before = lb.vip_stats(WEB).new_flows;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_encap(&lb, &g.packet("S", b""), &g, gid);
    // ... but a new connection, whose handshake is now the pending one:
    // its own retransmission a second later counts.
    assert_eq!(lb.vip_stats(WEB).new_flows, before + 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_encap(&lb, &g.packet("S", b""), &g, gid);
    assert_eq!(
        lb.backend_stats(gid).syn_retransmits,
        u64::from(gid == id) + 1
    );
    assert_eq!(lb.vip_stats(WEB).new_flows, before + 1);
    let total: u64 = [1, 2, 3]
        .iter()
        .map(|i| lb.backend_stats(*i).syn_retransmits)
        .sum();
    assert_eq!(total, 2);
}

#[test]
fn a_syn_whose_handshake_never_completed_leaves_a_backend_that_fails_its_checks() {
    // The client retransmits its SYN to a backend that was taken out (its
    // probes, or passive health): scheduled anew. A completed connection
    // stays where it is whatever SYN arrives.
    let Some(mut lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.22", 41000, "10.100.0.1", 80);
    let old = pick(&f, &[1, 2, 3]);
    let other = if old == 1 { 2 } else { 1 };
    let g = f.with_sport(41001);
    let gold = pick(&g, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, old);
    assert_encap(&lb, &g.packet("S", b""), &g, gold);
    assert_encap(&lb, &g.packet("A", b""), &g, gold);
    // Both backends fail their checks; the table now names `other` only.
    let key = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    replace_table(&mut lb, key, WEB, &[other]);
    for id in [old, gold] {
        if id != other {
            lb.set_backend(
                id,
                backend(addr_of(id), lb_common::BACKEND_F_UNHEALTHY, vip_of(id)),
            )
            .unwrap();
        }
    }
    assert_encap(&lb, &f.packet("S", b""), &f, other);
    assert_eq!(lb.flow(&f.key()).unwrap().backend, other);
    if gold != other {
        assert_encap(&lb, &g.packet("S", b""), &g, gold);
        assert_encap(&lb, &g.packet("A", b""), &g, gold);
    }
}

/// Backend shares of `flows` new TCP flows to 10.100.0.1:80 with the WEB
/// VIP scheduled by `info` over a table holding 1, 2, 3, 3 (weights 1, 1, 2).
fn shares_under(info: VipInfo, flows: &[Flow]) -> (Balancer, [f64; 3]) {
    // A table made for 1M flows, of which a quarter is in use at first
    // (`flow_sets_start`): at 30 000 flows none finds its set full (a full
    // set would give up a flow the test reads back).
    let mut lb = setup_sized(Sizes {
        flows: 1 << 20,
        ..test_sizes()
    })
    .expect("root");
    let n = test_sizes().ring_size;
    let table: Vec<u32> = (0..n).map(|i| [1, 2, 3, 3][i as usize % 4]).collect();
    lb.write_ring(WEB, 1, &table).unwrap();
    lb.add_vip(
        vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
        VipInfo {
            active_ring: 1,
            ..info
        },
    )
    .unwrap();
    let mut count = [0u32; 3];
    for f in flows {
        assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_TX);
        count[lb.flow(&f.key()).unwrap().backend as usize - 1] += 1;
    }
    let total = flows.len() as f64;
    (lb, count.map(|c| c as f64 / total))
}

fn assert_shares_near(got: [f64; 3], want: [f64; 3]) {
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 0.02,
            "shares {got:?}, weights say {want:?}"
        );
    }
}

#[test]
fn random_scheduler_follows_the_weights_and_keeps_established_flows() {
    if root_env("packet tests").is_none() {
        return;
    }
    let flows: Vec<Flow> = (0..10_000u32).map(client).collect();
    let info = VipInfo {
        vip_id: WEB,
        scheduler: lb_common::scheduler::RANDOM,
        ..VipInfo::default()
    };
    let (lb, shares) = shares_under(info, &flows);
    assert_shares_near(shares, [0.25, 0.25, 0.5]);
    // Not the flow hash: the same flows land elsewhere than Maglev puts them.
    let moved = flows[..1000]
        .iter()
        .filter(|f| {
            let slot = (hash(f) % test_sizes().ring_size) as usize;
            lb.flow(&f.key()).unwrap().backend != [1, 2, 3, 3][slot % 4]
        })
        .count();
    assert!(moved > 300, "{moved} of 1000 differ from the hash's choice");
    // Established flows keep the backend they were given.
    for f in &flows[..200] {
        let id = lb.flow(&f.key()).unwrap().backend;
        assert_encap(&lb, &f.packet("A", b"more"), f, id);
    }
}

#[test]
fn round_robin_walks_the_sequence_on_each_cpu_and_known_flows_do_not_advance_it() {
    let Some(mut lb) = setup() else { return };
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    // The daemon's smooth sequence for weights 5, 1, 1 (backends 1, 2, 3):
    // the first seven slots; the rest of the table empty.
    let seq = [1, 1, 2, 1, 3, 1, 1];
    let n = test_sizes().ring_size;
    let mut table = vec![NO_BACKEND; n as usize];
    table[..seq.len()].copy_from_slice(&seq);
    lb.write_ring(WEB, 1, &table).unwrap();
    let rr = |id| VipInfo {
        vip_id: id,
        active_ring: 1,
        scheduler: lb_common::scheduler::ROUND_ROBIN,
        seq_len: seq.len() as u32,
        ..VipInfo::default()
    };
    lb.add_vip(vip_key(ip("10.100.0.1"), 80, PROTO_TCP), rr(WEB))
        .unwrap();
    for i in 0..21u16 {
        let f = Flow::tcp("192.0.2.50", 20000 + i, "10.100.0.1", 80);
        assert_encap(&lb, &f.packet("S", b""), &f, seq[i as usize % seq.len()]);
        // Its next packets keep the backend and leave the sequence alone.
        assert_encap(&lb, &f.packet("A", b""), &f, seq[i as usize % seq.len()]);
    }
    // UDP: the pick made ahead of the flow-table lookup does not move the
    // sequence for a packet of a known flow.
    let dns_seq = [4, 5];
    let mut table = vec![NO_BACKEND; n as usize];
    table[..2].copy_from_slice(&dns_seq);
    lb.write_ring(DNS, 1, &table).unwrap();
    lb.add_vip(
        vip_key(ip("10.100.0.1"), 53, PROTO_UDP),
        VipInfo {
            seq_len: 2,
            ..rr(DNS)
        },
    )
    .unwrap();
    let a = Flow::udp("192.0.2.51", 5000, "10.100.0.1", 53);
    let b = a.with_sport(5001);
    assert_encap(&lb, &a.packet("", b"q"), &a, 4);
    // Were the sequence moved by this known packet, `b` would get 4 again.
    assert_encap(&lb, &a.packet("", b"q"), &a, 4);
    assert_encap(&lb, &b.packet("", b"q"), &b, 5);
}

#[test]
fn source_hash_sends_every_connection_of_a_client_prefix_to_one_backend() {
    if root_env("packet tests").is_none() {
        return;
    }
    // A /24 per client: 10 000 client networks, three ports each.
    let flows: Vec<Flow> = (0..10_000u32)
        .flat_map(|i| {
            let net = Ipv4Addr::from(0x6440_0000 + (i << 8));
            (0..3u16).map(move |p| {
                let host = Ipv4Addr::from(u32::from(net) + 1 + u32::from(p) * 7);
                Flow::tcp(&host.to_string(), 30000 + p, "10.100.0.1", 80)
            })
        })
        .collect();
    let info = VipInfo {
        vip_id: WEB,
        scheduler: lb_common::scheduler::SOURCE_HASH,
        src_prefix_v4: 24,
        src_prefix_v6: 64,
        ..VipInfo::default()
    };
    let (lb, shares) = shares_under(info, &flows);
    assert_shares_near(shares, [0.25, 0.25, 0.5]);
    for chunk in flows.chunks(3) {
        let ids: Vec<u32> = chunk
            .iter()
            .map(|f| lb.flow(&f.key()).unwrap().backend)
            .collect();
        assert!(
            ids.iter().all(|i| *i == ids[0]),
            "one client network, several backends: {ids:?}"
        );
        // Exactly the table at the keyed hash of the network's /24, as on
        // every node that shares the secret.
        let mut k = lb_common::FlowKey {
            family: lb_common::AF_INET,
            ..Default::default()
        };
        let IpAddr::V4(src) = chunk[0].src else {
            unreachable!()
        };
        k.src[0] = u32::from_ne_bytes((u32::from(src) & 0xffff_ff00).to_be_bytes());
        let slot = (flow_hash(&k, &KEY) as u32 % test_sizes().ring_size) as usize;
        assert_eq!(ids[0], [1, 2, 3, 3][slot % 4]);
    }
}

#[test]
fn a_new_flow_never_goes_to_a_backend_that_cannot_take_it() {
    // The table still names a backend that is down, failing its checks,
    // or whose slot now serves another VIP (the daemon takes such backends
    // out of the tables first; the data path checks all the same).
    let Some(mut lb) = setup() else { return };
    let key = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    replace_table(&mut lb, key, WEB, &[1]);
    for (i, (flags, vip_id)) in [
        (BACKEND_F_DOWN, WEB),
        (lb_common::BACKEND_F_UNHEALTHY, WEB),
        (0, DNS),
    ]
    .into_iter()
    .enumerate()
    {
        lb.set_backend(1, backend(addr_of(1), flags, vip_id))
            .unwrap();
        let f = Flow::tcp("192.0.2.25", 41100 + i as u16, "10.100.0.1", 80);
        let out = lb.run(&f.packet("S", b"")).unwrap();
        assert_eq!(out.action, XDP_DROP, "case {i}: {:?}", lb.counters());
        assert_eq!(lb.counter(counter::DROP_NO_BACKEND), i as u64 + 1);
        assert!(lb.flow(&f.key()).is_none());
    }
    lb.set_backend(1, backend(addr_of(1), 0, WEB)).unwrap();
    let f = Flow::tcp("192.0.2.25", 41199, "10.100.0.1", 80);
    assert_encap(&lb, &f.packet("S", b""), &f, 1);
}

#[test]
fn rst_creates_no_flow_entry() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.30", 42000, "10.100.0.1", 80);
    let want = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("R", b""), &f, want);
    assert!(lb.flow(&f.key()).is_none(), "RST must not create an entry");
    assert_eq!(lb.flow_count(), 0);
    // A mid-stream segment with no entry (e.g. after a restart) does create one.
    assert_encap(&lb, &f.packet("A", b""), &f, want);
    assert!(lb.flow(&f.key()).is_some());
}

#[test]
fn rst_ack_creates_no_entry_and_a_known_flows_rst_follows_its_entry() {
    let Some(mut lb) = setup() else { return };
    // RST+ACK (how a host usually resets), IPv6: forwarded, no entry.
    let v6 = Flow::tcp("2001:db8::30", 42001, "fd00:100::1", 80);
    let want6 = pick(&v6, &[10, 11]);
    assert_encap(&lb, &v6.packet("RA", b""), &v6, want6);
    assert!(
        lb.flow(&v6.key()).is_none(),
        "RST+ACK must not create an entry"
    );
    // A known flow's RST goes where the flow went, after a table change,
    // and the entry is not replaced.
    let f = Flow::tcp("192.0.2.31", 42002, "10.100.0.1", 80);
    let old = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, old);
    let other = if old == 1 { 2 } else { 1 };
    replace_table(
        &mut lb,
        vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
        WEB,
        &[other],
    );
    assert_encap(&lb, &f.packet("RA", b""), &f, old);
    assert_eq!(lb.flow(&f.key()).unwrap().backend, old);
    assert_eq!(lb.flow_count(), 1);
}

#[test]
fn flows_per_backend_are_counted_in_the_table() {
    // What `lb status` shows as active flows: the daemon reads the flow
    // table chunk by chunk; 10 000 flows spread over backends and over the
    // table's sets must all be counted, each on its backend. (A table
    // made for 262 144 flows, a quarter of it in use at first: no set of
    // eight fills with 10 000.)
    let Some(lb) = setup_sized(Sizes {
        flows: 262_144,
        ..test_sizes()
    }) else {
        return;
    };
    let n = 10000u16;
    let flows: Vec<Flow> = (0..n)
        .map(|i| Flow::tcp("192.0.2.70", 10000 + i, "10.100.0.1", 80))
        .collect();
    for f in &flows {
        assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_TX);
    }
    let table = lb.flows();
    let mut want = std::collections::HashMap::new();
    for f in &flows {
        *want
            .entry(table.get(&f.key()).unwrap().unwrap().backend)
            .or_insert(0u64) += 1;
    }
    let flows = match lb.ebpf().map(lb_common::maps::FLOWS).unwrap() {
        aya::maps::Map::ArrayOfMaps(d) => d,
        other => panic!("FLOWS is {other:?}"),
    };
    let counted =
        lb_userspace::dataplane::count_flows_in(flows, 60_000_000_000, usize::MAX).unwrap();
    assert_eq!(counted, want);
    assert_eq!(counted.values().sum::<u64>(), u64::from(n));
    // Idle ones are not counted (stamped now, asked for none idle longer
    // than 0 s plus the data path's 1 s granularity: all count).
    let none = lb_userspace::dataplane::count_flows_in(flows, 0, usize::MAX).unwrap();
    assert_eq!(none.values().sum::<u64>(), u64::from(n));
}

/// The flood test, with one flow-table insert per `interval_ns` per CPU
/// allowed (0: no limit). With `check_live`, each live connection's packet during the flood must
/// reach its backend.
fn flood_against_live_connections(
    interval_ns: u64,
    check_live: bool,
) -> Option<(Balancer, Vec<(Flow, u32)>)> {
    // A 1024-entry table, 50 live connections, then the VIP's table changes
    // (a new backend takes every new flow) and ten times the table's size
    // of distinct spoofed SYNs arrive, with the live connections' packets
    // among them.
    let sizes = Sizes {
        flows: 1024,
        ..test_sizes()
    };
    let mut lb = setup_sized(sizes)?;
    let mut cfg = config(sizes.ring_size);
    cfg.new_flow_interval_ns = interval_ns;
    cfg.new_flow_tolerance_ns = 100 * interval_ns;
    lb.set_config(cfg).unwrap();
    let mut live = Vec::new();
    replace_table(
        &mut lb,
        vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
        WEB,
        &[1, 2],
    );
    for i in 0..50u16 {
        let f = Flow::tcp("192.0.2.30", 20000 + i, "10.100.0.1", 80);
        let id = pick(&f, &[1, 2]);
        assert_encap(&lb, &f.packet("S", b""), &f, id);
        assert_encap(&lb, &f.packet("A", b"hello"), &f, id);
        live.push((f, id));
    }
    // The idle buffer again (replace_table writes buffer 1): flip back to 0.
    lb.write_ring(WEB, 0, &ring(&[3], sizes.ring_size)).unwrap();
    lb.add_vip(vip_key(ip("10.100.0.1"), 80, PROTO_TCP), vip(WEB))
        .unwrap();
    let flood = 10 * sizes.flows;
    for n in 0..flood {
        let src = Ipv4Addr::from(0xc633_0000 | n); // 198.51.0.0/16
        let f = Flow::tcp(
            &src.to_string(),
            1024 + (n % 50000) as u16,
            "10.100.0.1",
            80,
        );
        // Every packet of the flood is still forwarded, by the table. Each
        // spoofed SYN is followed by an ACK (the data path checks no
        // sequence numbers), so that its entry looks as used as a live
        // connection's to the flow table, which otherwise gives up entries
        // seen in one packet first.
        assert_encap(&lb, &f.packet("S", b""), &f, 3);
        assert_encap(&lb, &f.packet("A", b""), &f, 3);
        if check_live && n % 1000 == 999 {
            let (f, id) = &live[(n / 1000) as usize % live.len()];
            assert_encap(&lb, &f.packet("A", b"still here"), f, *id);
        }
    }
    Some((lb, live))
}

#[test]
fn a_syn_flood_larger_than_the_flow_table_moves_no_live_connection() {
    // 1000 inserts a second per CPU, 100 at once: the flood is forwarded by
    // the Maglev table but almost none of it is stored, so the live
    // connections keep their entries and their backends.
    let start = std::time::Instant::now();
    let Some((lb, live)) = flood_against_live_connections(1_000_000, true) else {
        return;
    };
    for (f, id) in &live {
        assert_encap(&lb, &f.packet("A", b"after the flood"), f, *id);
        // A SYN on a live 4-tuple keeps its backend over the rate too.
        assert_encap(&lb, &f.packet("S", b""), f, *id);
    }
    let allowed = 100 + 50 + start.elapsed().as_millis() as u64;
    let not_stored = lb.counter(counter::NEW_FLOW_NOT_STORED);
    assert!(
        not_stored >= 10 * 1024 - allowed,
        "{not_stored} of the flood not stored, allowed {allowed}"
    );
    assert!(lb.counter(counter::SYN_KEPT_FLOW) >= 50);
    assert!(lb.flow_count() as u64 <= 50 + allowed);
}

#[test]
fn without_an_insert_rate_a_syn_flood_evicts_live_connections() {
    // The same flood with no limit: the live connections' entries are
    // evicted, and their packets follow the changed table to the new
    // backend (what the limit above prevents).
    let Some((lb, live)) = flood_against_live_connections(0, false) else {
        return;
    };
    let moved = live
        .iter()
        .filter(|(f, _)| lb.flow(&f.key()).is_none())
        .count();
    assert!(
        moved > 40,
        "only {moved} of 50 live connections evicted; {:?}",
        lb.counters()
    );
    assert_eq!(lb.counter(counter::NEW_FLOW_NOT_STORED), 0);
    let (f, _) = &live[0];
    if lb.flow(&f.key()).is_none() {
        assert_encap(&lb, &f.packet("A", b"moved"), f, 3);
    }
}

#[test]
fn udp_flow_expires_after_idle_timeout() {
    // With the calibrated jiffies clock, and with the coarse clock the data
    // path falls back to before the daemon has calibrated it.
    for calibrated in [true, false] {
        let Some(mut lb) = setup() else { return };
        let n = test_sizes().ring_size;
        let mut cfg = config(n);
        cfg.udp_idle_timeout_ns = 200_000_000;
        if calibrated {
            lb.set_config(cfg).unwrap();
        } else {
            lb.set_config_raw(cfg).unwrap();
        }
        let f = Flow::udp("192.0.2.40", 43000, "10.100.0.1", 53);
        let first = pick(&f, &[4, 5]);
        assert_encap(&lb, &f.packet("", b"a"), &f, first);
        let other = if first == 4 { 5 } else { 4 };
        replace_table(
            &mut lb,
            vip_key(ip("10.100.0.1"), 53, PROTO_UDP),
            DNS,
            &[other],
        );
        // Within the timeout: the flow entry holds.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_encap(&lb, &f.packet("", b"b"), &f, first);
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Idle past the timeout: scheduled anew, from the new table.
        assert_encap(&lb, &f.packet("", b"c"), &f, other);
        assert_eq!(
            lb.counter(counter::UDP_FLOW_EXPIRED),
            1,
            "calibrated {calibrated}"
        );
        assert_eq!(lb.flow(&f.key()).unwrap().backend, other);
    }
}

#[test]
fn data_path_clock_tracks_clock_monotonic() {
    // What `lb status` and the UDP idle timeout rely on: the time the data
    // path stamps on a flow is the kernel's tick clock in CLOCK_MONOTONIC
    // nanoseconds. Calibrated (jiffies), it reads each tick's due time: at
    // most a tick behind CLOCK_MONOTONIC_COARSE and never ahead of
    // CLOCK_MONOTONIC. Uncalibrated, it is CLOCK_MONOTONIC_COARSE itself.
    // Both lag CLOCK_MONOTONIC by more than a tick while the host delays
    // timer ticks (a loaded VM): that lag is the kernel's, not ours, so the
    // coarse clock read around the packet is the reference.
    let Some(mut lb) = setup() else { return };
    let jiffy = lb.clock.jiffy_ns;
    assert!(
        (1_000_000..=50_000_000).contains(&jiffy),
        "a tick of {jiffy} ns is no kernel's"
    );
    // Slack for the calibration's own sampling (edges taken at most 50 µs
    // late) and the reads around the packet.
    const SLACK: u64 = 200_000;
    for (i, calibrated) in [true, false].into_iter().enumerate() {
        let cfg = config(test_sizes().ring_size);
        if calibrated {
            lb.set_config(cfg).unwrap();
        } else {
            lb.set_config_raw(cfg).unwrap();
        }
        for n in 0..50u16 {
            let f = Flow::udp("192.0.2.41", 43000 + i as u16 * 100 + n, "10.100.0.1", 53);
            let coarse_before = lb_common::monotonic_coarse_ns();
            lb.run(&f.packet("", b"t")).unwrap();
            let after = lb_common::monotonic_ns();
            let coarse_after = lb_common::monotonic_coarse_ns();
            // The low bits of the stamp are the flow's flags, not time.
            let seen = lb.flow(&f.key()).unwrap().last_seen_ns & !lb_common::FLOW_FLAGS;
            let (low, high) = if calibrated {
                (coarse_before.saturating_sub(jiffy + SLACK), after)
            } else {
                (coarse_before & !lb_common::FLOW_FLAGS, coarse_after)
            };
            assert!(
                (low..=high).contains(&seen),
                "calibrated {calibrated}, packet {n}: stamped {seen}, expected \
                 {low}..={high} (CLOCK_MONOTONIC_COARSE {coarse_before}..{coarse_after}, \
                 CLOCK_MONOTONIC {after} after, tick {jiffy} ns, clock {:?})",
                lb.clock
            );
            if n % 10 == 9 {
                // Spread the packets over a few ticks.
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
        }
    }
}

#[test]
fn flow_to_a_down_backend_is_rescheduled() {
    let Some(mut lb) = setup() else { return };
    let n = test_sizes().ring_size;
    let f = Flow::tcp("192.0.2.50", 44000, "10.100.0.1", 80);
    let first = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, first);
    let rest: Vec<u32> = [1, 2, 3].into_iter().filter(|i| *i != first).collect();
    lb.set_backend(
        first,
        backend(addr_of(first), BACKEND_F_DOWN, vip_of(first)),
    )
    .unwrap();
    replace_table(
        &mut lb,
        vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
        WEB,
        &rest,
    );
    let want = rest[(hash(&f) % n) as usize % rest.len()];
    assert_encap(&lb, &f.packet("A", b""), &f, want);
    assert_eq!(lb.counter(counter::RESCHEDULED_DOWN), 1);
}

#[test]
fn unhealthy_backend_keeps_its_tcp_flows_and_loses_its_udp_flows() {
    let Some(mut lb) = setup() else { return };
    let n = test_sizes().ring_size;
    let t = Flow::tcp("192.0.2.52", 44002, "10.100.0.1", 80);
    let u = Flow::udp("192.0.2.52", 44002, "10.100.0.1", 53);
    let (tb, ub) = (pick(&t, &[1, 2, 3]), pick(&u, &[4, 5]));
    assert_encap(&lb, &t.packet("S", b""), &t, tb);
    assert_encap(&lb, &u.packet("", b"q"), &u, ub);
    // Both backends fail their health checks: out of the tables, flagged.
    for (id, vip_id, ids, key) in [
        (
            tb,
            WEB,
            &[1u32, 2, 3][..],
            vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
        ),
        (
            ub,
            DNS,
            &[4u32, 5][..],
            vip_key(ip("10.100.0.1"), 53, PROTO_UDP),
        ),
    ] {
        lb.set_backend(
            id,
            backend(addr_of(id), lb_common::BACKEND_F_UNHEALTHY, vip_id),
        )
        .unwrap();
        let rest: Vec<u32> = ids.iter().copied().filter(|i| *i != id).collect();
        replace_table(&mut lb, key, vip_id, &rest);
    }
    // The TCP connection stays where it is.
    assert_encap(&lb, &t.packet("A", b"more"), &t, tb);
    // The UDP flow moves to a healthy backend.
    let rest: Vec<u32> = [4, 5].into_iter().filter(|i| *i != ub).collect();
    assert_encap(
        &lb,
        &u.packet("", b"q2"),
        &u,
        rest[(hash(&u) % n) as usize % rest.len()],
    );
    assert_eq!(lb.counter(counter::RESCHEDULED_DOWN), 1);
}

#[test]
fn flow_whose_slot_now_serves_another_vip_is_rescheduled() {
    let Some(mut lb) = setup() else { return };
    let n = test_sizes().ring_size;
    let f = Flow::tcp("192.0.2.51", 44001, "10.100.0.1", 80);
    let first = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, first);
    // The slot is released and handed to a backend of the DNS VIP.
    lb.set_backend(first, backend(ip("10.0.9.9"), 0, DNS))
        .unwrap();
    let rest: Vec<u32> = [1, 2, 3].into_iter().filter(|i| *i != first).collect();
    replace_table(
        &mut lb,
        vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
        WEB,
        &rest,
    );
    let want = rest[(hash(&f) % n) as usize % rest.len()];
    assert_encap(&lb, &f.packet("A", b""), &f, want);
    assert_eq!(lb.counter(counter::RESCHEDULED_DOWN), 1);
}

#[test]
fn flow_whose_slot_has_a_new_generation_is_rescheduled() {
    // Same VIP id, same flags: only the generation tells that the slot now
    // holds another backend (a removed VIP's successor can get both the id
    // and the slots).
    let Some(mut lb) = setup() else { return };
    let n = test_sizes().ring_size;
    let f = Flow::tcp("192.0.2.52", 44002, "10.100.0.1", 80);
    let first = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, first);
    assert_eq!(lb.flow(&f.key()).unwrap().gen, 0);
    let mut other = backend(ip("10.0.9.8"), 0, WEB);
    other.gen = 1;
    lb.set_backend(first, other).unwrap();
    let rest: Vec<u32> = [1, 2, 3].into_iter().filter(|i| *i != first).collect();
    replace_table(
        &mut lb,
        vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
        WEB,
        &rest,
    );
    let want = rest[(hash(&f) % n) as usize % rest.len()];
    assert_encap(&lb, &f.packet("A", b""), &f, want);
    assert_eq!(lb.counter(counter::RESCHEDULED_DOWN), 1);
    let v = lb.flow(&f.key()).unwrap();
    assert_eq!((v.backend, v.gen), (want, 0));
}

/// An IPv4 address in 10.200/16 whose `port`/TCP service has the filter bit of `vip`.
fn filter_twin(vip: lb_common::VipKey, port: u16) -> IpAddr {
    let want = vip_filter_bit(vip.addr, vip.port, vip.proto, vip.family);
    (0..=u16::MAX)
        .map(|i| IpAddr::from([10, 200, (i >> 8) as u8, i as u8]))
        .find(|a| {
            let k = vip_key(*a, port, PROTO_TCP);
            vip_filter_bit(k.addr, k.port, k.proto, k.family) == want
        })
        .expect("an address in 10.200/16 that shares the bit")
}

#[test]
fn established_flow_of_a_removed_vip_is_passed() {
    let Some(mut lb) = setup() else { return };
    let web = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    let f = Flow::tcp("192.0.2.12", 40000, "10.100.0.1", 80);
    let want = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, want);
    lb.remove_vip(web).unwrap();
    // The VIP's filter bit is gone: passed before any lookup.
    assert_passed_unchanged(&lb, &f.packet("A", b""));
    assert_eq!(lb.counter(counter::FLOW_HIT), 0);

    // With the bit still set by another VIP, the packet reaches the flow
    // table, whose hit skips the VIP lookup: it is the release of the
    // removed VIP's backends (which the daemon does with the removal) that
    // ends the flow.
    let Some(mut lb) = setup() else { return };
    assert_encap(&lb, &f.packet("S", b""), &f, want);
    let twin = vip_key(filter_twin(web, 80), 80, PROTO_TCP);
    lb.add_vip(twin, vip(EMPTY)).unwrap();
    lb.remove_vip(web).unwrap();
    assert_encap(&lb, &f.packet("A", b""), &f, want);
    for id in [1, 2, 3] {
        lb.set_backend(id, backend(addr_of(id), BACKEND_F_DOWN, 0))
            .unwrap();
    }
    let before = lb.counter(counter::PASS_NOT_VIP);
    assert_passed_unchanged(&lb, &f.packet("A", b""));
    assert_eq!(lb.counter(counter::RESCHEDULED_DOWN), 1);
    assert_eq!(lb.counter(counter::PASS_NOT_VIP), before + 1);
}

#[test]
fn a_service_that_shares_a_vips_filter_bit_is_passed() {
    // A set filter bit sends a packet on to the flow table and the VIP
    // lookup; one that only collides with a VIP's bit must still pass.
    let Some(lb) = setup() else { return };
    let dst = filter_twin(vip_key(ip("10.100.0.1"), 80, PROTO_TCP), 80);
    let f = Flow::tcp("192.0.2.13", 40000, &dst.to_string(), 80);
    let before = lb.counter(counter::PASS_NOT_VIP);
    assert_passed_unchanged(&lb, &f.packet("S", b""));
    assert_passed_unchanged(&lb, &f.packet("A", b""));
    assert_eq!(lb.counter(counter::PASS_NOT_VIP), before + 2);
    assert_eq!(lb.counter(counter::FLOW_MISS), 0);
    assert_eq!(lb.flow_count(), 0);
}

#[test]
fn non_vip_traffic_passes_unchanged() {
    let Some(lb) = setup() else { return };
    // Other host, v4 and v6.
    assert_passed_unchanged(
        &lb,
        &Flow::tcp("192.0.2.1", 1, "10.9.9.9", 80).packet("S", b""),
    );
    assert_passed_unchanged(
        &lb,
        &Flow::udp("2001:db8::1", 1, "2001:db8::2", 53).packet("", b"x"),
    );
    // VIP address, port that is not a VIP.
    assert_passed_unchanged(
        &lb,
        &Flow::tcp("192.0.2.1", 1, "10.100.0.1", 443).packet("S", b""),
    );
    // VIP address and port, other protocol.
    assert_passed_unchanged(
        &lb,
        &Flow::udp("192.0.2.1", 1, "10.100.0.1", 80).packet("", b"x"),
    );
    // ARP.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 10, 100, 0, 1]);
    assert_passed_unchanged(&lb, &arp);
    // IPv4 with options (router alert, NOPs: IHL 7): other host, VIP
    // address on a port no VIP serves, VIP address and port of the other
    // protocol.
    let options = [0x94, 0x04, 0, 0, 1, 1, 1, 0];
    for frame in [
        Flow::tcp("192.0.2.1", 1, "10.9.9.9", 80).packet("S", b""),
        Flow::tcp("192.0.2.1", 1, "10.100.0.1", 443).packet("A", b"x"),
        Flow::udp("192.0.2.1", 1, "10.100.0.1", 80).packet("", b"x"),
    ] {
        let frame = with_ipv4_options(&frame, &options);
        assert_eq!(frame[14] & 0x0f, 7);
        assert_passed_unchanged(&lb, &frame);
    }
    assert_eq!(lb.counter(counter::PASS_NOT_VIP), 7);
    assert_eq!(lb.counter(counter::PASS_NOT_IP), 1);
    assert_eq!(lb.flow_count(), 0);
}

#[test]
fn truncated_headers_pass_and_are_counted() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.1", 1, "10.100.0.1", 80);
    let full = f.packet("S", b"");
    // Ethernet that announces a VLAN tag it does not carry.
    let mut vlan = full[..14].to_vec();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    vlan.extend_from_slice(&[0, 5]);
    // IPv4 header cut short; IPv4 with IHL < 5; TCP header cut short.
    let ip_cut = full[..14 + 12].to_vec();
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    let tcp_cut = full[..14 + 20 + 10].to_vec();
    let u = Flow::udp("192.0.2.1", 1, "10.100.0.1", 53).packet("", b"");
    let udp_cut = u[..14 + 20 + 6].to_vec();
    let v6 = Flow::tcp("2001:db8::1", 1, "fd00:100::1", 80).packet("S", b"");
    let v6_cut = v6[..14 + 30].to_vec();
    // An IPv4 header that claims more bytes than the frame has.
    let mut long = full.clone();
    let tl = u16::from_be_bytes([long[16], long[17]]) + 100;
    long[16..18].copy_from_slice(&tl.to_be_bytes());
    let (h, _) = Ipv4Header::from_slice(&long[14..]).unwrap();
    let c = h.calc_header_checksum();
    long[24..26].copy_from_slice(&c.to_be_bytes());
    for frame in [&vlan, &ip_cut, &bad_ihl, &tcp_cut, &udp_cut, &v6_cut, &long] {
        assert_passed_unchanged(&lb, frame);
    }
    assert_eq!(
        lb.counter(counter::PASS_MALFORMED),
        7,
        "{:?}",
        lb.counters()
    );
    assert_eq!(lb.flow_count(), 0);
}

#[test]
fn ipv4_options_are_forwarded_inside_the_tunnel() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.60", 45000, "10.100.0.1", 80);
    // A 4-byte option (NOP NOP NOP EOL): IHL 6.
    let frame = with_ipv4_options(&f.packet("S", b""), &[1, 1, 1, 0]);
    assert_eq!(frame[14] & 0x0f, 6);
    assert_encap(&lb, &frame, &f, pick(&f, &[1, 2, 3]));
}

#[test]
fn fragments_to_a_vip_are_dropped_and_counted_others_pass() {
    let Some(lb) = setup() else { return };
    let f = Flow::udp("192.0.2.1", 1, "10.100.0.1", 53);
    let mut first = f.packet("", &[0u8; 64]);
    first[20] |= 0x20; // more fragments
    let mut later = f.packet("", &[0u8; 64]);
    later[20] = 0;
    later[21] = 10; // offset 80
    for fr in [&mut first, &mut later] {
        let (h, _) = Ipv4Header::from_slice(&fr[14..]).unwrap();
        let c = h.calc_header_checksum();
        fr[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(lb.run(fr).unwrap().action, XDP_DROP);
    }
    assert_eq!(lb.counter(counter::DROP_FRAGMENT), 2);
    let mut other = Flow::udp("192.0.2.1", 1, "10.9.9.9", 53).packet("", &[0u8; 64]);
    other[20] |= 0x20;
    assert_passed_unchanged(&lb, &other);
}

#[test]
fn ipv6_extension_headers_to_a_vip_are_dropped_and_counted() {
    let Some(lb) = setup() else { return };
    let mut frame = Flow::tcp("2001:db8::1", 1, "fd00:100::1", 80).packet("S", b"");
    frame[14 + 6] = 44; // fragment header
    assert_eq!(lb.run(&frame).unwrap().action, XDP_DROP);
    assert_eq!(lb.counter(counter::DROP_IPV6_EXT), 1);
}

#[test]
fn vlan_tagged_vip_traffic_keeps_its_tag() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.70", 46000, "10.100.0.1", 80);
    let frame = f.packet_vlan("S", b"", Some(42));
    assert_encap(&lb, &frame, &f, pick(&f, &[1, 2, 3]));
    let out = lb.run(&frame).unwrap();
    assert_eq!(&out.data[12..16], &[0x81, 0x00, 0x00, 42]);
    let f6 = Flow::tcp("2001:db8::70", 46000, "fd00:100::1", 80);
    assert_encap(
        &lb,
        &f6.packet_vlan("S", b"", Some(7)),
        &f6,
        pick(&f6, &[10, 11]),
    );
}

#[test]
fn wildcard_port_vip_takes_every_port() {
    let Some(lb) = setup() else { return };
    for port in [1, 22, 8443] {
        let f = Flow::tcp("192.0.2.80", 47000, "10.100.0.3", port);
        assert_encap(&lb, &f.packet("S", b""), &f, 6);
    }
}

#[test]
fn an_exact_port_vip_wins_over_an_any_port_vip_on_its_address() {
    // 10.100.0.3:8080/tcp (EXTRA, backend 20) beside 10.100.0.3:0/tcp (ANY,
    // backend 6); then again with the exact VIP's filter bit shared by a
    // third VIP, so that it is found in the hash map instead of the index.
    for shared in [false, true] {
        let Some(mut lb) = setup() else { return };
        let exact = vip_key(ip("10.100.0.3"), 8080, PROTO_TCP);
        lb.write_ring(EXTRA, 0, &ring(&[20], test_sizes().ring_size))
            .unwrap();
        lb.add_vip(exact, vip(EXTRA)).unwrap();
        if shared {
            lb.add_vip(
                vip_key(filter_twin(exact, 8080), 8080, PROTO_TCP),
                vip(EMPTY),
            )
            .unwrap();
        }
        for (i, (port, want)) in [(8080, 20), (8081, 6), (80, 6)].into_iter().enumerate() {
            let f = Flow::tcp("192.0.2.81", 47000 + i as u16, "10.100.0.3", port);
            assert_encap(&lb, &f.packet("S", b""), &f, want);
            assert_encap(&lb, &f.packet("A", b""), &f, want);
        }
        // UDP to the address has no VIP (the any-port VIP is TCP).
        let u = Flow::udp("192.0.2.81", 47000, "10.100.0.3", 8080);
        assert_passed_unchanged(&lb, &u.packet("", b"q"));
    }
}

#[test]
fn two_vips_sharing_a_filter_bit_are_both_served() {
    // With the bit shared, neither is in the index: both are found in the
    // hash map; once one leaves, the other is indexed again.
    let Some(mut lb) = setup() else { return };
    let web = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    let twin_addr = filter_twin(web, 80);
    lb.write_ring(EXTRA, 0, &ring(&[20], test_sizes().ring_size))
        .unwrap();
    let twin = vip_key(twin_addr, 80, PROTO_TCP);
    lb.add_vip(twin, vip(EXTRA)).unwrap();
    let to_web = Flow::tcp("192.0.2.82", 47000, "10.100.0.1", 80);
    let to_twin = Flow::tcp("192.0.2.82", 47000, &twin_addr.to_string(), 80);
    assert_encap(
        &lb,
        &to_web.packet("S", b""),
        &to_web,
        pick(&to_web, &[1, 2, 3]),
    );
    assert_encap(&lb, &to_twin.packet("S", b""), &to_twin, 20);
    lb.remove_vip(web).unwrap();
    let again = Flow::tcp("192.0.2.83", 47001, &twin_addr.to_string(), 80);
    assert_encap(&lb, &again.packet("S", b""), &again, 20);
    let gone = Flow::tcp("192.0.2.83", 47001, "10.100.0.1", 80);
    assert_passed_unchanged(&lb, &gone.packet("S", b""));
}

#[test]
fn fuzzing_a_short_run_breaks_no_rule() {
    // `cargo xtask fuzz` runs a million; here two fixed seeds, 30 000
    // packets each: never XDP_ABORTED, what passes is untouched, what is
    // sent is well formed and goes to a backend (lb_tests::fuzz).
    if root_env("packet tests").is_none() {
        return;
    }
    private_netns().unwrap();
    for seed in [1, 20261130] {
        let mut lb = Balancer::load(lb_tests::fuzz::SIZES).unwrap();
        lb_tests::fuzz::configure(&mut lb).unwrap();
        let r = lb_tests::fuzz::run(&lb, 30_000, seed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.packets, 30_000);
        // Every kind of outcome occurred.
        assert!(r.passed > 0 && r.dropped > 0 && r.sent > 0, "{r:?}");
    }
}

#[test]
fn an_echo_request_with_a_corrupt_ipv4_header_is_not_answered() {
    // The reply is the request edited in place: a corrupt header would be
    // reflected. Passed to the kernel instead (which drops it), counted.
    let Some(lb) = setup() else { return };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([192, 0, 2, 1], [10, 100, 0, 1], 50)
        .icmpv4_echo_request(7, 9)
        .write(&mut frame, b"ping")
        .unwrap();
    frame[15] ^= 0x10;
    assert_passed_unchanged(&lb, &frame);
    assert_eq!(lb.counter(counter::PASS_MALFORMED), 1);
    assert_eq!(lb.counter(counter::ICMP_ECHO_REPLY), 0);
}

#[test]
fn icmp_the_balancer_sends_is_rate_limited_per_cpu() {
    // A ping flood: the first ICMP_BURST + 1 are answered at once, then one
    // per 1/ICMP_RATE_PER_CPU s; the rest are dropped and counted.
    let Some(lb) = setup() else { return };
    // One CPU: the limit is per CPU.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([192, 0, 2, 1], [10, 100, 0, 1], 50)
        .icmpv4_echo_request(7, 9)
        .write(&mut frame, b"ping")
        .unwrap();
    let burst = lb_common::defaults::ICMP_BURST;
    let sent = 3 * burst;
    let start = std::time::Instant::now();
    let answered = (0..sent)
        .filter(|_| lb.run(&frame).unwrap().action == XDP_TX)
        .count() as u64;
    // The data path's clock moves in ticks: the run may span one more
    // tick than it lasted.
    let seen_ns = start.elapsed().as_nanos() as u64 + lb.clock.jiffy_ns.max(10_000_000);
    let refill = seen_ns * lb_common::defaults::ICMP_RATE_PER_CPU / 1_000_000_000;
    assert!(
        (burst + 1..=burst + 2 + refill).contains(&answered),
        "{answered} of {sent} answered ({refill} refilled meanwhile)"
    );
    assert_eq!(lb.counter(counter::DROP_ICMP_RATE), sent - answered);
    assert_eq!(lb.counter(counter::ICMP_ECHO_REPLY), answered);
    // A while later, answered again.
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(lb.run(&frame).unwrap().action, XDP_TX);
}

#[test]
fn icmp_echo_to_a_vip_is_answered() {
    let Some(lb) = setup() else { return };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([192, 0, 2, 1], [10, 100, 0, 1], 50)
        .icmpv4_echo_request(7, 9)
        .write(&mut frame, b"ping payload")
        .unwrap();
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.action, XDP_TX);
    let mut expected = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
        .ipv4([10, 100, 0, 1], [192, 0, 2, 1], 64)
        .icmpv4(Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader {
            id: 7,
            seq: 9,
        }))
        .write(&mut expected, b"ping payload")
        .unwrap();
    assert_eq!(out.data, expected);
    let (icmp, _) = Icmpv4Header::from_slice(&out.data[34..]).unwrap();
    assert_eq!(icmp.checksum, icmp.icmp_type.calc_checksum(b"ping payload"));
    assert_eq!(lb.counter(counter::ICMP_ECHO_REPLY), 1);

    let mut f6 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(ip6("2001:db8::1"), ip6("fd00:100::1"), 50)
        .icmpv6_echo_request(3, 4)
        .write(&mut f6, b"ping6")
        .unwrap();
    let out = lb.run(&f6).unwrap();
    assert_eq!(out.action, XDP_TX);
    let mut expected = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
        .ipv6(ip6("fd00:100::1"), ip6("2001:db8::1"), 64)
        .icmpv6_echo_reply(3, 4)
        .write(&mut expected, b"ping6")
        .unwrap();
    assert_eq!(out.data, expected);
}

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

#[test]
fn icmp_frag_needed_goes_to_the_flows_backend() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.90", 48000, "10.100.0.1", 80);
    let want = pick(&f, &[1, 2, 3]);
    assert_encap(&lb, &f.packet("S", b""), &f, want);
    // A router tells the VIP (i.e. the backend's reply) that 1400 is too big.
    let reply = Flow::tcp("10.100.0.1", 80, "192.0.2.90", 48000).packet("A", &[0u8; 8]);
    let quoted = &reply[14..14 + 28];
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([198, 51, 100, 1], [10, 100, 0, 1], 60)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut frame, quoted)
        .unwrap();
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    let h = hash(&f);
    let dst = addr_of(want);
    let expected = expected_encap(
        &frame,
        &Encap {
            dmac: GATEWAY_MAC,
            smac: LB_MAC,
            src: outer_src(dst, h),
            dst,
            hash: h,
        },
    );
    assert_eq!(out.data, expected);
    assert_eq!(lb.counter(counter::ICMP_STEERED), 1);
    // No flow: the kernel gets it.
    let other = Flow::tcp("10.100.0.1", 80, "192.0.2.91", 1).packet("A", &[0u8; 8]);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([198, 51, 100, 1], [10, 100, 0, 1], 60)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut frame, &other[14..14 + 28])
        .unwrap();
    assert_passed_unchanged(&lb, &frame);
}

#[test]
fn icmpv6_packet_too_big_goes_to_the_flows_backend() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("2001:db8::90", 48000, "fd00:100::1", 80);
    let want = pick(&f, &[10, 11]);
    assert_encap(&lb, &f.packet("S", b""), &f, want);
    let reply = Flow::tcp("fd00:100::1", 80, "2001:db8::90", 48000).packet("A", &[0u8; 8]);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(ip6("2001:db8:ffff::1"), ip6("fd00:100::1"), 60)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut frame, &reply[14..14 + 48])
        .unwrap();
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    let h = hash(&f);
    let dst = addr_of(want);
    let expected = expected_encap(
        &frame,
        &Encap {
            dmac: GATEWAY_MAC,
            smac: LB_MAC,
            src: outer_src(dst, h),
            dst,
            hash: h,
        },
    );
    assert_eq!(out.data, expected);
}

#[test]
fn vip_with_empty_table_drops_and_counts() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.1", 1, "10.100.0.4", 80);
    assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_DROP);
    assert_eq!(lb.counter(counter::DROP_NO_BACKEND), 1);
    assert_eq!(lb.vip_stats(EMPTY).drops, 1);
    assert_eq!(lb.flow_count(), 0);
}

#[test]
fn flows_outlive_an_emptied_table_while_new_flows_are_dropped() {
    // UDP picks from the table before it probes the flow table (see
    // `balance_l4`): an empty pick must not drop a known flow.
    let Some(mut lb) = setup() else { return };
    let tcp = Flow::tcp("192.0.2.14", 40000, "10.100.0.1", 80);
    let udp = Flow::udp("192.0.2.14", 40000, "10.100.0.1", 53);
    let (t, u) = (pick(&tcp, &[1, 2, 3]), pick(&udp, &[4, 5]));
    assert_encap(&lb, &tcp.packet("S", b""), &tcp, t);
    assert_encap(&lb, &udp.packet("", b"q1"), &udp, u);
    replace_table(&mut lb, vip_key(ip("10.100.0.1"), 80, PROTO_TCP), WEB, &[]);
    replace_table(&mut lb, vip_key(ip("10.100.0.1"), 53, PROTO_UDP), DNS, &[]);
    assert_encap(&lb, &tcp.packet("A", b""), &tcp, t);
    assert_encap(&lb, &udp.packet("", b"q2"), &udp, u);
    assert_eq!(lb.counter(counter::FLOW_HIT), 2);
    for f in [
        Flow::tcp("192.0.2.15", 40000, "10.100.0.1", 80),
        Flow::udp("192.0.2.15", 40000, "10.100.0.1", 53),
    ] {
        let first = if f.proto == PROTO_TCP { "S" } else { "" };
        assert_eq!(lb.run(&f.packet(first, b"")).unwrap().action, XDP_DROP);
    }
    assert_eq!(lb.counter(counter::DROP_NO_BACKEND), 2);
    assert_eq!(lb.flow_count(), 2);
}

#[test]
fn over_mtu_after_encapsulation_is_answered_with_icmp_frag_needed() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.1", 2, "10.100.0.1", 80);
    // 1500 bytes of IP with DF: fits the link, not once 20 bytes of tunnel are added.
    let frame = f.packet("A", &vec![7u8; 1500 - 40]);
    assert_ne!(frame[20] & 0x40, 0, "DF set");
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    let quote = &frame[14..14 + 68];
    let mut ip = Ipv4Header {
        total_len: 20 + 8 + 68,
        dont_fragment: false,
        time_to_live: 64,
        protocol: etherparse::IpNumber::ICMP,
        source: [10, 100, 0, 1],
        destination: [192, 0, 2, 1],
        ..Default::default()
    };
    ip.header_checksum = ip.calc_header_checksum();
    let icmp = Icmpv4Header::with_checksum(
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1480 },
        ),
        quote,
    );
    let mut expected = Vec::new();
    expected.extend_from_slice(&CLIENT_MAC);
    expected.extend_from_slice(&LB_MAC);
    expected.extend_from_slice(&[0x08, 0x00]);
    expected.extend_from_slice(&ip.to_bytes());
    expected.extend_from_slice(&icmp.to_bytes());
    expected.extend_from_slice(quote);
    assert_eq!(out.data, expected);
    assert_eq!(lb.counter(counter::ICMP_TOO_BIG_SENT), 1);
    // An answer, not a packet of the flow.
    assert_eq!(lb.vip_stats(WEB).packets, 0);
    assert_eq!(lb.counter(counter::TX), 0);
    // 1480 bytes fit.
    let ok = f.packet("A", &vec![0u8; 1480 - 40]);
    assert_encap(&lb, &ok, &f, pick(&f, &[1, 2, 3]));
}

#[test]
fn over_mtu_without_df_is_dropped_and_counted() {
    let Some(lb) = setup() else { return };
    let f = Flow::udp("192.0.2.1", 2, "10.100.0.1", 53);
    let mut frame = f.packet("", &vec![0u8; 1500 - 28]);
    frame[20] &= !0x40;
    let (h, _) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    let c = h.calc_header_checksum();
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(lb.run(&frame).unwrap().action, XDP_DROP);
    assert_eq!(lb.counter(counter::DROP_TOO_BIG), 1);
    assert_eq!(lb.counter(counter::ICMP_TOO_BIG_SENT), 0);
}

#[test]
fn over_mtu_ipv6_is_answered_with_packet_too_big() {
    let Some(lb) = setup() else { return };
    let f = Flow::tcp("2001:db8::1", 2, "fd00:100::1", 80);
    // 1480 bytes of IPv6: 40 more of tunnel make 1520.
    let frame = f.packet("A", &vec![7u8; 1480 - 60]);
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    let quote = &frame[14..14 + 68];
    let (vip, client) = (ip6("fd00:100::1"), ip6("2001:db8::1"));
    let ip = etherparse::Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: 8 + 68,
        next_header: etherparse::IpNumber::IPV6_ICMP,
        hop_limit: 64,
        source: vip,
        destination: client,
    };
    let icmp = etherparse::Icmpv6Header::with_checksum(
        etherparse::Icmpv6Type::PacketTooBig { mtu: 1460 },
        vip,
        client,
        quote,
    )
    .unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(&CLIENT_MAC);
    expected.extend_from_slice(&LB_MAC);
    expected.extend_from_slice(&[0x86, 0xdd]);
    expected.extend_from_slice(&ip.to_bytes());
    expected.extend_from_slice(&icmp.to_bytes());
    expected.extend_from_slice(quote);
    assert_eq!(out.data, expected);
    assert_eq!(lb.counter(counter::ICMP_TOO_BIG_SENT), 1);
}

#[test]
fn without_route_or_gateway_mac_the_packet_is_dropped_and_counted() {
    let Some(mut lb) = setup() else { return };
    let mut cfg = config(test_sizes().ring_size);
    cfg.flags &= !CONFIG_F_GATEWAY_MAC;
    lb.set_config(cfg).unwrap();
    let f = Flow::tcp("192.0.2.1", 3, "10.100.0.1", 80);
    assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_DROP);
    assert_eq!(lb.counter(counter::DROP_NO_ROUTE), 1);
}

#[test]
fn next_hop_from_the_kernel_fib_and_redirect_to_the_egress_interface() {
    let Some(lb) = setup() else { return };
    // In this private namespace: a veth with the backend's subnet and a
    // permanent neighbour entry for the backend. The kernel answers FIB
    // lookups for forwarded traffic only where IP forwarding is on, as on
    // any balancer host.
    shell("sysctl -qw net.ipv4.ip_forward=1 && ip link add fibt0 address 02:00:00:00:aa:01 type veth peer name fibt1 \
        && ip link set fibt0 up && ip link set fibt1 up && ip link set lo up \
        && ip addr add 10.0.1.254/24 dev fibt0 \
        && ip neigh replace 10.0.1.1 lladdr 02:00:00:00:bb:01 dev fibt0 nud permanent \
        && ip neigh replace 10.0.1.2 lladdr 02:00:00:00:bb:02 dev fibt0 nud permanent \
        && ip neigh replace 10.0.1.3 lladdr 02:00:00:00:bb:03 dev fibt0 nud permanent");
    let f = Flow::tcp("192.0.2.1", 4, "10.100.0.1", 80);
    let want = pick(&f, &[1, 2, 3]);
    let frame = f.packet("S", b"");
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.action, XDP_REDIRECT, "{:?}", lb.counters());
    let h = hash(&f);
    let dst = addr_of(want);
    let expected = expected_encap(
        &frame,
        &Encap {
            dmac: [0x02, 0, 0, 0, 0xbb, want as u8],
            smac: [0x02, 0, 0, 0, 0xaa, 0x01],
            src: outer_src(dst, h),
            dst,
            hash: h,
        },
    );
    assert_eq!(out.data, expected);
    assert_eq!(lb.counter(counter::REDIRECT), 1);
    assert_eq!(lb.counter(counter::FIB_FALLBACK), 0);
}

#[test]
fn an_unresolved_next_hop_drops_until_the_daemon_makes_it_a_managed_neighbour() {
    let Some(lb) = setup() else { return };
    // The backends' subnet on a veth whose peer, in a namespace of its own,
    // holds the backends' addresses (and answers ARP for them); no
    // neighbour entry yet. The gateway MAC is configured: it must not be
    // used for a backend the FIB knows is on-link.
    let ns = format!("lbnb{}", std::process::id());
    shell(&format!(
        "sysctl -qw net.ipv4.ip_forward=1 && ip netns add {ns} \
         && ip link add nbt0 address 02:00:00:00:aa:01 type veth peer name nbt1 netns {ns} \
         && ip link set nbt0 up && ip link set lo up && ip addr add 10.0.1.254/24 dev nbt0 \
         && ip -n {ns} link set nbt1 address 02:00:00:00:bb:01 up \
         && ip -n {ns} addr add 10.0.1.1/24 dev nbt1 && ip -n {ns} addr add 10.0.1.2/24 dev nbt1 \
         && ip -n {ns} addr add 10.0.1.3/24 dev nbt1"
    ));
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _ns = DelNs(ns);
    let f = Flow::tcp("192.0.2.1", 4, "10.100.0.1", 80);
    let frame = f.packet("S", b"");
    for _ in 0..2 {
        assert_eq!(lb.run(&frame).unwrap().action, XDP_DROP);
    }
    // Not cached: the FIB was asked each time.
    assert_eq!(lb.counter(counter::DROP_NO_NEIGH), 2);
    assert_eq!(lb.counter(counter::FIB_LOOKUP), 2);
    assert_eq!(lb.counter(counter::FIB_FALLBACK), 0);
    // The daemon's pass over the backends.
    let mut rtnl = lb_userspace::neigh::Rtnl::new().unwrap();
    let mut ours = lb_userspace::neigh::Neighbours::default();
    let backends = [ip("10.0.1.1"), ip("10.0.1.2"), ip("10.0.1.3")];
    let report = ours.sync(&mut rtnl, &backends);
    assert_eq!(report.managed.len(), 3, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    let want = pick(&f, &[1, 2, 3]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let out = loop {
        let out = lb.run(&frame).unwrap();
        if out.action != XDP_DROP || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(out.action, XDP_REDIRECT, "{:?}", lb.counters());
    let h = hash(&f);
    let dst = addr_of(want);
    let expected = expected_encap(
        &frame,
        &Encap {
            dmac: [0x02, 0, 0, 0, 0xbb, 0x01],
            smac: [0x02, 0, 0, 0, 0xaa, 0x01],
            src: outer_src(dst, h),
            dst,
            hash: h,
        },
    );
    assert_eq!(out.data, expected);
    let shown = std::process::Command::new("ip")
        .args(["neigh", "show", "dev", "nbt0"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.matches("managed").count(), 3, "{shown}");
    // A second pass changes nothing; with no backends the entries stay
    // (a removed backend's connections still flow); `lb stop` removes them.
    assert_eq!(ours.sync(&mut rtnl, &backends), Default::default());
    assert_eq!(ours.sync(&mut rtnl, &[]), Default::default());
    assert!(lb.run(&frame).unwrap().action == XDP_REDIRECT);
    ours.forget_all(&mut rtnl);
    let shown = std::process::Command::new("ip")
        .args(["neigh", "show", "dev", "nbt0"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&shown.stdout).contains("managed"));
}

// ------------------------------------------------------- decapsulation --

fn decap_vips() -> Vec<DecapVip> {
    vec![
        DecapVip {
            addr: ip("10.100.0.1"),
            port: 80,
            proto: PROTO_TCP,
        },
        DecapVip {
            addr: ip("fd00:100::1"),
            port: 53,
            proto: PROTO_UDP,
        },
    ]
}

fn decap_setup() -> Option<Balancer> {
    root_env("decap tests")?;
    let mut d = Balancer::load_decap().unwrap();
    // As `lb decap --vip 10.100.0.1:80/tcp --vip [fd00:100::1]:53/udp`
    // (no --from: any source).
    d.set_decap(&decap_vips(), &[]).unwrap();
    Some(d)
}

fn tunnel(frame: &[u8], src: IpAddr, dst: IpAddr) -> Vec<u8> {
    expected_encap(
        frame,
        &Encap {
            dmac: LB_MAC,
            smac: GATEWAY_MAC,
            src,
            dst,
            hash: 99,
        },
    )
}

/// Sets the ECN bits of an untagged IPv6 frame.
fn set_ecn_v6(frame: &mut [u8], ecn: u8) {
    frame[15] = (frame[15] & !0x30) | (ecn << 4);
}

#[test]
fn decap_carries_congestion_experienced_inward_and_drops_it_on_non_ect() {
    // RFC 6040: CE on the tunnel header marks an ECN-capable inner packet
    // CE; a packet that is not ECN-capable cannot carry it and is dropped.
    let Some(d) = decap_setup() else { return };
    const ECT0: u8 = 2;
    const ECT1: u8 = 1;
    const CE: u8 = 3;
    let dscp = 10 << 2;
    // IPv4 in IPv4: ECT(0) inside becomes CE, the checksum follows.
    let mut inner = Flow::tcp("192.0.2.1", 7, "10.100.0.1", 80).packet("S", b"");
    set_tos_v4(&mut inner, dscp | ECT0);
    let mut outer = tunnel(&inner, ip("10.255.0.7"), ip("10.0.1.1"));
    set_tos_v4(&mut outer, dscp | CE);
    let out = d.run(&outer).unwrap();
    assert_eq!(out.action, XDP_PASS, "{:?}", d.decap_counters());
    let mut want = inner.clone();
    set_tos_v4(&mut want, dscp | CE);
    assert_eq!(ip_part(&out.data), ip_part(&want));
    // IPv6 in IPv6: ECT(1) inside becomes CE.
    let mut inner6 = Flow::udp("2001:db8::1", 7, "fd00:100::1", 53).packet("", b"q");
    set_ecn_v6(&mut inner6, ECT1);
    let mut outer6 = tunnel(&inner6, ip("fd00:255::7"), ip("fd00:1::1"));
    set_ecn_v6(&mut outer6, CE);
    let out = d.run(&outer6).unwrap();
    assert_eq!(out.action, XDP_PASS);
    let mut want6 = inner6.clone();
    set_ecn_v6(&mut want6, CE);
    assert_eq!(ip_part(&out.data), ip_part(&want6));
    // Not ECN-capable inside, CE outside: dropped and counted.
    let plain = Flow::tcp("192.0.2.1", 8, "10.100.0.1", 80).packet("S", b"");
    let mut outer = tunnel(&plain, ip("10.255.0.7"), ip("10.0.1.1"));
    set_tos_v4(&mut outer, CE);
    assert_eq!(d.run(&outer).unwrap().action, XDP_DROP);
    // No CE outside: the inner ECN bits are left as they are.
    let outer = tunnel(&inner, ip("10.255.0.7"), ip("10.0.1.1"));
    let out = d.run(&outer).unwrap();
    assert_eq!(ip_part(&out.data), ip_part(&inner));
    assert_eq!(d.decap_counter(decap_counter::ECN_CE_COPIED), 2);
    assert_eq!(d.decap_counter(decap_counter::DROP_ECN), 1);
    assert_eq!(d.decap_counter(decap_counter::DECAPPED), 3);
}

#[test]
fn decap_strips_ipip_ip6ip6_and_4in6_to_a_vip() {
    let Some(d) = decap_setup() else { return };
    let cases = [
        (
            Flow::tcp("192.0.2.1", 5, "10.100.0.1", 80),
            ip("10.255.0.7"),
            ip("10.0.1.1"),
        ),
        (
            Flow::udp("2001:db8::1", 5, "fd00:100::1", 53),
            ip("fd00:255::7"),
            ip("fd00:1::1"),
        ),
        (
            Flow::tcp("192.0.2.1", 6, "10.100.0.1", 80),
            ip("fd00:255::7"),
            ip("fd00:1::1"),
        ),
    ];
    for (f, src, dst) in cases {
        for vlan in [None, Some(9)] {
            let inner = f.packet_vlan(if f.proto == PROTO_TCP { "S" } else { "" }, b"data", vlan);
            let outer = tunnel(&inner, src, dst);
            let out = d.run(&outer).unwrap();
            assert_eq!(out.action, XDP_PASS);
            // What reaches the stack: the tunnel's Ethernet header, the inner packet.
            let mut expected = outer[..ip_offset(&outer)].to_vec();
            let et = if f.dst.is_ipv6() {
                [0x86, 0xdd]
            } else {
                [0x08, 0x00]
            };
            let n = expected.len();
            expected[n - 2..].copy_from_slice(&et);
            expected.extend_from_slice(ip_part(&inner));
            assert_eq!(out.data, expected);
            assert!(SlicedPacket::from_ethernet(&out.data).is_ok());
        }
    }
    assert_eq!(d.decap_counter(decap_counter::DECAPPED), 6);
}

#[test]
fn decap_drops_tunnels_to_a_vip_from_other_sources_than_the_balancers() {
    // As `lb decap --from 10.255.0.0/24 --from fd00:255::/112`.
    let Some(mut d) = decap_setup() else { return };
    d.set_decap(
        &decap_vips(),
        &[(ip("10.255.0.0"), 24), (ip("fd00:255::"), 112)],
    )
    .unwrap();
    let f4 = Flow::tcp("192.0.2.1", 5, "10.100.0.1", 80).packet("S", b"");
    let f6 = Flow::udp("2001:db8::1", 5, "fd00:100::1", 53).packet("", b"q");
    for (inner, src, ok) in [
        (&f4, "10.255.0.7", true),
        (&f4, "10.255.1.7", false),
        (&f4, "fd00:255::7", true),
        (&f4, "fd00:256::7", false),
        (&f6, "fd00:255::ffff", true),
        (&f6, "fd00:255::1:0", false),
    ] {
        let dst = if src.contains(':') {
            "fd00:1::1"
        } else {
            "10.0.1.1"
        };
        let outer = tunnel(inner, ip(src), ip(dst));
        let out = d.run(&outer).unwrap();
        let want = if ok { XDP_PASS } else { XDP_DROP };
        assert_eq!(out.action, want, "tunnel from {src}");
        if ok {
            assert_eq!(
                &out.data[out.data.len() - ip_part(inner).len()..],
                ip_part(inner)
            );
        }
    }
    assert_eq!(d.decap_counter(decap_counter::DECAPPED), 3);
    assert_eq!(d.decap_counter(decap_counter::DROP_SOURCE), 3);
    // A tunnel from elsewhere to an address that is no VIP here is not ours:
    // passed, as before.
    let other = Flow::tcp("192.0.2.1", 5, "10.9.9.9", 80).packet("S", b"");
    let outer = tunnel(&other, ip("10.255.1.7"), ip("10.0.1.1"));
    assert_eq!(d.run(&outer).unwrap().data, outer);
    assert_eq!(d.decap_counter(decap_counter::PASS_NOT_VIP), 1);
}

#[test]
fn decap_takes_only_the_vips_ports_and_protocols() {
    // A tunnel to a VIP's address but another port or protocol would reach
    // a service the balancer does not offer (and a UDP one could reflect
    // to a spoofed inner source): dropped and counted. ICMP to the address
    // (errors about its flows, which the balancer steers to backends) and
    // every port of a port-0 VIP are taken.
    let Some(mut d) = decap_setup() else { return };
    let mut vips = decap_vips();
    vips.push(DecapVip {
        addr: ip("10.100.0.3"),
        port: 0,
        proto: PROTO_TCP,
    });
    d.set_decap(&vips, &[]).unwrap();
    let v4 =
        |f: Flow, flags: &str| tunnel(&f.packet(flags, b"x"), ip("10.255.0.7"), ip("10.0.1.1"));
    let v6 =
        |f: Flow, flags: &str| tunnel(&f.packet(flags, b"x"), ip("fd00:255::7"), ip("fd00:1::1"));
    let taken = [
        v4(Flow::tcp("192.0.2.1", 5, "10.100.0.1", 80), "S"),
        v6(Flow::udp("2001:db8::1", 5, "fd00:100::1", 53), ""),
        v4(Flow::tcp("192.0.2.1", 5, "10.100.0.3", 22), "S"),
        v4(Flow::tcp("192.0.2.1", 5, "10.100.0.3", 65535), "A"),
    ];
    for frame in &taken {
        let out = d.run(frame).unwrap();
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(
            out.data.len(),
            frame.len() - 20 - (frame[12] == 0x86) as usize * 20
        );
    }
    let refused = [
        v4(Flow::tcp("192.0.2.1", 5, "10.100.0.1", 22), "S"),
        v4(Flow::udp("192.0.2.1", 5, "10.100.0.1", 80), ""),
        v4(Flow::udp("192.0.2.1", 5, "10.100.0.3", 53), ""),
        v6(Flow::udp("2001:db8::1", 5, "fd00:100::1", 123), ""),
        v6(Flow::tcp("2001:db8::1", 5, "fd00:100::1", 53), "S"),
    ];
    for frame in &refused {
        let out = d.run(frame).unwrap();
        assert_eq!(out.action, XDP_DROP, "{:?}", d.decap_counters());
    }
    // IPv6 hop-by-hop options (protocol 0) ahead of any port: dropped.
    let mut hbh = Flow::udp("2001:db8::1", 5, "fd00:100::1", 53).packet("", b"x");
    hbh[14 + 6] = 0;
    let out = d
        .run(&tunnel(&hbh, ip("fd00:255::7"), ip("fd00:1::1")))
        .unwrap();
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(d.decap_counter(decap_counter::DROP_NOT_SERVICE), 6);
    // An ICMP error to the VIP's address, quoting one of its flows.
    let quoted = Flow::tcp("10.100.0.1", 80, "192.0.2.1", 5).packet("SA", b"");
    let icmp = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([192, 0, 2, 254], [10, 100, 0, 1], 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ));
    let mut frame = Vec::new();
    icmp.write(&mut frame, &quoted[14..42]).unwrap();
    let out = d
        .run(&tunnel(&frame, ip("10.255.0.7"), ip("10.0.1.1")))
        .unwrap();
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(ip_part(&out.data), ip_part(&frame));
    // A fragment to the VIP has no ports to check: dropped.
    let mut frag = Flow::tcp("192.0.2.1", 5, "10.100.0.1", 80).packet("S", b"");
    frag[14 + 6] = 0x20; // more fragments
    let ipsum = Ipv4Header::from_slice(&frag[14..])
        .unwrap()
        .0
        .calc_header_checksum();
    frag[14 + 10..14 + 12].copy_from_slice(&ipsum.to_be_bytes());
    let out = d
        .run(&tunnel(&frag, ip("10.255.0.7"), ip("10.0.1.1")))
        .unwrap();
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(d.decap_counter(decap_counter::DROP_NOT_SERVICE), 7);
    assert_eq!(d.decap_counter(decap_counter::DECAPPED), 5);
}

#[test]
fn decap_leaves_other_traffic_alone() {
    let Some(d) = decap_setup() else { return };
    let plain = Flow::tcp("192.0.2.1", 5, "10.100.0.1", 80).packet("S", b"");
    let out = d.run(&plain).unwrap();
    assert_eq!((out.action, &out.data), (XDP_PASS, &plain));
    // A tunnel to some other address.
    let inner = Flow::tcp("192.0.2.1", 5, "10.9.9.9", 80).packet("S", b"");
    let outer = tunnel(&inner, ip("10.255.0.7"), ip("10.0.1.1"));
    let out = d.run(&outer).unwrap();
    assert_eq!((out.action, &out.data), (XDP_PASS, &outer));
    assert_eq!(d.decap_counter(decap_counter::PASS_NOT_TUNNEL), 1);
    assert_eq!(d.decap_counter(decap_counter::PASS_NOT_VIP), 1);
    assert_eq!(d.decap_counter(decap_counter::DECAPPED), 0);
}

/// The WEB VIP (backends 1, 2, 3, each weight 1 in `LIMITS`) scheduled by
/// `scheduler` with its connections counted; `table` in its active buffer
/// (with `seq_len` for a sequence).
fn counted_web(scheduler: u8, table: &[u32], seq_len: u32, persist_s: u32) -> Balancer {
    counted_web_in(262_144, scheduler, table, seq_len, persist_s)
}

/// `counted_web` with a flow table made for `flows` flows.
fn counted_web_in(
    flows: u32,
    scheduler: u8,
    table: &[u32],
    seq_len: u32,
    persist_s: u32,
) -> Balancer {
    let mut lb = setup_sized(Sizes {
        flows,
        ..test_sizes()
    })
    .expect("root");
    let n = test_sizes().ring_size;
    let ring: Vec<u32> = if seq_len > 0 {
        let mut t = vec![NO_BACKEND; n as usize];
        t[..table.len()].copy_from_slice(table);
        t
    } else {
        ring(table, n)
    };
    lb.write_ring(WEB, 1, &ring).unwrap();
    for id in 1..=3 {
        lb.set_limit(id, 1, 0);
    }
    lb.add_vip(
        vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
        VipInfo {
            vip_id: WEB,
            active_ring: 1,
            scheduler,
            flags: lb_common::VIP_F_COUNT,
            seq_len,
            persist_s,
            src_prefix_v4: 32,
            src_prefix_v6: 128,
            ..VipInfo::default()
        },
    )
    .unwrap();
    lb
}

/// Opens a TCP connection to WEB from a client of its own (SYN, then ACK);
/// returns it and its backend.
/// Client `i` (198.51.0.0/16, port 40000) to the WEB VIP.
fn client(i: u32) -> Flow {
    Flow::tcp(
        &Ipv4Addr::from(0xc633_0000 + i).to_string(),
        40000,
        "10.100.0.1",
        80,
    )
}

fn connect(lb: &Balancer, i: u32) -> (Flow, u32) {
    let f = client(i);
    assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_TX);
    assert_eq!(lb.run(&f.packet("A", b"")).unwrap().action, XDP_TX);
    let id = lb.flow(&f.key()).unwrap().backend;
    (f, id)
}

fn loads(lb: &mut Balancer) -> [u64; 3] {
    [lb.load_of(1), lb.load_of(2), lb.load_of(3)]
}

#[test]
fn connections_are_counted_per_backend_and_each_ends_once() {
    if root_env("packet tests").is_none() {
        return;
    }
    let mut lb = counted_web(lb_common::scheduler::MAGLEV, &[1, 2, 3], 0, 0);
    let conns: Vec<(Flow, u32)> = (0..300).map(|i| connect(&lb, i)).collect();
    let mut want = [0u64; 3];
    for (_, id) in &conns {
        want[*id as usize - 1] += 1;
    }
    assert_eq!(loads(&mut lb), want, "one count per connection");
    // The client's FIN ends the count, once: its retransmission, the last
    // ACK and a RST after it do not count again.
    let (f, id) = &conns[0];
    for flags in ["FA", "FA", "A", "RA"] {
        assert_eq!(lb.run(&f.packet(flags, b"")).unwrap().action, XDP_TX);
    }
    want[*id as usize - 1] -= 1;
    assert_eq!(loads(&mut lb), want);
    // The 4-tuple used again by a new connection: counted again.
    assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_TX);
    want[*id as usize - 1] += 1;
    assert_eq!(loads(&mut lb), want);
    // A RST ends one.
    let (g, gid) = &conns[1];
    assert_eq!(lb.run(&g.packet("R", b"")).unwrap().action, XDP_TX);
    want[*gid as usize - 1] -= 1;
    assert_eq!(loads(&mut lb), want);
    // A backend that goes down: its flows are scheduled anew and counted
    // on their new backends, off the old one.
    let (h, hid) = conns.iter().find(|(_, id)| *id == 3).unwrap();
    lb.set_backend(3, backend(addr_of(3), BACKEND_F_DOWN, WEB))
        .unwrap();
    replace_table(
        &mut lb,
        vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
        WEB,
        &[1, 2],
    );
    let before = loads(&mut lb);
    assert_eq!(lb.run(&h.packet("A", b"")).unwrap().action, XDP_TX);
    let now_at = lb.flow(&h.key()).unwrap().backend;
    assert_ne!(now_at, *hid);
    let after = loads(&mut lb);
    assert_eq!(after[2], before[2] - 1, "off the backend that went down");
    // The VIP info was replaced without VIP_F_COUNT: the moved flow is not
    // counted on its new backend.
    assert_eq!(after[now_at as usize - 1], before[now_at as usize - 1]);
}

#[test]
fn least_connections_steers_new_flows_away_from_a_backend_holding_many() {
    if root_env("packet tests").is_none() {
        return;
    }
    for (scheduler, seq_len) in [
        (lb_common::scheduler::LEAST_CONN, 0),
        (lb_common::scheduler::LEAST_CONN_EXACT, 3),
    ] {
        let mut lb = counted_web(scheduler, &[1, 2, 3], seq_len, 0);
        // 300 connections spread evenly, then those of backends 2 and 3
        // end: backend 1 holds about 100, the others none.
        let conns: Vec<(Flow, u32)> = (0..300).map(|i| connect(&lb, i)).collect();
        let l = loads(&mut lb);
        assert!(
            l.iter().all(|n| (90..=110).contains(n)),
            "{scheduler}: 300 connections spread as {l:?}"
        );
        for (f, id) in &conns {
            if *id != 1 {
                assert_eq!(lb.run(&f.packet("FA", b"")).unwrap().action, XDP_TX);
            }
        }
        let held = lb.load_of(1);
        assert_eq!(loads(&mut lb), [held, 0, 0]);
        // 200 new connections: the idle backends take (almost) all.
        let mut got = [0u32; 3];
        for i in 1000..1200 {
            got[connect(&lb, i).1 as usize - 1] += 1;
        }
        if seq_len > 0 {
            // Exact: always the least loaded, so the counts end level
            // (backend 1 only once the others caught up with it).
            let l = loads(&mut lb);
            assert!(l[1].abs_diff(l[2]) <= 1, "exact: {got:?}, loads {l:?}");
            if got[0] > 0 {
                assert!(l[0].abs_diff(l[1]) <= 1, "exact: {got:?}, loads {l:?}");
            } else {
                assert!(l[1] <= held + 1, "exact: {got:?}, loads {l:?}");
            }
        } else {
            // Backend 1 only when both choices are it: about 1/9.
            assert!(got[0] <= 40, "two choices: {got:?}");
            assert!(got[1].abs_diff(got[2]) <= 40, "two choices: {got:?}");
        }
        // Established flows stay where they are.
        for (f, id) in conns.iter().filter(|(_, id)| *id == 1).take(20) {
            assert_encap(&lb, &f.packet("A", b"more"), f, *id);
        }
    }
}

#[test]
fn least_connections_follows_the_weights() {
    if root_env("packet tests").is_none() {
        return;
    }
    // 10 000 connections held open, weights 1, 1, 2: the table holds
    // backend 3 twice, LIMITS says weight 2.
    for (scheduler, table, seq_len) in [
        (lb_common::scheduler::LEAST_CONN, vec![1, 2, 3, 3], 0),
        (lb_common::scheduler::LEAST_CONN_EXACT, vec![1, 2, 3], 3),
    ] {
        let mut lb = counted_web(scheduler, &table, seq_len, 0);
        lb.set_limit(3, 2, 0);
        let mut got = [0u32; 3];
        for i in 0..10_000 {
            got[connect(&lb, i).1 as usize - 1] += 1;
        }
        assert_shares_near(got.map(|c| c as f64 / 10_000.0), [0.25, 0.25, 0.5]);
        assert_eq!(loads(&mut lb), got.map(u64::from));
    }
}

#[test]
fn max_connections_stops_new_flows_at_the_limit_and_resumes_below_it() {
    if root_env("packet tests").is_none() {
        return;
    }
    let mut lb = counted_web(lb_common::scheduler::MAGLEV, &[1, 2, 3], 0, 0);
    for id in 1..=3 {
        lb.set_limit(id, 1, 5);
    }
    // 15 connections fill the three backends, whatever Maglev says.
    let conns: Vec<(Flow, u32)> = (0..15).map(|i| connect(&lb, i)).collect();
    assert_eq!(loads(&mut lb), [5, 5, 5]);
    // The 16th is dropped and counted, for the VIP too.
    let drops = lb.vip_stats(WEB).drops;
    let f = Flow::tcp("192.0.2.99", 40000, "10.100.0.1", 80);
    assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_DROP);
    assert_eq!(lb.counter(counter::DROP_BACKENDS_FULL), 1);
    assert_eq!(lb.vip_stats(WEB).drops, drops + 1);
    assert!(lb.flow(&f.key()).is_none());
    // Established connections carry on at the limit.
    for (c, id) in &conns {
        assert_encap(&lb, &c.packet("A", b"data"), c, *id);
    }
    // One ends on backend 2: the next new flow goes there.
    let (c, _) = conns.iter().find(|(_, id)| *id == 2).unwrap();
    assert_eq!(lb.run(&c.packet("FA", b"")).unwrap().action, XDP_TX);
    assert_encap(&lb, &f.packet("S", b""), &f, 2);
    assert_eq!(loads(&mut lb), [5, 5, 5]);
}

#[test]
fn persistence_keeps_a_client_on_its_backend_through_a_table_change_until_it_goes_down() {
    if root_env("packet tests").is_none() {
        return;
    }
    let key = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    let mut lb = counted_web(lb_common::scheduler::MAGLEV, &[1, 2, 3], 0, 300);
    // 100 connections of one client: one backend.
    let conn = |lb: &Balancer, port: u16| {
        let f = Flow::tcp("198.51.100.7", port, "10.100.0.1", 80);
        assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_TX);
        lb.flow(&f.key()).unwrap().backend
    };
    let first = conn(&lb, 30000);
    for p in 1..100 {
        assert_eq!(conn(&lb, 30000 + p), first, "connection {p}");
    }
    assert_eq!(lb.counter(counter::PERSIST_HIT), 99);
    // Without persistence the same ports spread.
    let spread: std::collections::BTreeSet<u32> = (0..100)
        .map(|p| {
            let f = Flow::tcp("198.51.100.8", 30000 + p, "10.100.0.1", 80);
            (hash(&f) % test_sizes().ring_size) % 3 + 1
        })
        .collect();
    assert_eq!(spread.len(), 3, "the flow hash alone would spread them");
    // The Maglev table changes (every slot now names another backend):
    // the client stays.
    let rotated: Vec<u32> = [1, 2, 3].iter().map(|b| b % 3 + 1).collect();
    lb.write_ring(WEB, 0, &ring(&rotated, test_sizes().ring_size))
        .unwrap();
    let mut info = lb.vip_info(&key).unwrap();
    info.active_ring = 0;
    lb.add_vip(key, info).unwrap();
    assert_eq!(conn(&lb, 31000), first);
    // Its backend stops taking new flows (drained: weight 0, out of the
    // table, as the daemon does it): the client moves, and stays there.
    let others: Vec<u32> = [1, 2, 3].into_iter().filter(|b| *b != first).collect();
    let retable = |lb: &mut Balancer, ids: &[u32]| {
        let mut info = lb.vip_info(&key).unwrap();
        info.active_ring ^= 1;
        lb.write_ring(WEB, info.active_ring, &ring(ids, test_sizes().ring_size))
            .unwrap();
        lb.add_vip(key, info).unwrap();
    };
    lb.set_limit(first, 0, 0);
    retable(&mut lb, &others);
    let second = conn(&lb, 32000);
    assert_ne!(second, first);
    assert_eq!(conn(&lb, 32001), second);
    // And when that one goes down, again.
    lb.set_backend(second, backend(addr_of(second), BACKEND_F_DOWN, WEB))
        .unwrap();
    let last: Vec<u32> = others.into_iter().filter(|b| *b != second).collect();
    retable(&mut lb, &last);
    let third = conn(&lb, 33000);
    assert!(
        third != second && third != first,
        "{first} {second} {third}"
    );
}

#[test]
fn the_flow_table_grows_under_held_connections_and_none_changes_backend_or_count() {
    if root_env("packet tests").is_none() {
        return;
    }
    // A table made for 65 536 flows: 16 384 sets, 4096 in use at first
    // (32 768 entries). 9000 connections fill more than a quarter of them.
    let mut lb = counted_web_in(65_536, lb_common::scheduler::MAGLEV, &[1, 2, 3], 0, 0);
    assert_eq!(lb.dp().flow_sets().unwrap(), (4096, 4096));
    let mut conns: Vec<(Flow, u32)> = (0..9000).map(|i| connect(&lb, i)).collect();
    // At this load a set of eight overflows now and then (the table's key
    // is random): a flow pushed out of its full set is not followed.
    conns.retain(|(f, _)| lb.flow(&f.key()).is_some());
    let held = conns.len();
    assert!(held > 8990, "{held}");
    assert_eq!(
        lb.counter(counter::FLOW_PUSHED_OUT),
        9000 - held as u64,
        "each flow lost was pushed out, and counted"
    );
    assert_eq!(lb.flow_count(), held);
    assert_eq!(loads(&mut lb).iter().sum::<u64>(), held as u64);
    // Every new flow would now go to backend 1: a flow that reaches 2 or
    // 3 was found in the table.
    lb.write_ring(WEB, 1, &ring(&[1], test_sizes().ring_size))
        .unwrap();
    let on_others = conns.iter().filter(|(_, id)| *id != 1).count();
    assert!(on_others > 5000, "{on_others}");
    let moves = |lb: &Balancer, f: &Flow| {
        let ident = lb.flows().ident(&f.key());
        lb_common::ident_set(ident, 4096) != lb_common::ident_set(ident, 8192)
    };
    let moving = conns.iter().filter(|(f, _)| moves(&lb, f)).count();
    assert!(moving > 4000, "about half the flows change sets: {moving}");
    let (f, id) = conns
        .iter()
        .find(|(f, id)| *id != 1 && moves(&lb, f))
        .cloned()
        .unwrap();
    let send_all = |lb: &Balancer, conns: &[(Flow, u32)]| {
        let (hits, misses) = (
            lb.counter(counter::FLOW_HIT),
            lb.counter(counter::FLOW_MISS),
        );
        for (f, id) in conns {
            assert_encap(lb, &f.packet("A", b"data"), f, *id);
        }
        assert_eq!(lb.counter(counter::FLOW_HIT), hits + conns.len() as u64);
        assert_eq!(lb.counter(counter::FLOW_MISS), misses);
    };

    // The growth's first step only, as a daemon stopped in its middle
    // leaves it: flows are stored at their new sets, none moved yet. Each
    // held connection is still found (at its old set), a SYN repeated on
    // one keeps its backend, and a new connection is stored and found.
    assert_eq!(lb.grow_flows(held as u64, true), Some((4096, 8192)));
    assert_eq!(lb.dp().flow_sets().unwrap(), (8192, 4096));
    send_all(&lb, &conns);
    let kept = lb.counter(counter::SYN_KEPT_FLOW);
    assert_encap(&lb, &f.packet("S", b""), &f, id);
    assert_eq!(lb.counter(counter::SYN_KEPT_FLOW), kept + 1);
    conns.push(connect(&lb, 9000));
    assert_eq!(conns[held].1, 1);
    let held = held + 1;
    assert_eq!(lb.flow_count(), held);

    // The growth carried on (as the next daemon's census does): every flow
    // at its new set, once, with its backend and its count.
    assert_eq!(lb.grow_flows(held as u64, false), Some((4096, 8192)));
    assert_eq!(lb.dp().flow_sets().unwrap(), (8192, 8192));
    assert_eq!(lb.flow_count(), held, "no flow left twice or lost");
    for (f, id) in &conns {
        assert_eq!(lb.flow(&f.key()).map(|v| v.backend), Some(*id));
    }
    send_all(&lb, &conns);
    assert_eq!(loads(&mut lb).iter().sum::<u64>(), held as u64);
    // Nothing more to grow for these flows; more of them grow it again,
    // never past the table.
    assert_eq!(lb.grow_flows(held as u64, false), None);
    assert_eq!(lb.grow_flows(1 << 30, false), Some((8192, 16_384)));
    send_all(&lb, &conns);
    assert_eq!(lb.flow_count(), held);
}

#[test]
fn the_flow_table_grows_while_another_cpu_forwards_and_stores_flows() {
    if root_env("packet tests").is_none() {
        return;
    }
    // The mover against a CPU that, the whole time, forwards the held
    // connections' packets (a miss would send one of backend 2 or 3's to
    // 1, the only backend new flows now get) and stores new connections
    // into the sets the flows move to. Few enough flows that no set of
    // eight fills (about once in 10 000 runs), so none is pushed out.
    let mut lb = counted_web_in(65_536, lb_common::scheduler::MAGLEV, &[1, 2, 3], 0, 0);
    let conns: Vec<(Flow, u32)> = (0..2000).map(|i| connect(&lb, i)).collect();
    lb.write_ring(WEB, 1, &ring(&[1], test_sizes().ring_size))
        .unwrap();
    let prog = lb_tests::bench::program(&lb, lb_common::progs::BALANCER).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let outer_dst = |d: &[u8]| IpAddr::V4(Ipv4Addr::new(d[30], d[31], d[32], d[33]));
    let (wrong, sent, opened, growth) = std::thread::scope(|s| {
        let cpu0 = s.spawn(|| {
            lb_tests::bench::pin(0).unwrap();
            let (mut wrong, mut sent, mut opened) = (Vec::new(), 0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < conns.len() {
                let (f, id) = &conns[sent % conns.len()];
                let r = lb_tests::bench::run(prog, &f.packet("A", b""), 1).unwrap();
                if r.action != XDP_TX || outer_dst(&r.data) != addr_of(*id) {
                    wrong.push(sent % conns.len());
                }
                if sent % 16 == 0 {
                    let f = client(100_000 + sent as u32 / 16);
                    for flags in ["S", "A"] {
                        let r = lb_tests::bench::run(prog, &f.packet(flags, b""), 1).unwrap();
                        assert_eq!(r.action, XDP_TX);
                    }
                    opened.push(f);
                }
                sent += 1;
            }
            (wrong, sent, opened)
        });
        lb_tests::bench::pin(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let growth = lb.data_plane().grow_flow_table(1 << 30).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (wrong, sent, opened) = cpu0.join().unwrap();
        (wrong, sent, opened, growth)
    });
    let g = growth.expect("grown");
    assert_eq!((g.from, g.to, g.sets_unmoved), (4096, 16_384, 0));
    assert!(sent > 2 * conns.len(), "packets sent meanwhile: {sent}");
    assert!(
        wrong.is_empty(),
        "{} packets of held connections sent elsewhere, the first of: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
    // Afterwards every held connection at its new set with its backend,
    // every new one stored, each once.
    assert_eq!(lb.counter(counter::FLOW_PUSHED_OUT), 0);
    let table = lb.dp().flow_table().unwrap();
    for (f, id) in &conns {
        assert_eq!(table.get(&f.key()).unwrap().map(|v| v.backend), Some(*id));
    }
    for f in &opened {
        assert_eq!(table.get(&f.key()).unwrap().map(|v| v.backend), Some(1));
    }
    assert_eq!(table.len().unwrap(), conns.len() + opened.len());
}

#[test]
fn a_flow_table_that_does_not_grow_is_all_in_use_and_a_reload_asking_for_that_grows_it() {
    if root_env("packet tests").is_none() {
        return;
    }
    private_netns().unwrap();
    let sizes = Sizes {
        flows: 65_536,
        ..test_sizes()
    };
    let cfg = config(sizes.ring_size);
    let whole = Config {
        flags: cfg.flags | lb_common::CONFIG_F_FLOWS_WHOLE,
        ..cfg
    };
    // `tables.flow_table_grows: false` from the start: all 16 384 sets.
    let mut lb = Balancer::load(sizes).unwrap();
    lb.set_config(whole).unwrap();
    assert_eq!(lb.dp().flow_sets().unwrap(), (16_384, 16_384));
    assert_eq!(lb.grow_flows(0, false), None);
    // Growing (the default): a quarter; a reload that turns growth off
    // has the next census grow it to all of it, whatever the flows held.
    let mut lb = Balancer::load(sizes).unwrap();
    lb.set_config(cfg).unwrap();
    assert_eq!(lb.dp().flow_sets().unwrap(), (4096, 4096));
    lb.set_config(whole).unwrap();
    assert_eq!(lb.dp().flow_sets().unwrap(), (4096, 4096));
    assert_eq!(lb.grow_flows(0, false), Some((4096, 16_384)));
}

/// The counted WEB VIP with a table made for 8 flows (two sets of eight
/// entries), and `n` clients whose flows fall in the first set (by the
/// table's keyed hash, as the data path computes it).
fn one_set(n: usize) -> (Balancer, Vec<Flow>) {
    let lb = counted_web_in(8, lb_common::scheduler::MAGLEV, &[1, 2, 3], 0, 0);
    let table = lb.flows();
    let flows: Vec<Flow> = (0..1000u32)
        .map(client)
        .filter(|f| table.set_of(&f.key()) == 0)
        .take(n)
        .collect();
    assert_eq!(flows.len(), n);
    (lb, flows)
}

#[test]
fn a_flow_past_a_removed_one_in_its_set_is_still_found_and_the_gone_way_is_taken_first() {
    if root_env("packet tests").is_none() {
        return;
    }
    // Lookups stop at a set's first never-used way: a removed flow's way
    // must stay marked gone, not free, or the flows stored after it would
    // be missed.
    let (mut lb, flows) = one_set(4);
    let mut ids = Vec::new();
    for f in &flows[..3] {
        assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_TX);
        assert_eq!(lb.run(&f.packet("A", b"")).unwrap().action, XDP_TX);
        ids.push(lb.flow(&f.key()).unwrap().backend);
    }
    // The second is removed (as NAT removes a flow whose port is reused).
    lb.forget_flow(&flows[1].key()).unwrap();
    let (hits, misses) = (
        lb.counter(counter::FLOW_HIT),
        lb.counter(counter::FLOW_MISS),
    );
    assert_encap(&lb, &flows[2].packet("A", b"after"), &flows[2], ids[2]);
    assert_eq!(
        lb.counter(counter::FLOW_HIT),
        hits + 1,
        "the third flow found"
    );
    assert_eq!(lb.counter(counter::FLOW_MISS), misses);
    // A new flow takes the gone way (the set's second), not a never-used one.
    assert_eq!(lb.run(&flows[3].packet("S", b"")).unwrap().action, XDP_TX);
    let mut at = None;
    let ident = lb.flows().ident(&flows[3].key());
    lb.flows()
        .each(usize::MAX, |i, k, _| {
            if k == ident {
                at = Some(i);
            }
        })
        .unwrap();
    assert_eq!(at, Some(1));
}

#[test]
fn a_full_set_gives_up_a_single_packet_flow_first_then_the_oldest_with_its_count() {
    if root_env("packet tests").is_none() {
        return;
    }
    let (mut lb, flows) = one_set(10);
    let backend = |lb: &Balancer, f: &Flow| lb.flow(&f.key()).map(|v| v.backend);
    // Seven connections, each a few milliseconds after the last (the
    // stamps differ), then a SYN alone: the set is full.
    let mut conns = Vec::new();
    for f in &flows[..7] {
        assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_TX);
        assert_eq!(lb.run(&f.packet("A", b"")).unwrap().action, XDP_TX);
        conns.push((f, backend(&lb, f).unwrap()));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(lb.run(&flows[7].packet("S", b"")).unwrap().action, XDP_TX);
    assert!(backend(&lb, &flows[7]).is_some());
    assert_eq!(lb.flow_count(), 8);
    assert_eq!(
        loads(&mut lb).iter().sum::<u64>(),
        8,
        "each stored flow counted"
    );
    assert_eq!(lb.counter(counter::FLOW_PUSHED_OUT), 0);
    // A ninth flow takes the place of the SYN alone, not of a connection.
    assert_eq!(lb.run(&flows[8].packet("S", b"")).unwrap().action, XDP_TX);
    assert_eq!(lb.run(&flows[8].packet("A", b"")).unwrap().action, XDP_TX);
    assert_eq!(backend(&lb, &flows[7]), None, "the SYN alone is given up");
    for (f, id) in &conns {
        assert_eq!(backend(&lb, f), Some(*id), "a connection kept its entry");
    }
    assert_eq!(loads(&mut lb).iter().sum::<u64>(), 8, "its count released");
    assert_eq!(lb.counter(counter::FLOW_PUSHED_OUT), 1);
    // With eight connections in the set, a tenth takes the place of the
    // one seen longest ago (the first), whose count goes with it.
    let mut want = loads(&mut lb);
    want[conns[0].1 as usize - 1] -= 1;
    assert_eq!(lb.run(&flows[9].packet("S", b"")).unwrap().action, XDP_TX);
    let tenth = backend(&lb, &flows[9]).expect("the tenth stored");
    want[tenth as usize - 1] += 1;
    assert_eq!(backend(&lb, conns[0].0), None, "the oldest is given up");
    for (f, id) in &conns[1..] {
        assert_eq!(backend(&lb, f), Some(*id));
    }
    assert!(backend(&lb, &flows[8]).is_some());
    assert_eq!(loads(&mut lb), want);
    assert_eq!(lb.counter(counter::FLOW_INSERT_FAILED), 0);
    assert_eq!(lb.counter(counter::FLOW_PUSHED_OUT), 2);
}

#[test]
fn the_flow_walk_takes_evicted_and_idle_flows_off_the_counts() {
    if root_env("packet tests").is_none() {
        return;
    }
    let mut lb = counted_web(lb_common::scheduler::LEAST_CONN, &[1, 2, 3], 0, 0);
    let conns: Vec<(Flow, u32)> = (0..60).map(|i| connect(&lb, i)).collect();
    let before = loads(&mut lb);
    // 20 entries vanish uncounted (as when two CPUs write one entry at
    // once and it is dropped): the walk takes them off.
    let mut want = before;
    for (f, id) in &conns[..20] {
        lb.forget_flow(&f.key()).unwrap();
        want[*id as usize - 1] -= 1;
    }
    let c = lb.dp().flow_census(60_000_000_000, 30_000_000_000).unwrap();
    assert_eq!((c.lost, c.ended), (20, 0));
    assert_eq!(loads(&mut lb), want);
    // A second walk finds nothing more to correct.
    let c = lb.dp().flow_census(60_000_000_000, 30_000_000_000).unwrap();
    assert_eq!((c.lost, c.ended), (0, 0));
    // UDP flows idle past the timeout are ended (their mark cleared).
    let mut dns = lb
        .vip_info(&vip_key(ip("10.100.0.1"), 53, PROTO_UDP))
        .unwrap();
    dns.flags = lb_common::VIP_F_COUNT;
    lb.add_vip(vip_key(ip("10.100.0.1"), 53, PROTO_UDP), dns)
        .unwrap();
    lb.set_limit(4, 1, 0);
    lb.set_limit(5, 1, 0);
    // Two datagrams each: the second rewrites the flow's stamp, which
    // keeps its UDP mark (`FLOW_UDP`: the table keeps no key).
    for p in 0..10 {
        let f = Flow::udp("192.0.2.77", 7000 + p, "10.100.0.1", 53);
        assert_eq!(lb.run(&f.packet("", b"q")).unwrap().action, XDP_TX);
        assert_eq!(lb.run(&f.packet("", b"r")).unwrap().action, XDP_TX);
    }
    assert_eq!(lb.load_of(4) + lb.load_of(5), 10);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let c = lb.dp().flow_census(60_000_000_000, 0).unwrap();
    assert_eq!((c.lost, c.ended), (0, 10));
    assert_eq!(lb.load_of(4) + lb.load_of(5), 0);
    assert_eq!(loads(&mut lb), want, "TCP counts untouched");
    // Their entries lost the mark in the table (`lb_flow_swap`): a second
    // walk ends none of them again.
    let c = lb.dp().flow_census(60_000_000_000, 0).unwrap();
    assert_eq!((c.lost, c.ended), (0, 0), "ended once");
    for p in 0..10 {
        let f = Flow::udp("192.0.2.77", 7000 + p, "10.100.0.1", 53);
        let v = lb.flow(&f.key()).expect("the flow stays in the table");
        assert_eq!(v.last_seen_ns & lb_common::FLOW_OPEN, 0, "unmarked");
    }
}

/// The WEB VIP's backends (1, 2, 3) set to forward with `mode_flag`.
fn web_forwarding(lb: &mut Balancer, mode_flag: u8) {
    for id in 1..=3 {
        lb.set_backend(id, backend(addr_of(id), mode_flag, WEB))
            .unwrap();
    }
}

#[test]
fn l2_direct_return_rewrites_only_the_macs_to_an_on_link_backend() {
    let Some(mut lb) = setup() else { return };
    // The backends' segment on a veth, with their neighbour entries; a
    // fourth backend behind a gateway on it.
    shell(
        "sysctl -qw net.ipv4.ip_forward=1 && ip link add l2t0 address 02:00:00:00:aa:01 type veth peer name l2t1 \
        && ip link set l2t0 up && ip link set l2t1 up && ip link set lo up \
        && ip addr add 10.0.1.254/24 dev l2t0 \
        && ip neigh replace 10.0.1.1 lladdr 02:00:00:00:bb:01 dev l2t0 nud permanent \
        && ip neigh replace 10.0.1.2 lladdr 02:00:00:00:bb:02 dev l2t0 nud permanent \
        && ip neigh replace 10.0.1.3 lladdr 02:00:00:00:bb:03 dev l2t0 nud permanent \
        && ip route add 10.0.9.0/24 via 10.0.1.3 dev l2t0",
    );
    web_forwarding(&mut lb, lb_common::BACKEND_F_DSR_L2);
    for (i, vlan) in [(0u16, None), (1, Some(7))] {
        let f = Flow::tcp("192.0.2.1", 100 + i, "10.100.0.1", 80);
        let want = pick(&f, &[1, 2, 3]);
        let frame = f.packet_vlan("S", b"hello", vlan);
        let out = lb.run(&frame).unwrap();
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", lb.counters());
        // The very frame, to the backend's MAC from the egress interface's.
        let mut expected = frame.clone();
        expected[..6].copy_from_slice(&[0x02, 0, 0, 0, 0xbb, want as u8]);
        expected[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xaa, 0x01]);
        assert_eq!(out.data, expected);
        assert_eq!(lb.flow(&f.key()).unwrap().backend, want);
    }
    // A backend the FIB reaches through a gateway: dropped, counted (the
    // frame would reach the router with the VIP as its destination).
    lb.set_backend(1, backend(ip("10.0.9.5"), lb_common::BACKEND_F_DSR_L2, WEB))
        .unwrap();
    replace_table(&mut lb, vip_key(ip("10.100.0.1"), 80, PROTO_TCP), WEB, &[1]);
    let f = Flow::tcp("192.0.2.1", 200, "10.100.0.1", 80);
    assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_DROP);
    assert_eq!(lb.counter(counter::DROP_NOT_ON_LINK), 1);
    // No route at all: dropped, the gateway MAC is no way to an L2 backend.
    lb.set_backend(1, backend(ip("10.7.7.7"), lb_common::BACKEND_F_DSR_L2, WEB))
        .unwrap();
    let f = Flow::tcp("192.0.2.1", 201, "10.100.0.1", 80);
    assert_eq!(lb.run(&f.packet("S", b"")).unwrap().action, XDP_DROP);
    assert_eq!(lb.counter(counter::DROP_NO_ROUTE), 1);
    assert_eq!(lb.counter(counter::FIB_FALLBACK), 0);
}

#[test]
fn gue_puts_the_tunnel_in_udp_and_the_decapsulator_takes_it_out() {
    let Some(mut lb) = setup() else { return };
    web_forwarding(&mut lb, lb_common::BACKEND_F_GUE);
    for (id, _, vip) in backends() {
        if vip == WEB6 {
            lb.set_backend(id, backend(addr_of(id), lb_common::BACKEND_F_GUE, vip))
                .unwrap();
        }
    }
    let mut d = Balancer::load_decap().unwrap();
    d.set_decap(&decap_vips_with_web6(), &[]).unwrap();
    for (i, f) in [
        Flow::tcp("192.0.2.1", 300, "10.100.0.1", 80),
        Flow::tcp("2001:db8::1", 301, "fd00:100::1", 80),
    ]
    .into_iter()
    .enumerate()
    {
        let ids: &[u32] = if i == 0 { &[1, 2, 3] } else { &[10, 11] };
        let want = pick(&f, ids);
        let frame = f.packet("S", b"payload");
        let out = lb.run(&frame).unwrap();
        assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
        let h = hash(&f);
        let dst = addr_of(want);
        let e = Encap {
            dmac: GATEWAY_MAC,
            smac: LB_MAC,
            src: outer_src(dst, h),
            dst,
            hash: h,
        };
        assert_eq!(
            out.data,
            expected_gue(&frame, &e, lb_common::DEFAULT_GUE_PORT)
        );
        // A reference parser reads it as UDP to the GUE port.
        let p = SlicedPacket::from_ethernet(&out.data).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("no UDP in {:?}", out.data)
        };
        assert_eq!(u.destination_port(), lb_common::DEFAULT_GUE_PORT);
        assert_eq!(u.length() as usize, ip_part(&frame).len() + 8);
        // The backend's decapsulator gives the stack the client's packet.
        let back = d.run(&out.data).unwrap();
        assert_eq!(back.action, XDP_PASS, "{:?}", d.decap_counters());
        assert_eq!(ip_part(&back.data), ip_part(&frame));
    }
    assert_eq!(d.decap_counter(decap_counter::DECAPPED), 2);
    // UDP to another port, or GUE with something else than IP inside: not
    // a tunnel of ours.
    let f = Flow::tcp("192.0.2.1", 302, "10.100.0.1", 80);
    let frame = f.packet("S", b"");
    let e = Encap {
        dmac: GATEWAY_MAC,
        smac: LB_MAC,
        src: ip("10.255.0.7"),
        dst: ip("10.0.1.1"),
        hash: 5,
    };
    let other_port = expected_gue(&frame, &e, 4789);
    assert_eq!(d.run(&other_port).unwrap().data, other_port);
    let mut not_ip = expected_gue(&frame, &e, lb_common::DEFAULT_GUE_PORT);
    not_ip[14 + 20 + 8] = 0x30;
    assert_eq!(d.run(&not_ip).unwrap().data, not_ip);
    assert_eq!(d.decap_counter(decap_counter::PASS_NOT_TUNNEL), 2);
}

/// `decap_vips` and the IPv6 web VIP.
fn decap_vips_with_web6() -> Vec<DecapVip> {
    let mut v = decap_vips();
    v.push(DecapVip {
        addr: ip("fd00:100::1"),
        port: 80,
        proto: PROTO_TCP,
    });
    v
}

const SNAT4: &str = "10.10.0.2";
const SNAT6: &str = "fd10::2";

/// WEB and WEB6 by NAT from SNAT4 / SNAT6, ports `lo..=hi`; WEB's backends
/// listen on 8080, WEB6's on the VIP's port. Closed flows give up their
/// port at once (after the data path's one-second grace).
fn nat_setup(lo: u16, hi: u16) -> Balancer {
    let mut lb = setup().expect("root");
    let mut cfg = config(test_sizes().ring_size);
    cfg.flags |= lb_common::CONFIG_F_NAT;
    cfg.nat_tcp_timeout_ns = 900_000_000_000;
    cfg.nat_closed_timeout_ns = 1;
    lb.set_config(cfg).unwrap();
    {
        use lb_userspace::dataplane::DataPlane;
        let dp = lb.dp();
        dp.set_nat_addrs(WEB, &[ip(SNAT4)]).unwrap();
        dp.set_nat_addrs(WEB6, &[ip(SNAT6)]).unwrap();
        for (id, port) in [(1, 8080u16), (2, 8080), (3, 8080), (10, 0), (11, 0)] {
            let l = lb_common::BackendLimit {
                weight: 1,
                port: port.to_be(),
                ..Default::default()
            };
            dp.set_limit(id, &l).unwrap();
        }
    }
    for (id, addr, vip) in backends() {
        if vip == WEB || vip == WEB6 {
            lb.set_backend(id, backend(addr, lb_common::BACKEND_F_NAT, vip))
                .unwrap();
        }
    }
    for (key, id) in [
        (vip_key(ip("10.100.0.1"), 80, PROTO_TCP), WEB),
        (vip_key(ip("fd00:100::1"), 80, PROTO_TCP), WEB6),
    ] {
        let mut info = lb.vip_info(&key).unwrap();
        info.mode = lb_common::mode::NAT;
        info.nat_addrs = 1 | (1 << 4);
        info.nat_port_lo = lo;
        info.nat_port_hi = hi;
        assert_eq!(info.vip_id, id);
        lb.add_vip(key, info).unwrap();
    }
    lb
}

/// `f`'s packet as the balancer should send it on: from `src` to `dst`,
/// between `smac` and `dmac`, built afresh (its checksums computed whole).
fn renat(
    f: &Flow,
    src: Flow,
    flags: &str,
    payload: &[u8],
    dmac: [u8; 6],
    smac: [u8; 6],
) -> Vec<u8> {
    let _ = f;
    let mut p = src.packet(flags, payload);
    p[..6].copy_from_slice(&dmac);
    p[6..12].copy_from_slice(&smac);
    p
}

/// The source port the balancer gave a NAT flow (from its output).
fn nat_port(out: &[u8]) -> u16 {
    let p = SlicedPacket::from_ethernet(out).unwrap();
    match p.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => t.source_port(),
        Some(etherparse::TransportSlice::Udp(u)) => u.source_port(),
        _ => panic!("no TCP or UDP in {out:?}"),
    }
}

#[test]
fn nat_rewrites_both_ways_with_checksums_a_fresh_packet_would_have() {
    if root_env("packet tests").is_none() {
        return;
    }
    let lb = nat_setup(20000, 20999);
    for (client, vip, snat, ids, bport) in [
        ("192.0.2.1", "10.100.0.1", SNAT4, &[1u32, 2, 3][..], 8080u16),
        ("2001:db8::1", "fd00:100::1", SNAT6, &[10, 11][..], 80),
    ] {
        let f = Flow::tcp(client, 40000, vip, 80);
        let want = pick(&f, ids);
        let be = addr_of(want);
        let out = lb.run(&f.packet("S", b"hello")).unwrap();
        assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
        let port = nat_port(&out.data);
        assert!((20000..=20999).contains(&port), "port {port}");
        let to_backend = Flow {
            src: ip(snat),
            dst: be,
            sport: port,
            dport: bport,
            proto: PROTO_TCP,
        };
        let expected = renat(&f, to_backend.clone(), "S", b"hello", GATEWAY_MAC, LB_MAC);
        assert_eq!(out.data, expected, "to the backend");
        // The next packets keep the port.
        let out = lb.run(&f.packet("A", b"more")).unwrap();
        assert_eq!(nat_port(&out.data), port);
        // The backend's reply, back to the client from the VIP, to the
        // MAC the client's packets came from.
        let from_backend = Flow {
            src: be,
            dst: ip(snat),
            sport: bport,
            dport: port,
            proto: PROTO_TCP,
        };
        let reply = from_backend.packet("SA", b"world");
        let out = lb.run(&reply).unwrap();
        assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
        let to_client = Flow {
            src: ip(vip),
            dst: ip(client),
            sport: 80,
            dport: 40000,
            proto: PROTO_TCP,
        };
        let expected = renat(&f, to_client, "SA", b"world", CLIENT_MAC, LB_MAC);
        assert_eq!(out.data, expected, "to the client");
    }
    assert_eq!(lb.counter(counter::NAT_REPLY), 2);
    // A packet to the source address that is no flow's reply: the host's.
    let stray = Flow::tcp("10.0.1.1", 8080, SNAT4, 20500).packet("SA", b"");
    assert_eq!(lb.run(&stray).unwrap().action, XDP_PASS);
}

#[test]
fn nat_keeps_a_udp_checksum_of_zero_and_fixes_a_set_one() {
    if root_env("packet tests").is_none() {
        return;
    }
    let mut lb = nat_setup(20000, 20999);
    // The DNS VIP by NAT too, to backends 4 and 5 on port 5353.
    {
        use lb_userspace::dataplane::DataPlane;
        let dp = lb.dp();
        dp.set_nat_addrs(DNS, &[ip(SNAT4)]).unwrap();
        for id in [4, 5] {
            let l = lb_common::BackendLimit {
                weight: 1,
                port: 5353u16.to_be(),
                ..Default::default()
            };
            dp.set_limit(id, &l).unwrap();
        }
    }
    for id in [4, 5] {
        lb.set_backend(id, backend(addr_of(id), lb_common::BACKEND_F_NAT, DNS))
            .unwrap();
    }
    let key = vip_key(ip("10.100.0.1"), 53, PROTO_UDP);
    let mut info = lb.vip_info(&key).unwrap();
    info.mode = lb_common::mode::NAT;
    info.nat_addrs = 1;
    info.nat_port_lo = 20000;
    info.nat_port_hi = 20999;
    lb.add_vip(key, info).unwrap();
    for zero in [false, true] {
        let f = Flow::udp("192.0.2.9", 5000 + zero as u16, "10.100.0.1", 53);
        let mut frame = f.packet("", b"query");
        let ck = 14 + 20 + 6;
        if zero {
            frame[ck..ck + 2].copy_from_slice(&[0, 0]);
        }
        let out = lb.run(&frame).unwrap();
        assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
        let port = nat_port(&out.data);
        let be = addr_of(pick(&f, &[4, 5]));
        let mut expected = Flow::udp(SNAT4, port, &be.to_string(), 5353).packet("", b"query");
        expected[..6].copy_from_slice(&GATEWAY_MAC);
        expected[6..12].copy_from_slice(&LB_MAC);
        if zero {
            expected[ck..ck + 2].copy_from_slice(&[0, 0]);
        }
        assert_eq!(out.data, expected, "zero checksum {zero}");
    }
}

#[test]
fn nat_ports_run_out_and_a_closed_flows_port_is_taken_again() {
    if root_env("packet tests").is_none() {
        return;
    }
    // One port, one backend.
    let mut lb = nat_setup(20000, 20000);
    replace_table(&mut lb, vip_key(ip("10.100.0.1"), 80, PROTO_TCP), WEB, &[1]);
    let mut info = lb
        .vip_info(&vip_key(ip("10.100.0.1"), 80, PROTO_TCP))
        .unwrap();
    info.mode = lb_common::mode::NAT;
    info.nat_addrs = 1;
    info.nat_port_lo = 20000;
    info.nat_port_hi = 20000;
    lb.add_vip(vip_key(ip("10.100.0.1"), 80, PROTO_TCP), info)
        .unwrap();
    let a = Flow::tcp("192.0.2.1", 1000, "10.100.0.1", 80);
    let b = Flow::tcp("192.0.2.1", 1001, "10.100.0.1", 80);
    assert_eq!(lb.run(&a.packet("S", b"")).unwrap().action, XDP_TX);
    // A retransmitted SYN keeps its port; another flow finds none.
    assert_eq!(lb.run(&a.packet("S", b"")).unwrap().action, XDP_TX);
    assert_eq!(lb.run(&b.packet("S", b"")).unwrap().action, XDP_DROP);
    assert_eq!(lb.counter(counter::DROP_NAT_NO_PORT), 1);
    assert!(lb.flow(&b.key()).is_none());
    // `a` ends (the client's RST); after the grace its port is free.
    assert_eq!(lb.run(&a.packet("R", b"")).unwrap().action, XDP_TX);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = lb.run(&b.packet("S", b"")).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    assert_eq!(nat_port(&out.data), 20000);
    assert_eq!(lb.counter(counter::NAT_PORT_REUSED), 1);
    // The ended flow's entry went with its port: its next packet is a new
    // flow, which finds no port (b holds it).
    assert!(lb.flow(&a.key()).is_none());
    assert_eq!(lb.run(&a.packet("A", b"")).unwrap().action, XDP_DROP);
}

#[test]
fn nat_times_each_handshake_and_counts_refusals_per_backend() {
    if root_env("packet tests").is_none() {
        return;
    }
    let lb = nat_setup(20000, 20999);
    let answer = |lb: &Balancer, f: &Flow, flags: &str| -> u32 {
        let out = lb.run(&f.packet("S", b"")).unwrap();
        assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
        let id = pick(f, &[1, 2, 3]);
        let reply = Flow {
            src: addr_of(id),
            dst: ip(SNAT4),
            sport: 8080,
            dport: nat_port(&out.data),
            proto: PROTO_TCP,
        };
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(lb.run(&reply.packet(flags, b"")).unwrap().action, XDP_TX);
        // Only the first answer counts.
        assert_eq!(lb.run(&reply.packet(flags, b"")).unwrap().action, XDP_TX);
        id
    };
    let f = Flow::tcp("192.0.2.1", 41000, "10.100.0.1", 80);
    let id = answer(&lb, &f, "SA");
    let s = lb.backend_stats(id);
    assert_eq!((s.handshakes, s.refused), (1, 0));
    assert!(
        (2_000_000..1_000_000_000).contains(&s.handshake_ns),
        "{} ns",
        s.handshake_ns
    );
    // The connection ends both ways; its 4-tuple starts a new one, which
    // keeps the port and is timed again (its record no longer ended).
    assert_eq!(lb.run(&f.packet("FA", b"")).unwrap().action, XDP_TX);
    let back = Flow {
        src: addr_of(id),
        dst: ip(SNAT4),
        sport: 8080,
        dport: nat_port(&lb.run(&f.packet("A", b"")).unwrap().data),
        proto: PROTO_TCP,
    };
    assert_eq!(lb.run(&back.packet("FA", b"")).unwrap().action, XDP_TX);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(answer(&lb, &f, "SA"), id);
    assert_eq!(lb.backend_stats(id).handshakes, 2);
    assert_eq!(lb.counter(counter::NAT_PORT_REUSED), 0);
    let g = Flow::tcp("192.0.2.1", 41001, "10.100.0.1", 80);
    let gid = answer(&lb, &g, "RA");
    let s = lb.backend_stats(gid);
    assert_eq!(s.refused, 1);
    assert_eq!(s.handshakes, if gid == id { 2 } else { 0 });
}

/// An ICMPv4 "fragmentation needed" (MTU 1400) from `src` to `dst`,
/// between `smac` and `dmac`, quoting `quoted` (an IP header and 8 bytes).
fn frag_needed(src: &str, dst: &str, smac: [u8; 6], dmac: [u8; 6], quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(ip4(src).octets(), ip4(dst).octets(), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut out, quoted)
        .unwrap();
    out
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn nat_translates_icmp_errors_both_ways() {
    if root_env("packet tests").is_none() {
        return;
    }
    let lb = nat_setup(20000, 20999);
    let f = Flow::tcp("192.0.2.1", 42000, "10.100.0.1", 80);
    let syn = f.packet("S", b"");
    let to_backend = lb.run(&syn).unwrap();
    assert_eq!(to_backend.action, XDP_TX);
    let be = addr_of(pick(&f, &[1, 2, 3])).to_string();
    // A router on the backend's side: the SYN it got is too big. The
    // client gets the error from the VIP, quoting its own SYN.
    let err = frag_needed(&be, SNAT4, GATEWAY_MAC, LB_MAC, &to_backend.data[14..42]);
    let out = lb.run(&err).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    let want = frag_needed("10.100.0.1", "192.0.2.1", LB_MAC, CLIENT_MAC, &syn[14..42]);
    assert_eq!(out.data, want, "to the client");
    // The client's side: a reply it got (from the VIP) is too big. The
    // backend gets the error from the source address, quoting its reply.
    let reply = backend_reply(&be, SNAT4, 8080, nat_port(&to_backend.data));
    let to_client = lb.run(&reply).unwrap();
    assert_eq!(to_client.action, XDP_TX);
    let err = frag_needed(
        "192.0.2.1",
        "10.100.0.1",
        CLIENT_MAC,
        LB_MAC,
        &to_client.data[14..42],
    );
    let out = lb.run(&err).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    let want = frag_needed(SNAT4, &be, LB_MAC, GATEWAY_MAC, &reply[14..42]);
    assert_eq!(out.data, want, "to the backend");
    assert_eq!(lb.counter(counter::NAT_ICMP), 2);
    // An error about no NAT flow: the host's.
    let stray = frag_needed(&be, SNAT4, GATEWAY_MAC, LB_MAC, &reply[14..42]);
    assert_eq!(lb.run(&stray).unwrap().action, XDP_PASS);
}

/// An ICMPv6 "packet too big" (MTU 1400) from `src` to `dst`, between
/// `smac` and `dmac`, quoting `quoted` (an IPv6 header and 8 bytes).
fn too_big6(src: &str, dst: &str, smac: [u8; 6], dmac: [u8; 6], quoted: &[u8]) -> Vec<u8> {
    let (s, d): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv6(s.octets(), d.octets(), 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1400 })
        .write(&mut out, quoted)
        .unwrap();
    out
}

#[test]
fn nat_translates_icmpv6_errors_both_ways() {
    if root_env("packet tests").is_none() {
        return;
    }
    let lb = nat_setup(20000, 20999);
    let f = Flow::tcp("2001:db8::7", 42001, "fd00:100::1", 80);
    let syn = f.packet("S", b"");
    let to_backend = lb.run(&syn).unwrap();
    assert_eq!(to_backend.action, XDP_TX, "{:?}", lb.counters());
    let be = addr_of(pick(&f, &[10, 11])).to_string();
    let err = too_big6(&be, SNAT6, GATEWAY_MAC, LB_MAC, &to_backend.data[14..62]);
    let out = lb.run(&err).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    let want = too_big6(
        "fd00:100::1",
        "2001:db8::7",
        LB_MAC,
        CLIENT_MAC,
        &syn[14..62],
    );
    assert_eq!(out.data, want, "to the client");
    let reply = backend_reply(&be, SNAT6, 80, nat_port(&to_backend.data));
    let to_client = lb.run(&reply).unwrap();
    let err = too_big6(
        "2001:db8::7",
        "fd00:100::1",
        CLIENT_MAC,
        LB_MAC,
        &to_client.data[14..62],
    );
    let out = lb.run(&err).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    let want = too_big6(SNAT6, &be, LB_MAC, GATEWAY_MAC, &reply[14..62]);
    assert_eq!(out.data, want, "to the backend");
    assert_eq!(lb.counter(counter::NAT_ICMP), 2);
}

#[test]
fn a_nat_reply_whose_port_shares_a_vips_filter_bit_is_still_translated() {
    if root_env("packet tests").is_none() {
        return;
    }
    // A source port whose (address, port, protocol) lands on the filter
    // bit of the VIP 10.100.0.1:80/tcp: the reply passes the VIP filter,
    // finds no VIP, and must still be taken for a reply.
    let (snat, _) = addr_words(ip(SNAT4));
    let vip_bit = vip_filter_bit(addr_words(ip("10.100.0.1")).0, 80u16.to_be(), PROTO_TCP, 2);
    let port = (1..=u16::MAX)
        .find(|p| vip_filter_bit(snat, p.to_be(), PROTO_TCP, 2) == vip_bit)
        .expect("a port on the VIP's bit");
    let lb = nat_setup(port, port);
    let f = Flow::tcp("192.0.2.1", 43000, "10.100.0.1", 80);
    let out = lb.run(&f.packet("S", b"")).unwrap();
    assert_eq!(nat_port(&out.data), port);
    let reply = Flow {
        src: addr_of(pick(&f, &[1, 2, 3])),
        dst: ip(SNAT4),
        sport: 8080,
        dport: port,
        proto: PROTO_TCP,
    }
    .packet("SA", b"");
    let out = lb.run(&reply).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    assert_eq!(lb.counter(counter::NAT_REPLY), 1);
}

/// A backend's SYN-ACK from `be`:`bport` to a NAT source address and port.
fn backend_reply(be: &str, snat: &str, bport: u16, port: u16) -> Vec<u8> {
    Flow {
        src: ip(be),
        dst: ip(snat),
        sport: bport,
        dport: port,
        proto: PROTO_TCP,
    }
    .packet("SA", b"")
}
