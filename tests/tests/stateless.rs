//! Stateless VIPs in packet tests (the real object, BPF_PROG_TEST_RUN): the
//! balancer's bytes (no flow entry; the slot's previous backend named while
//! recent) and the backend's three outcomes (deliver a SYN, deliver a
//! packet of a connection it has, pass a packet of one it lacks on to the
//! previous backend, once).
use lb_common::{
    chain_entry, chain_entry2, counter, decap_counter, flow_hash, Config, VipInfo, BACKEND_F_DOWN,
    BACKEND_F_GUE, CHAIN_F_PASSED, CHAIN_F_PASSED2, CONFIG_F_GATEWAY_MAC, CONFIG_F_SRC_V4,
    CONFIG_F_SRC_V6, CONFIG_F_STATELESS, PROTO_TCP, PROTO_UDP, VIP_F_STATELESS,
};
use lb_tests::packets::*;
use lb_tests::*;
use lb_userspace::dataplane::{DataPlane, DecapVip};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const KEY: [u64; 2] = [7, 11];
const SRC_V4: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 0);
const SRC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x255, 0, 0, 0, 0, 0, 0);
const WINDOW_S: u32 = 600;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Backend slots: (id, address, VIP id). VIP 0: 10.100.0.1:80/tcp and
/// VIP 1: 10.100.0.1:53/udp over IPv4 backends; VIP 2: [fd00:100::1]:80/tcp
/// over IPv6 backends; VIP 3: 10.100.0.1:443/tcp, a flow-table VIP (IPIP).
fn slots() -> Vec<(u32, IpAddr, u32)> {
    vec![
        (1, ip("10.0.1.1"), 0),
        (2, ip("10.0.1.2"), 0),
        (3, ip("10.0.1.3"), 0),
        (4, ip("10.0.1.1"), 1),
        (5, ip("10.0.1.2"), 1),
        (10, ip("fd00:1::1"), 2),
        (11, ip("fd00:1::2"), 2),
        (20, ip("10.0.1.1"), 3),
        (21, ip("10.0.1.2"), 3),
    ]
}

fn addr(id: u32) -> IpAddr {
    slots().into_iter().find(|s| s.0 == id).unwrap().1
}

/// The four VIPs: 0, 1 and 2 stateless (chain tables 0, 1 and 2), 3 not.
fn setup() -> Option<Balancer> {
    setup_sized(test_sizes().max_backends)
}

/// `setup` with room for `max_backends` backend slots.
fn setup_sized(max_backends: u32) -> Option<Balancer> {
    root_env("stateless packet tests")?;
    private_netns().unwrap();
    let sizes = Sizes {
        stateless_vips: 3,
        max_backends,
        ..test_sizes()
    };
    let mut lb = Balancer::load(sizes).unwrap();
    lb.set_config(Config {
        hash_key: KEY,
        ring_size: sizes.ring_size,
        flags: CONFIG_F_GATEWAY_MAC | CONFIG_F_SRC_V4 | CONFIG_F_SRC_V6 | CONFIG_F_STATELESS,
        src_v4: u32::from_ne_bytes(SRC_V4.octets()),
        src_v4_mask: host_mask(8),
        src_v6: lb_common::addr_words(IpAddr::V6(SRC_V6)).0,
        src_v6_mask: host_mask(16),
        mtu: 1500,
        gateway_mac: GATEWAY_MAC,
        gue_port: lb_common::DEFAULT_GUE_PORT.to_be(),
        chain_window_s: WINDOW_S,
        ..Config::default()
    })
    .unwrap();
    for (id, a, vip) in slots() {
        let flags = if vip == 3 { 0 } else { BACKEND_F_GUE };
        lb.set_backend(id, backend(a, flags, vip)).unwrap();
    }
    for (key, vip_id, flags, chain_idx, ids) in [
        (
            vip_key(ip("10.100.0.1"), 80, PROTO_TCP),
            0,
            VIP_F_STATELESS,
            0,
            vec![1, 2, 3],
        ),
        (
            vip_key(ip("10.100.0.1"), 53, PROTO_UDP),
            1,
            VIP_F_STATELESS,
            1,
            vec![4, 5],
        ),
        (
            vip_key(ip("fd00:100::1"), 80, PROTO_TCP),
            2,
            VIP_F_STATELESS,
            2,
            vec![10, 11],
        ),
        (
            vip_key(ip("10.100.0.1"), 443, PROTO_TCP),
            3,
            0,
            0,
            vec![20, 21],
        ),
    ] {
        let n = sizes.ring_size;
        let ring: Vec<u32> = (0..n).map(|i| ids[i as usize % ids.len()]).collect();
        lb.write_ring(vip_id, 0, &ring).unwrap();
        // Slots changed within the window: `CHAINS` is read (the
        // controller sets the end of the window of the latest change).
        let chain_until = if flags != 0 { u32::MAX } else { 0 };
        let info = VipInfo {
            vip_id,
            flags,
            chain_idx,
            chain_until,
            ..VipInfo::default()
        };
        lb.add_vip(key, info).unwrap();
    }
    Some(lb)
}

fn hash(f: &Flow) -> u32 {
    flow_hash(&f.key(), &KEY) as u32
}

fn slot(f: &Flow) -> u32 {
    hash(f) % test_sizes().ring_size
}

fn now_s() -> u32 {
    (lb_common::monotonic_coarse_ns() / 1_000_000_000) as u32
}

/// What the balancer sends for `frame` of flow `f` to backend `id`.
fn expected(frame: &[u8], f: &Flow, id: u32, prevs: &[IpAddr], age_s: u16) -> Vec<u8> {
    let h = hash(f);
    let dst = addr(id);
    let src = match dst {
        IpAddr::V4(_) => IpAddr::V4(outer_src_v4(SRC_V4, 8, h)),
        IpAddr::V6(_) => IpAddr::V6(outer_src_v6(SRC_V6, 16, h)),
    };
    let e = Encap {
        dmac: GATEWAY_MAC,
        smac: LB_MAC,
        src,
        dst,
        hash: h,
    };
    expected_stateless(frame, &e, lb_common::DEFAULT_GUE_PORT, prevs, age_s)
}

#[test]
fn a_stateless_vip_hashes_every_packet_to_its_slot_and_stores_no_flow() {
    let Some(lb) = setup() else { return };
    let mut syns = 0;
    for i in 0..40u16 {
        let f = Flow::tcp("192.0.2.1", 1000 + i, "10.100.0.1", 80);
        let want = [1, 2, 3][slot(&f) as usize % 3];
        for flags in ["S", "A", "PA", "FA"] {
            let frame = f.packet(flags, b"data");
            let out = lb.run(&frame).unwrap();
            assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
            assert_eq!(out.data, expected(&frame, &f, want, &[], 0), "{flags}");
        }
        syns += 1;
        let u = Flow::udp("192.0.2.1", 2000 + i, "10.100.0.1", 53);
        let frame = u.packet("", b"q");
        let want = [4, 5][slot(&u) as usize % 2];
        assert_eq!(
            lb.run(&frame).unwrap().data,
            expected(&frame, &u, want, &[], 0)
        );
    }
    assert_eq!(lb.flow_count(), 0, "no flow stored");
    assert_eq!(lb.counter(counter::STATELESS), 40 * 5);
    assert_eq!(lb.counter(counter::FLOW_MISS), 0);
    assert_eq!(lb.counter(counter::NEW_FLOW), syns);
    assert_eq!(lb.vip_stats(0).new_flows, syns);
    assert_eq!(lb.vip_stats(0).packets, 40 * 4);
}

#[test]
fn a_vip_with_a_table_of_its_own_size_hashes_to_its_slots_and_their_previous_backends() {
    let Some(mut lb) = setup() else { return };
    // VIP 2 (chain table 2) gets a table of 257 slots; each buffer has
    // room for 1009, and so has each chain table.
    const SMALL: u32 = 257;
    let key = vip_key(ip("fd00:100::1"), 80, PROTO_TCP);
    let ids = [10, 11];
    let table: Vec<u32> = (0..SMALL).map(|i| ids[(i as usize * 7 / 3) % 2]).collect();
    lb.write_ring(2, 1, &table).unwrap();
    let info = VipInfo {
        vip_id: 2,
        flags: VIP_F_STATELESS,
        chain_idx: 2,
        chain_until: u32::MAX,
        active_ring: 1,
        ring_size: SMALL,
        ..VipInfo::default()
    };
    lb.add_vip(key, info).unwrap();
    assert_eq!(lb.vip_info(&key).unwrap().ring_size, SMALL);
    // Each flow to the backend at its hash modulo the VIP's size; slots
    // past it are never read (the room's size would pick other slots).
    let mut beyond = 0;
    for i in 0..40u16 {
        let f = Flow::tcp("2001:db8::7", 5000 + i, "fd00:100::1", 80);
        let s = hash(&f) % SMALL;
        beyond += usize::from(hash(&f) % test_sizes().ring_size >= SMALL);
        let frame = f.packet("A", b"x");
        let out = lb.run(&frame).unwrap();
        assert_eq!(out.data, expected(&frame, &f, table[s as usize], &[], 0));
        // The slot's previous backend, from its entry of chain table 2.
        let cur = table[s as usize];
        let prev = 21 - cur;
        lb.dp()
            .write_chains(2, &[(s, chain_entry(prev, now_s()))])
            .unwrap();
        let out = lb.run(&frame).unwrap();
        let age = u16::from_be_bytes([out.data[14 + 40 + 8 + 6], out.data[14 + 40 + 8 + 7]]);
        assert!(age <= 1, "age {age}");
        assert_eq!(out.data, expected(&frame, &f, cur, &[addr(prev)], age));
        lb.dp().write_chains(2, &[(s, 0)]).unwrap();
    }
    assert!(
        beyond > 0,
        "every flow's slot is below the small size either way"
    );
    assert_eq!(lb.flow_count(), 0);
}

#[test]
fn a_previous_backend_past_16_bits_is_named() {
    let Some(mut lb) = setup_sized(70_010) else {
        return;
    };
    let gone = ip("10.0.1.79");
    lb.set_backend(70_009, backend(gone, BACKEND_F_GUE, 0))
        .unwrap();
    let f = Flow::tcp("192.0.2.1", 3001, "10.100.0.1", 80);
    let s = slot(&f);
    let cur = [1, 2, 3][s as usize % 3];
    let frame = f.packet("A", b"x");
    lb.dp()
        .write_chains(0, &[(s, chain_entry2(70_009, 2, now_s() - 5))])
        .unwrap();
    let out = lb.run(&frame).unwrap();
    let age = u16::from_be_bytes([out.data[14 + 20 + 8 + 6], out.data[14 + 20 + 8 + 7]]);
    assert!((5..=6).contains(&age), "age {age}");
    let named = if cur == 2 {
        vec![gone]
    } else {
        vec![gone, addr(2)]
    };
    assert_eq!(out.data, expected(&frame, &f, cur, &named, age));
}

#[test]
fn a_changed_slot_names_its_previous_backend_while_recent() {
    let Some(mut lb) = setup() else { return };
    let f = Flow::tcp("192.0.2.1", 3000, "10.100.0.1", 80);
    let s = slot(&f);
    let cur = [1, 2, 3][s as usize % 3];
    let prev = if cur == 1 { 2 } else { 1 };
    let frame = f.packet("A", b"x");
    // Changed 5 s ago: named, with its age.
    lb.dp()
        .write_chains(0, &[(s, chain_entry(prev, now_s() - 5))])
        .unwrap();
    let out = lb.run(&frame).unwrap();
    let age = u16::from_be_bytes([out.data[14 + 20 + 8 + 6], out.data[14 + 20 + 8 + 7]]);
    assert!((5..=6).contains(&age), "age {age}");
    assert_eq!(out.data, expected(&frame, &f, cur, &[addr(prev)], age));
    assert_eq!(lb.counter(counter::STATELESS_PREV), 1);
    // The VIP's window over (no change of any slot since): `CHAINS` is not
    // read, the slot's entry notwithstanding.
    let key = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    let info = |chain_until| VipInfo {
        vip_id: 0,
        flags: VIP_F_STATELESS,
        chain_until,
        ..VipInfo::default()
    };
    let now_unit = (lb_common::monotonic_coarse_ns() >> lb_common::CHAIN_UNTIL_SHIFT) as u32;
    lb.add_vip(key, info(now_unit)).unwrap();
    assert_eq!(
        lb.run(&frame).unwrap().data,
        expected(&frame, &f, cur, &[], 0)
    );
    lb.add_vip(key, info(now_unit + 2)).unwrap();
    let out = lb.run(&frame).unwrap();
    let age = u16::from_be_bytes([out.data[14 + 20 + 8 + 6], out.data[14 + 20 + 8 + 7]]);
    assert_eq!(out.data, expected(&frame, &f, cur, &[addr(prev)], age));
    assert_eq!(lb.counter(counter::STATELESS_PREV), 2);
    lb.add_vip(key, info(u32::MAX)).unwrap();
    // Past the window, the slot's own backend, a backend that is down or
    // of another VIP: not named.
    for (entry, down) in [
        (chain_entry(prev, now_s() - WINDOW_S - 1), false),
        (chain_entry(cur, now_s()), false),
        (chain_entry(prev, now_s()), true),
        (chain_entry(4, now_s()), false),
    ] {
        lb.dp().write_chains(0, &[(s, entry)]).unwrap();
        let flags = if down { BACKEND_F_DOWN } else { 0 };
        lb.set_backend(prev, backend(addr(prev), BACKEND_F_GUE | flags, 0))
            .unwrap();
        let out = lb.run(&frame).unwrap();
        assert_eq!(out.data, expected(&frame, &f, cur, &[], 0));
    }
    assert_eq!(lb.counter(counter::STATELESS_PREV), 2);
    // Two previous backends: both named; the first down, the second alone.
    let third = 6 - cur - prev;
    lb.set_backend(prev, backend(addr(prev), BACKEND_F_GUE, 0))
        .unwrap();
    lb.dp()
        .write_chains(0, &[(s, chain_entry2(prev, third, now_s()))])
        .unwrap();
    let out = lb.run(&frame).unwrap();
    let both = [addr(prev), addr(third)];
    assert_eq!(out.data, expected(&frame, &f, cur, &both, 0));
    lb.set_backend(prev, backend(addr(prev), BACKEND_F_GUE | BACKEND_F_DOWN, 0))
        .unwrap();
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.data, expected(&frame, &f, cur, &[addr(third)], 0));
    // The GUE header a reference parser sees: UDP to the GUE port.
    lb.set_backend(prev, backend(addr(prev), BACKEND_F_GUE, 0))
        .unwrap();
    lb.dp()
        .write_chains(0, &[(s, chain_entry(prev, now_s()))])
        .unwrap();
    let out = lb.run(&frame).unwrap();
    let p = etherparse::SlicedPacket::from_ethernet(&out.data).unwrap();
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("no UDP");
    };
    assert_eq!(u.destination_port(), lb_common::DEFAULT_GUE_PORT);
    assert_eq!(u.length() as usize, 8 + 16 + ip_part(&frame).len());
}

/// A backend's decapsulator taking the VIPs above, with a route and a
/// neighbour for the previous backend 10.0.1.2 / fd00:1::2 on a veth (the
/// balancer, in the same namespace, still finds no route to the others).
fn backend_side() -> Balancer {
    let sh = |c: &str| {
        let st = std::process::Command::new("sh")
            .args(["-c", c])
            .status()
            .unwrap();
        assert!(st.success(), "{c}");
    };
    // Forwarding on: only then does the FIB answer XDP (or the kernel forward).
    sh(
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
        && ip link set lo up && ip link add sl0 address 02:00:00:00:aa:01 type veth peer name sl1 \
        && ip link set sl0 up && ip link set sl1 up \
        && ip route add 10.0.1.2/32 dev sl0 && ip route add fd00:1::2/128 dev sl0 \
        && ip neigh replace 10.0.1.2 lladdr 02:00:00:00:bb:02 dev sl0 nud permanent \
        && ip neigh replace fd00:1::2 lladdr 02:00:00:00:bb:02 dev sl0 nud permanent \
        && ip addr add 10.100.0.1/32 dev lo",
    );
    let mut d = Balancer::load_decap().unwrap();
    let vips = [
        DecapVip {
            addr: ip("10.100.0.1"),
            port: 80,
            proto: PROTO_TCP,
        },
        DecapVip {
            addr: ip("fd00:100::1"),
            port: 80,
            proto: PROTO_TCP,
        },
    ];
    d.set_decap(&vips, &[]).unwrap();
    d
}

#[test]
fn the_backend_delivers_a_syn_and_its_connections_and_passes_the_rest_on_once() {
    let Some(mut lb) = setup() else { return };
    let d = backend_side();
    // A listener on the VIP and one connection to it, from 10.100.0.9.
    let listener = std::net::TcpListener::bind("10.100.0.1:80").unwrap();
    let client = std::net::TcpStream::connect("10.100.0.1:80").unwrap();
    let (_server, _) = listener.accept().unwrap();
    let local = client.local_addr().unwrap();
    assert_eq!(
        local.ip(),
        ip("10.100.0.1"),
        "the kernel's choice of source"
    );
    // Every slot is backend 1's now, and names backend 2 as the one before.
    let n = test_sizes().ring_size;
    lb.write_ring(0, 0, &vec![1; n as usize]).unwrap();
    let all: Vec<(u32, u64)> = (0..n).map(|s| (s, chain_entry(2, now_s()))).collect();
    lb.dp().write_chains(0, &all).unwrap();
    let connected = Flow::tcp("10.100.0.1", local.port(), "10.100.0.1", 80);
    let other = Flow::tcp("10.100.0.1", local.port() ^ 0x4000, "10.100.0.1", 80);
    let run = |f: &Flow, flags: &str| {
        let frame = f.packet(flags, b"x");
        let out = lb.run(&frame).unwrap();
        assert_eq!(out.action, XDP_TX);
        assert_eq!(out.data, expected(&frame, f, 1, &[addr(2)], 0));
        (frame, out.data)
    };
    let deliver = |frame: &[u8], tunnel: &[u8]| {
        let back = d.run(tunnel).unwrap();
        assert_eq!(back.action, XDP_PASS, "{:?}", d.decap_counters());
        assert_eq!(ip_part(&back.data), ip_part(frame));
    };
    // The connection this host has: delivered.
    let (frame, tunnel) = run(&connected, "A");
    deliver(&frame, &tunnel);
    assert_eq!(d.decap_counter(decap_counter::CHAIN_LOCAL), 1);
    // A SYN of another flow: delivered, whatever the previous backend.
    let (frame, tunnel) = run(&other, "S");
    deliver(&frame, &tunnel);
    // Its ACK, with no connection here (only the listener): passed on to
    // 10.0.1.2, the outer destination rewritten, the header marked.
    let (frame, tunnel) = run(&other, "A");
    let out = d.run(&tunnel).unwrap();
    assert_eq!(out.action, XDP_REDIRECT, "{:?}", d.decap_counters());
    let mut want = tunnel.clone();
    want[0..6].copy_from_slice(&[2, 0, 0, 0, 0xbb, 2]);
    want[6..12].copy_from_slice(&[2, 0, 0, 0, 0xaa, 1]);
    want[14 + 16..14 + 20].copy_from_slice(&[10, 0, 1, 2]);
    want[14 + 20 + 8 + 5] |= CHAIN_F_PASSED;
    let mut h = etherparse::Ipv4Header::from_slice(&want[14..34]).unwrap().0;
    h.header_checksum = h.calc_header_checksum();
    want[14..34].copy_from_slice(&h.to_bytes());
    assert_eq!(out.data, want, "outer destination and checksum, flag, MACs");
    assert_eq!(d.decap_counter(decap_counter::CHAIN_PASSED), 1);
    // At the previous backend (marked passed): delivered, whatever it has.
    deliver(&frame, &out.data);
    assert_eq!(d.decap_counter(decap_counter::CHAIN_PASSED), 1);
    // Two previous backends, 10.0.1.3 (no neighbour known here) then
    // 10.0.1.2: to the kernel to forward, rewritten to the first; at the
    // first (no connection either), on to the second; there, delivered.
    lb.dp()
        .write_chains(0, &[(slot(&other), chain_entry2(3, 2, now_s()))])
        .unwrap();
    let frame = other.packet("A", b"x");
    let tunnel = lb.run(&frame).unwrap().data;
    assert_eq!(tunnel, expected(&frame, &other, 1, &[addr(3), addr(2)], 0));
    let out = d.run(&tunnel).unwrap();
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(&out.data[14 + 16..14 + 20], &[10, 0, 1, 3]);
    assert_eq!(d.decap_counter(decap_counter::CHAIN_TO_KERNEL), 1);
    let out = d.run(&out.data).unwrap();
    assert_eq!(out.action, XDP_REDIRECT, "{:?}", d.decap_counters());
    assert_eq!(&out.data[14 + 16..14 + 20], &[10, 0, 1, 2]);
    let flags = out.data[14 + 20 + 8 + 5];
    assert_eq!(
        flags & (CHAIN_F_PASSED | CHAIN_F_PASSED2),
        CHAIN_F_PASSED | CHAIN_F_PASSED2
    );
    assert_eq!(d.decap_counter(decap_counter::CHAIN_PASSED), 2);
    deliver(&frame, &out.data);
    assert_eq!(d.decap_counter(decap_counter::CHAIN_PASSED), 2);
}

#[test]
fn an_ipv6_stateless_vip_sends_its_previous_backend_in_a_v6_header() {
    let Some(mut lb) = setup() else { return };
    let d = backend_side();
    let f = Flow::tcp("2001:db8::7", 4000, "fd00:100::1", 80);
    let s = slot(&f);
    let cur = [10, 11][s as usize % 2];
    let frame = f.packet("A", b"v6");
    let out = lb.run(&frame).unwrap();
    assert_eq!(out.action, XDP_TX, "{:?}", lb.counters());
    assert_eq!(out.data, expected(&frame, &f, cur, &[], 0));
    // Every slot backend 10's now, naming 11, changed 7 s ago.
    let n = test_sizes().ring_size;
    lb.write_ring(2, 0, &vec![10; n as usize]).unwrap();
    lb.dp()
        .write_chains(2, &[(s, chain_entry(11, now_s() - 7))])
        .unwrap();
    let out = lb.run(&frame).unwrap();
    let at = 14 + 40 + 8 + 6;
    let age = u16::from_be_bytes([out.data[at], out.data[at + 1]]);
    assert!((7..=8).contains(&age), "age {age}");
    assert_eq!(out.data, expected(&frame, &f, 10, &[addr(11)], age));
    assert_eq!(lb.counter(counter::STATELESS_PREV), 1);
    // At backend 10, with no such connection: on to fd00:1::2, marked.
    let back = d.run(&out.data).unwrap();
    assert_eq!(back.action, XDP_REDIRECT, "{:?}", d.decap_counters());
    let mut want = out.data.clone();
    want[0..6].copy_from_slice(&[2, 0, 0, 0, 0xbb, 2]);
    want[6..12].copy_from_slice(&[2, 0, 0, 0, 0xaa, 1]);
    want[14 + 24..14 + 40].copy_from_slice(&"fd00:1::2".parse::<Ipv6Addr>().unwrap().octets());
    want[14 + 40 + 8 + 5] |= CHAIN_F_PASSED;
    assert_eq!(back.data, want, "outer destination, flag, MACs");
    assert_eq!(d.decap_counter(decap_counter::CHAIN_PASSED), 1);
    // There: delivered, the inner packet as the client sent it.
    let there = d.run(&back.data).unwrap();
    assert_eq!(there.action, XDP_PASS);
    assert_eq!(ip_part(&there.data), ip_part(&frame));
    // A SYN is delivered at backend 10 whatever the slot names.
    let syn = f.packet("S", b"");
    let out = lb.run(&syn).unwrap();
    let back = d.run(&out.data).unwrap();
    assert_eq!(back.action, XDP_PASS);
    assert_eq!(ip_part(&back.data), ip_part(&syn));
    assert_eq!(d.decap_counter(decap_counter::CHAIN_PASSED), 1);
}

#[test]
fn a_syn_flood_through_a_stateless_vip_stores_nothing_and_moves_no_held_flow() {
    let Some(mut lb) = setup() else { return };
    // A connection of the flow-table VIP, held in the table.
    let held = Flow::tcp("192.0.2.200", 5555, "10.100.0.1", 443);
    let outer_dst = |out: &Outcome| out.data[14 + 16..14 + 20].to_vec();
    let first = lb.run(&held.packet("S", b"")).unwrap();
    assert_eq!(first.action, XDP_TX);
    assert_eq!(lb.flow_count(), 1);
    // Its VIP's table now all the other backend: a fresh pick would move it.
    let n = test_sizes().ring_size as usize;
    let other = if outer_dst(&first) == [10, 0, 1, 1] {
        21
    } else {
        20
    };
    lb.write_ring(3, 0, &vec![other; n]).unwrap();
    // Three times as many distinct SYNs as the flow table has entries.
    let flood = 3 * test_sizes().flows as usize;
    let mut spread = [0usize; 4];
    for i in 0..flood {
        let src = format!("198.{}.{}.{}", 18 + i / 65536, (i / 256) % 256, i % 256);
        let f = Flow::tcp(&src, 1024 + (i % 60000) as u16, "10.100.0.1", 80);
        let frame = f.packet("S", b"");
        let out = lb.run(&frame).unwrap();
        let want = [1, 2, 3][slot(&f) as usize % 3];
        assert_eq!(out.action, XDP_TX);
        if i % 97 == 0 {
            assert_eq!(out.data, expected(&frame, &f, want, &[], 0));
        }
        spread[want as usize] += 1;
    }
    assert!(spread[1..].iter().all(|&k| k > flood / 4), "{spread:?}");
    assert_eq!(lb.flow_count(), 1, "the flood stored nothing");
    assert_eq!(lb.counter(counter::STATELESS), flood as u64);
    assert_eq!(lb.counter(counter::NEW_FLOW), flood as u64 + 1);
    // The held connection keeps its backend.
    let ack = lb.run(&held.packet("A", b"x")).unwrap();
    assert_eq!(outer_dst(&ack), outer_dst(&first), "{:?}", lb.counters());
    assert_eq!(lb.counter(counter::FLOW_HIT), 1);
}

#[test]
fn a_failed_hand_back_leaves_the_next_stateless_packet_stateless() {
    // A packet whose filter bit a stateless VIP shares, for no VIP, goes to
    // `lb_stateless` and back to `lb_xdp`. With `lb_xdp` missing from the
    // program table, the way back fails: the packet is passed, and the
    // mark that makes `lb_xdp` keep a handed-back packet must not stay set
    // for the next one.
    let Some(mut lb) = setup() else { return };
    let vip = vip_key(ip("10.100.0.1"), 80, PROTO_TCP);
    let want_bit = lb_common::vip_filter_bit(vip.addr, vip.port, vip.proto, vip.family);
    let twin = (0..=u16::MAX)
        .map(|i| IpAddr::from([10, 200, (i >> 8) as u8, i as u8]))
        .find(|a| {
            let k = vip_key(*a, 80, PROTO_TCP);
            lb_common::vip_filter_bit(k.addr, k.port, k.proto, k.family) == want_bit
        })
        .expect("an address in 10.200/16 that shares the bit");
    let mut progs: aya::maps::ProgramArray<&mut aya::maps::MapData> =
        aya::maps::ProgramArray::try_from(lb.dp().ebpf_mut().map_mut("PROGS").unwrap()).unwrap();
    progs.clear_index(&lb_common::PROG_BALANCER).unwrap();
    let other = Flow::tcp("192.0.2.1", 999, &twin.to_string(), 80);
    let out = lb.run(&other.packet("S", b"")).unwrap();
    assert_eq!(out.action, XDP_PASS, "{:?}", lb.counters());
    let f = Flow::tcp("192.0.2.1", 1000, "10.100.0.1", 80);
    let frame = f.packet("S", b"");
    let out = lb.run(&frame).unwrap();
    let want = [1, 2, 3][slot(&f) as usize % 3];
    assert_eq!(
        out.data,
        expected(&frame, &f, want, &[], 0),
        "{:?}",
        lb.counters()
    );
    assert_eq!(lb.flow_count(), 0, "no flow stored");
}
