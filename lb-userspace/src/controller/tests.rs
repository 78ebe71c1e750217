//! The control loop against an in-memory data plane: what a pool change,
//! a health verdict or a restart leaves in the maps, and what it writes.
use super::*;

/// A probe result, written as the daemon writes it: recorded, then
/// flushed (waiting out the flip grace as the daemon's timer does).
fn verdict<D: DataPlane>(
    c: &mut Controller<D>,
    b: &BackendRef,
    outcome: &ProbeOutcome,
    health: Health,
) -> bool {
    let changed = c.probe_result(b, outcome, health).unwrap();
    while let Some(wait) = c.flush().unwrap() {
        std::thread::sleep(wait);
    }
    changed
}
use crate::config;
use crate::dataplane::Result as DpResult;
use lb_common::{BackendStats, VipStats, NO_BACKEND};

/// Maglev size of the test pools (the smallest the pool file accepts).
const RING: u32 = 1009;

/// Slots in use (released ones are listed too, for their generation).
fn used_slots(dp: &impl DataPlane) -> usize {
    dp.backends()
        .unwrap()
        .iter()
        .filter(|(_, b)| b.flags & BACKEND_F_USED != 0)
        .count()
}

/// One write to the data plane, in the order the controller made it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    SetConfig,
    SetBackend(u32, Backend),
    WriteRing(u32, u8),
    SetVip(VipKey, VipInfo),
    RemoveVip(VipKey),
    SetVipAddr(AddrKey, u32),
    RemoveVipAddr(AddrKey),
}

/// The maps as plain collections. Like the kernel's, BACKENDS is an
/// array (a missing id reads as zeroes) and the hash maps refuse to
/// remove a key they do not hold. It panics on the writes that would
/// hurt packets in flight: rewriting the buffer a VIP's packets read,
/// or flipping to a buffer that was never written.
#[derive(Clone, Debug)]
struct FakeDataPlane {
    max_vips: u32,
    max_backends: u32,
    config: Option<Config>,
    vips: BTreeMap<VipKey, VipInfo>,
    vip_addrs: BTreeMap<AddrKey, u32>,
    backends: BTreeMap<u32, Backend>,
    rings: BTreeMap<(u32, u8), Vec<u32>>,
    log: Vec<Op>,
    /// `clear_stats` calls: (VIP id, backend id).
    cleared: Vec<(Option<u32>, Option<u32>)>,
}

impl FakeDataPlane {
    fn new(max_vips: u32, max_backends: u32) -> Self {
        FakeDataPlane {
            max_vips,
            max_backends,
            config: None,
            vips: BTreeMap::new(),
            vip_addrs: BTreeMap::new(),
            backends: BTreeMap::new(),
            rings: BTreeMap::new(),
            log: Vec::new(),
            cleared: Vec::new(),
        }
    }

    /// The same maps, as a restarted daemon finds them pinned.
    fn restarted(&self) -> Self {
        FakeDataPlane {
            log: Vec::new(),
            ..self.clone()
        }
    }

    fn backend(&self, id: u32) -> Backend {
        self.backends.get(&id).copied().unwrap_or_default()
    }

    /// The table packets of `key` read now.
    fn active_table(&self, key: &VipKey) -> &[u32] {
        let info = self.vips.get(key).expect("VIP in VIPS");
        &self.rings[&(info.vip_id, info.active_ring)]
    }

    /// The slot of `addr` behind `key`, found the way the daemon finds
    /// it after a restart: by VIP id and address in BACKENDS.
    fn slot_of(&self, key: &VipKey, addr: &str) -> u32 {
        let vip_id = self.vips[key].vip_id as u16;
        let ip: IpAddr = addr.parse().unwrap();
        let found: Vec<u32> = self
            .backends
            .iter()
            .filter(|(_, b)| {
                b.flags & BACKEND_F_USED != 0
                    && b.vip_id == vip_id
                    && words_addr(b.addr, b.family) == ip
            })
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one used slot for {addr} of VIP id {vip_id}"
        );
        found[0]
    }

    fn take_log(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.log)
    }
}

/// What aya returns for a delete of a missing key.
fn not_found(map: &'static str) -> DataPlaneError {
    DataPlaneError::Map {
        map,
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: std::io::Error::from_raw_os_error(libc::ENOENT),
        }),
    }
}

impl DataPlane for FakeDataPlane {
    fn set_config(&mut self, cfg: &Config) -> DpResult<()> {
        self.log.push(Op::SetConfig);
        self.config = Some(*cfg);
        Ok(())
    }

    fn set_backend(&mut self, id: u32, b: &Backend) -> DpResult<()> {
        assert!(id < self.max_backends, "backend id {id} past BACKENDS");
        self.log.push(Op::SetBackend(id, *b));
        self.backends.insert(id, *b);
        Ok(())
    }

    fn write_ring(&mut self, vip_id: u32, ring: u8, slots: &[u32]) -> DpResult<()> {
        assert!(vip_id < self.max_vips, "VIP id {vip_id} past RINGS");
        assert!(ring < 2, "buffer {ring} of VIP id {vip_id}");
        assert_eq!(slots.len(), RING as usize, "a whole table");
        let live = self
            .vips
            .values()
            .any(|i| i.vip_id == vip_id && i.active_ring == ring);
        assert!(
            !live,
            "rewrote buffer {ring} of VIP id {vip_id} while packets read it"
        );
        self.log.push(Op::WriteRing(vip_id, ring));
        self.rings.insert((vip_id, ring), slots.to_vec());
        Ok(())
    }

    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> DpResult<()> {
        assert!(
            self.rings.contains_key(&(info.vip_id, info.active_ring)),
            "flipped VIP id {} to buffer {} that was never written",
            info.vip_id,
            info.active_ring
        );
        self.log.push(Op::SetVip(*key, *info));
        self.vips.insert(*key, *info);
        Ok(())
    }

    fn remove_vip(&mut self, key: &VipKey) -> DpResult<()> {
        self.log.push(Op::RemoveVip(*key));
        self.vips.remove(key).map(drop).ok_or(not_found("VIPS"))
    }

    fn set_vip_addr(&mut self, key: &AddrKey, flags: u32) -> DpResult<()> {
        self.log.push(Op::SetVipAddr(*key, flags));
        self.vip_addrs.insert(*key, flags);
        Ok(())
    }

    fn remove_vip_addr(&mut self, key: &AddrKey) -> DpResult<()> {
        self.log.push(Op::RemoveVipAddr(*key));
        self.vip_addrs
            .remove(key)
            .map(drop)
            .ok_or(not_found("VIP_ADDRS"))
    }

    fn vips(&self) -> DpResult<Vec<(VipKey, VipInfo)>> {
        Ok(self.vips.iter().map(|(k, i)| (*k, *i)).collect())
    }

    fn backends(&self) -> DpResult<Vec<(u32, Backend)>> {
        Ok(self
            .backends
            .iter()
            .filter(|(_, b)| b.flags & BACKEND_F_USED != 0 || b.gen != 0)
            .map(|(id, b)| (*id, *b))
            .collect())
    }

    fn vip_stats(&self, _vip_id: u32) -> DpResult<VipStats> {
        Ok(VipStats::default())
    }

    fn backend_stats(&self, _id: u32) -> DpResult<BackendStats> {
        Ok(BackendStats::default())
    }

    fn clear_stats(&mut self, vip_id: Option<u32>, backend_id: Option<u32>) -> DpResult<()> {
        self.cleared.push((vip_id, backend_id));
        Ok(())
    }

    fn counters(&self) -> DpResult<Vec<u64>> {
        Ok(vec![0; lb_common::counter::COUNT as usize])
    }
}

/// One VIP of a pool file; each backend is the inside of a YAML flow mapping.
fn vip(name: &str, address: &str, port: u16, protocol: &str, backends: &[&str]) -> String {
    let mut s = format!(
        "  - name: {name}\n    address: \"{address}\"\n    port: {port}\n    protocol: {protocol}\n    backends:\n"
    );
    for b in backends {
        s += &format!("      - {{{b}}}\n");
    }
    s
}

fn pool(vips: &[String]) -> Pool {
    let text = format!(
        "instance: lbtest\ninterfaces: [eth0]\nencapsulation:\n  source_v4: 10.255.0.0/24\n  \
         source_v6: \"fd00:255::/112\"\ntables:\n  maglev_size: {RING}\nhealth_defaults:\n  \
         kind: none\nvips:\n{}",
        vips.concat()
    );
    config::parse(&text, "test.yaml").unwrap_or_else(|e| panic!("test pool:\n{e}\n{text}"))
}

fn web(backends: &[&str]) -> String {
    vip("web", "10.100.0.1", 80, "tcp", backends)
}

const WEB: [&str; 3] = [
    "address: 10.0.1.1",
    "address: 10.0.1.2, weight: 200",
    "address: 10.0.1.3",
];

/// web (10.100.0.1:80/tcp) and dns (10.100.0.1:53/udp) share an address;
/// any (10.100.0.2, every port) has one of its own; v6 is IPv6.
fn four_vips() -> Vec<String> {
    vec![
        web(&WEB),
        vip(
            "dns",
            "10.100.0.1",
            53,
            "udp",
            &["address: 10.0.2.1", "address: 10.0.2.2"],
        ),
        vip("any", "10.100.0.2", 0, "tcp", &["address: 10.0.3.1"]),
        vip(
            "v6",
            "2001:db8::10",
            443,
            "tcp",
            &["address: \"2001:db8:1::1\""],
        ),
    ]
}

fn key(pool: &Pool, name: &str) -> VipKey {
    vip_key(
        pool.vips
            .iter()
            .find(|v| v.name == name)
            .expect("VIP in pool"),
    )
}

fn akey(addr: &str) -> AddrKey {
    let (addr, family) = addr_words(addr.parse().unwrap());
    AddrKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// In `log`, the VIP flips to its new table before slot `id` is written.
fn assert_flip_before_flag(log: &[Op], id: u32) {
    let flip = log.iter().position(|o| matches!(o, Op::SetVip(..)));
    let flag = log
        .iter()
        .position(|o| matches!(o, Op::SetBackend(i, _) if *i == id));
    assert!(
        matches!((flip, flag), (Some(a), Some(b)) if a < b),
        "{log:?}"
    );
}

fn controller(dp: FakeDataPlane) -> Controller<FakeDataPlane> {
    let (v, b) = (dp.max_vips, dp.max_backends);
    Controller::adopt(dp, RING, v, b).expect("adopt")
}

/// A controller that has applied `p` to empty maps, with the log cleared.
fn applied(p: &Pool) -> Controller<FakeDataPlane> {
    let mut c = controller(FakeDataPlane::new(8, 64));
    c.apply(p).expect("apply");
    c.dp.take_log();
    c
}

/// The table `maglev::build` makes of `serving` (addresses of VIP
/// `name`, weights from the pool), with slot ids as BACKENDS holds them.
fn expected_table(dp: &FakeDataPlane, p: &Pool, name: &str, serving: &[&str]) -> Vec<u32> {
    let k = key(p, name);
    let conf = p.vips.iter().find(|v| v.name == name).unwrap();
    let input: Vec<MaglevBackend> = serving
        .iter()
        .map(|a| MaglevBackend {
            key: maglev_key(ip(a)),
            slot: dp.slot_of(&k, a),
            weight: conf
                .backends
                .iter()
                .find(|b| b.address == ip(a))
                .unwrap()
                .weight,
        })
        .collect();
    maglev::build(&input, RING)
}

fn outcome(ok: bool) -> ProbeOutcome {
    ProbeOutcome {
        ok,
        detail: if ok {
            "connected"
        } else {
            "connection refused"
        }
        .into(),
        latency: Duration::from_micros(1500),
    }
}

fn count(table: &[u32], id: u32) -> usize {
    table.iter().filter(|s| **s == id).count()
}

#[test]
fn apply_writes_vips_addresses_slots_and_a_table_in_the_idle_buffer_then_flips() {
    let p = pool(&four_vips());
    let mut c = controller(FakeDataPlane::new(8, 64));
    let report = c.apply(&p).unwrap();

    let mut added = report.vips_added.clone();
    added.sort();
    assert_eq!(added, ["any", "dns", "v6", "web"]);
    let mut written = report.tables_written.clone();
    written.sort();
    assert_eq!(written, ["any", "dns", "v6", "web"]);
    assert!(report.vips_removed.is_empty());

    let ids: BTreeSet<u32> = c.dp.vips.values().map(|i| i.vip_id).collect();
    assert_eq!(ids.len(), 4, "distinct VIP ids: {:?}", c.dp.vips);
    assert!(ids.iter().all(|id| *id < 8));

    let mut slots = BTreeSet::new();
    for v in &p.vips {
        let k = vip_key(v);
        let info = c.dp.vips[&k];
        assert_eq!(
            info.active_ring, 1,
            "{}: table written to buffer 1, then flipped",
            v.name
        );
        assert_eq!(info.mode, v.forwarding.number());
        assert_eq!(info.scheduler, v.scheduler.number());
        assert!(
            !c.dp.rings.contains_key(&(info.vip_id, 0)),
            "{}: one buffer written",
            v.name
        );
        // The table is in place before packets are sent to it.
        let write =
            c.dp.log
                .iter()
                .position(|o| *o == Op::WriteRing(info.vip_id, 1));
        let flip = c.dp.log.iter().position(|o| *o == Op::SetVip(k, info));
        assert!(write.unwrap() < flip.unwrap(), "{}: {:?}", v.name, c.dp.log);

        for b in &v.backends {
            let id = c.vips[&k].backends[&b.address].id;
            assert!(slots.insert(id), "slot {id} handed out twice");
            let (addr, family) = addr_words(b.address);
            assert_eq!(
                c.dp.backend(id),
                Backend {
                    addr,
                    family,
                    flags: BACKEND_F_USED,
                    vip_id: info.vip_id as u16,
                    gen: 1,
                },
                "{} of {}",
                b.address,
                v.name
            );
        }
        let all: Vec<String> = v.backends.iter().map(|b| b.address.to_string()).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(
            c.dp.active_table(&k),
            expected_table(&c.dp, &p, &v.name, &all)
        );
        assert_eq!(c.vips[&k].serving(), v.backends.len());
    }
    assert_eq!(c.dp.backends.len(), 7);

    // Weights are honoured: 10.0.1.2 (200) holds twice the share of 10.0.1.1 (100).
    let k = key(&p, "web");
    let t = c.dp.active_table(&k);
    let (a, b) = (c.dp.slot_of(&k, "10.0.1.1"), c.dp.slot_of(&k, "10.0.1.2"));
    assert!(!t.contains(&NO_BACKEND));
    assert!(
        (count(t, b) as i64 - 2 * count(t, a) as i64).abs() <= 2,
        "{} vs {}",
        count(t, b),
        count(t, a)
    );

    assert_eq!(
        c.dp.vip_addrs,
        BTreeMap::from([
            (akey("10.100.0.1"), ADDR_F_VIP),
            (akey("10.100.0.2"), ADDR_F_VIP | ADDR_F_ANY_PORT),
            (akey("2001:db8::10"), ADDR_F_VIP),
        ])
    );
    assert_eq!(
        c.dp.backend(c.dp.slot_of(&key(&p, "v6"), "2001:db8:1::1"))
            .family,
        lb_common::AF_INET6
    );
}

#[test]
fn applying_the_same_pool_again_writes_nothing() {
    let p = pool(&four_vips());
    let mut c = applied(&p);
    let before = c.dp.clone();
    let report = c.apply(&p).unwrap();
    assert_eq!(report, ApplyReport::default());
    assert_eq!(c.dp.log, []);
    assert_eq!(c.dp.vips, before.vips);
    assert_eq!(c.dp.rings, before.rings);
}

#[test]
fn a_weight_change_rewrites_only_that_vips_table() {
    let p = pool(&four_vips());
    let mut c = applied(&p);
    let before = c.dp.clone();
    let mut vips = four_vips();
    vips[0] = web(&[
        "address: 10.0.1.1",
        "address: 10.0.1.2, weight: 50",
        "address: 10.0.1.3",
    ]);
    let p2 = pool(&vips);

    let report = c.apply(&p2).unwrap();
    assert_eq!(report.tables_written, ["web"]);
    let k = key(&p2, "web");
    let id = c.dp.vips[&k].vip_id;
    let info = VipInfo {
        active_ring: 0,
        ..before.vips[&k]
    };
    // Weights live in the table only: no slot is rewritten.
    assert_eq!(c.dp.log, [Op::WriteRing(id, 0), Op::SetVip(k, info)]);
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p2, "web", &["10.0.1.1", "10.0.1.2", "10.0.1.3"])
    );
    assert_ne!(c.dp.active_table(&k), before.active_table(&k));
    for other in ["dns", "any", "v6"] {
        let ok = key(&p2, other);
        assert_eq!(c.dp.vips[&ok], before.vips[&ok], "{other}");
        assert_eq!(c.dp.active_table(&ok), before.active_table(&ok), "{other}");
    }
}

#[test]
fn drain_takes_a_backend_out_of_the_table_but_keeps_its_flows() {
    let p = pool(&[web(&WEB)]);
    let mut c = applied(&p);
    let k = key(&p, "web");
    let drained = c.dp.slot_of(&k, "10.0.1.3");
    let p2 = pool(&[web(&[
        "address: 10.0.1.1",
        "address: 10.0.1.2, weight: 200",
        "address: 10.0.1.3, state: drain",
    ])]);
    c.apply(&p2).unwrap();

    // Established flows keep reaching it: no DOWN flag.
    assert_eq!(c.dp.backend(drained).flags, BACKEND_F_USED);
    assert!(!c.dp.active_table(&k).contains(&drained));
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p2, "web", &["10.0.1.1", "10.0.1.2"])
    );
    assert_eq!(c.vips[&k].serving(), 2);
}

#[test]
fn disabled_marks_the_slot_down_and_takes_it_out_of_the_table_until_enabled() {
    let p = pool(&[web(&WEB)]);
    let mut c = applied(&p);
    let k = key(&p, "web");
    let first = c.dp.active_table(&k).to_vec();
    let id = c.dp.slot_of(&k, "10.0.1.1");
    let p2 = pool(&[web(&[
        "address: 10.0.1.1, state: disabled",
        "address: 10.0.1.2, weight: 200",
        "address: 10.0.1.3",
    ])]);
    c.dp.take_log();
    c.apply(&p2).unwrap();
    // The table without it is live before its flows are moved.
    assert_flip_before_flag(&c.dp.take_log(), id);
    assert_eq!(c.dp.backend(id).flags, BACKEND_F_USED | BACKEND_F_DOWN);
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p2, "web", &["10.0.1.2", "10.0.1.3"])
    );

    c.apply(&p).unwrap();
    assert_eq!(c.dp.backend(id).flags, BACKEND_F_USED);
    // Maglev is a function of the serving set: the first table comes back.
    assert_eq!(c.dp.active_table(&k), first);
}

#[test]
fn a_removed_backend_keeps_its_slot_for_its_flows_until_the_slot_is_needed() {
    let dns = |b: &[&str]| vip("dns", "10.100.0.1", 53, "udp", b);
    let p = pool(&[web(&WEB), dns(&["address: 10.0.2.1"])]);
    // Exactly as many slots as the pool needs (3 + 1).
    let mut c = controller(FakeDataPlane::new(4, 4));
    c.apply(&p).unwrap();
    let k = key(&p, "web");
    let gone = c.dp.slot_of(&k, "10.0.1.3");
    let before = c.dp.backend(gone);

    // Removed: out of the table, but the slot is untouched, so packets
    // of its established connections still reach it.
    let p2 = pool(&[web(&WEB[..2]), dns(&["address: 10.0.2.1"])]);
    c.apply(&p2).unwrap();
    assert_eq!(c.dp.backend(gone), before);
    assert_eq!(c.dp.backend(gone).flags, BACKEND_F_USED);
    assert!(!c.vips[&k].backends.contains_key(&ip("10.0.1.3")));
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p2, "web", &["10.0.1.1", "10.0.1.2"])
    );

    // Added back: the same slot.
    c.apply(&p).unwrap();
    assert_eq!(c.dp.slot_of(&k, "10.0.1.3"), gone);
    c.apply(&p2).unwrap();

    // Another backend, with no slot free: it takes the retired one.
    let p3 = pool(&[
        web(&WEB[..2]),
        dns(&["address: 10.0.2.1", "address: 10.0.2.9"]),
    ]);
    c.apply(&p3).unwrap();
    let dk = key(&p3, "dns");
    assert_eq!(c.dp.slot_of(&dk, "10.0.2.9"), gone);
    assert_eq!(c.dp.backend(gone).vip_id as u32, c.dp.vips[&dk].vip_id);
    assert!(c.dp.active_table(&dk).contains(&gone));
}

#[test]
fn removing_a_vip_removes_its_address_only_when_no_other_vip_uses_it() {
    let p = pool(&four_vips());
    let mut c = applied(&p);
    let dns_slots: Vec<u32> = ["10.0.2.1", "10.0.2.2"]
        .iter()
        .map(|a| c.dp.slot_of(&key(&p, "dns"), a))
        .collect();

    // dns shares 10.100.0.1 with web: the address stays.
    let mut vips = four_vips();
    vips.remove(1);
    let p2 = pool(&vips);
    let report = c.apply(&p2).unwrap();
    assert_eq!(report.vips_removed, ["dns"]);
    assert!(!c.dp.vips.contains_key(&key(&p, "dns")));
    assert_eq!(c.dp.vip_addrs.get(&akey("10.100.0.1")), Some(&ADDR_F_VIP));
    assert!(!c.dp.log.iter().any(|o| matches!(o, Op::RemoveVipAddr(_))));
    for id in &dns_slots {
        // Released, and any flow still pinned to it is rescheduled.
        assert_eq!(c.dp.backend(*id).flags, BACKEND_F_DOWN, "slot {id}");
    }

    // any is alone on 10.100.0.2: the address goes too.
    vips.remove(1);
    let p3 = pool(&vips);
    c.dp.take_log();
    c.apply(&p3).unwrap();
    assert!(!c.dp.vips.contains_key(&key(&p, "any")));
    assert!(!c.dp.vip_addrs.contains_key(&akey("10.100.0.2")));
    assert!(c.dp.log.contains(&Op::RemoveVipAddr(akey("10.100.0.2"))));
    assert_eq!(c.dp.vips.len(), 2);
    assert_eq!(c.dp.vip_addrs.len(), 2);
}

#[test]
fn the_any_port_flag_follows_the_port_0_vip_on_a_shared_address() {
    let all_ports = vip("all", "10.100.0.1", 0, "udp", &["address: 10.0.4.1"]);
    let p = pool(&[web(&WEB), all_ports]);
    let mut c = applied(&p);
    assert_eq!(
        c.dp.vip_addrs[&akey("10.100.0.1")],
        ADDR_F_VIP | ADDR_F_ANY_PORT
    );
    c.apply(&pool(&[web(&WEB)])).unwrap();
    assert_eq!(
        c.dp.vip_addrs,
        BTreeMap::from([(akey("10.100.0.1"), ADDR_F_VIP)])
    );
}

#[test]
fn a_freed_vip_id_is_reused_with_a_fresh_table() {
    let p = pool(&four_vips());
    let mut c = applied(&p);
    let dns_id = c.dp.vips[&key(&p, "dns")].vip_id;
    let mut vips = four_vips();
    vips[1] = vip("mail", "10.100.0.3", 25, "tcp", &["address: 10.0.5.1"]);
    let p2 = pool(&vips);
    let report = c.apply(&p2).unwrap();
    assert_eq!(
        (report.vips_added, report.vips_removed),
        (vec!["mail".to_string()], vec!["dns".to_string()])
    );
    let mk = key(&p2, "mail");
    assert_eq!(c.dp.vips[&mk].vip_id, dns_id);
    let slot = c.dp.slot_of(&mk, "10.0.5.1");
    assert!(c.dp.active_table(&mk).iter().all(|s| *s == slot));
}

#[test]
fn verdicts_on_one_vip_are_written_as_one_table_with_flags_in_order() {
    let addrs: Vec<String> = (1..=20).map(|i| format!("10.0.1.{i}")).collect();
    let lines: Vec<String> = addrs
        .iter()
        .map(|a| format!("address: {a}, health_check: {{kind: tcp}}"))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let p = pool(&[web(&refs)]);
    let mut c = applied(&p);
    let k = key(&p, "web");
    // 5 down first (one table), then 3 of them up and 5 others down.
    for a in &addrs[..5] {
        assert!(c
            .probe_result(&(k, ip(a)), &outcome(false), Health::Down)
            .unwrap());
    }
    std::thread::sleep(FLIP_GRACE);
    c.dp.take_log();
    assert_eq!(c.flush().unwrap(), None);
    let log = c.dp.take_log();
    let rings = log
        .iter()
        .filter(|o| matches!(o, Op::WriteRing(..)))
        .count();
    assert_eq!(rings, 1, "one table for five verdicts: {log:?}");
    for a in &addrs[..5] {
        assert_flip_before_flag(&log, c.dp.slot_of(&k, a));
    }
    for a in &addrs[..3] {
        c.probe_result(&(k, ip(a)), &outcome(true), Health::Up)
            .unwrap();
    }
    for a in &addrs[5..10] {
        c.probe_result(&(k, ip(a)), &outcome(false), Health::Down)
            .unwrap();
    }
    // Within the grace after the last flip, nothing is written yet.
    let wait = c.flush().unwrap().expect("a VIP waits out the grace");
    assert!(wait <= FLIP_GRACE);
    assert_eq!(c.dp.take_log(), []);
    std::thread::sleep(wait);
    assert_eq!(c.flush().unwrap(), None);
    let log = c.dp.take_log();
    let ring = log
        .iter()
        .position(|o| matches!(o, Op::WriteRing(..)))
        .unwrap();
    assert_eq!(
        log.iter()
            .filter(|o| matches!(o, Op::WriteRing(..)))
            .count(),
        1
    );
    let flag_at = |a: &str| {
        let id = c.dp.slot_of(&k, a);
        log.iter()
            .position(|o| matches!(o, Op::SetBackend(i, _) if *i == id))
            .unwrap()
    };
    // Coming up: the flag is cleared before the table sends it flows;
    // going down: the table without it is live before its flag.
    for a in &addrs[..3] {
        assert!(flag_at(a) < ring, "{a}: {log:?}");
    }
    for a in &addrs[5..10] {
        assert!(flag_at(a) > ring, "{a}: {log:?}");
    }
    let serving: Vec<&str> = addrs[..3]
        .iter()
        .chain(&addrs[10..])
        .map(String::as_str)
        .collect();
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p, "web", &serving)
    );
}

#[test]
fn under_the_panic_threshold_every_active_backend_takes_new_flows() {
    let lines = [
        "address: 10.0.1.1, health_check: {kind: tcp}",
        "address: 10.0.1.2, health_check: {kind: tcp}",
        "address: 10.0.1.3, health_check: {kind: tcp}",
        "address: 10.0.1.4, health_check: {kind: tcp}",
        "address: 10.0.1.5, state: drain",
    ];
    let text = web(&lines).replace("    port: 80\n", "    port: 80\n    panic_threshold: 50\n");
    let p = pool(&[text]);
    let mut c = applied(&p);
    let k = key(&p, "web");
    let all = ["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"];
    // 2 of 4 healthy is not under 50%: the usual behaviour.
    for a in ["10.0.1.1", "10.0.1.2"] {
        verdict(&mut c, &(k, ip(a)), &outcome(false), Health::Down);
    }
    assert!(!c.vips[&k].panic);
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p, "web", &["10.0.1.3", "10.0.1.4"])
    );
    // 1 of 4: panic. Every active backend (not the draining one) is in
    // the table, and no slot is marked unhealthy, so the data path
    // takes them.
    verdict(&mut c, &(k, ip("10.0.1.3")), &outcome(false), Health::Down);
    assert!(c.vips[&k].panic);
    assert_eq!(c.vips[&k].serving(), 4);
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p, "web", &all)
    );
    for a in all {
        assert_eq!(
            c.dp.backend(c.dp.slot_of(&k, a)).flags,
            BACKEND_F_USED,
            "{a}"
        );
    }
    // Even with every check failing.
    verdict(&mut c, &(k, ip("10.0.1.4")), &outcome(false), Health::Down);
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p, "web", &all)
    );
    // Back to 2 of 4: out of panic, the failing ones out and marked.
    for a in ["10.0.1.3", "10.0.1.4"] {
        verdict(&mut c, &(k, ip(a)), &outcome(true), Health::Up);
    }
    assert!(!c.vips[&k].panic);
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p, "web", &["10.0.1.3", "10.0.1.4"])
    );
    for a in ["10.0.1.1", "10.0.1.2"] {
        let flags = c.dp.backend(c.dp.slot_of(&k, a)).flags;
        assert_eq!(flags, BACKEND_F_USED | BACKEND_F_UNHEALTHY, "{a}");
    }
}

#[test]
fn health_down_marks_the_slot_and_rebuilds_and_up_restores() {
    let checked = [
        "address: 10.0.1.1, health_check: {kind: tcp}",
        "address: 10.0.1.2, health_check: {kind: tcp}",
        "address: 10.0.1.3, health_check: {kind: tcp}",
    ];
    let p = pool(&[web(&checked)]);
    let mut c = applied(&p);
    let k = key(&p, "web");
    let first = c.dp.active_table(&k).to_vec();
    let id = c.dp.slot_of(&k, "10.0.1.2");
    let b = (k, ip("10.0.1.2"));

    c.dp.take_log();
    assert!(verdict(&mut c, &b, &outcome(false), Health::Down));
    // The table without it is live before its flag changes.
    assert_flip_before_flag(&c.dp.take_log(), id);
    assert_eq!(c.dp.backend(id).flags, BACKEND_F_USED | BACKEND_F_UNHEALTHY);
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p, "web", &["10.0.1.1", "10.0.1.3"])
    );
    assert_eq!(c.vips[&k].backends[&b.1].health, HealthView::Down);
    assert_eq!(c.vips[&k].serving(), 2);
    let last = c.vips[&k].backends[&b.1].last_probe.clone().unwrap();
    assert_eq!(
        (last.ok, last.detail.as_str(), last.latency_ms),
        (false, "connection refused", 1.5)
    );

    // The same verdict again changes nothing.
    c.dp.take_log();
    assert!(!verdict(&mut c, &b, &outcome(false), Health::Down));
    assert_eq!(c.dp.log, []);

    assert!(verdict(&mut c, &b, &outcome(true), Health::Up));
    assert_eq!(c.dp.backend(id).flags, BACKEND_F_USED);
    assert_eq!(c.dp.active_table(&k), first);
    assert_eq!(
        c.vips[&k].backends[&b.1]
            .last_probe
            .as_ref()
            .unwrap()
            .detail,
        "connected"
    );
}

#[test]
fn with_every_backend_down_the_table_holds_no_backend() {
    let checked = [
        "address: 10.0.1.1, health_check: {kind: tcp}",
        "address: 10.0.1.2, health_check: {kind: tcp}",
    ];
    let p = pool(&[web(&checked)]);
    let mut c = applied(&p);
    let k = key(&p, "web");
    for a in ["10.0.1.1", "10.0.1.2"] {
        verdict(&mut c, &(k, ip(a)), &outcome(false), Health::Down);
    }
    assert_eq!(c.vips[&k].serving(), 0);
    assert!(c.dp.active_table(&k).iter().all(|s| *s == NO_BACKEND));
    // The VIP stays, so its packets are dropped and counted, not passed on.
    assert!(c.dp.vips.contains_key(&k));

    verdict(&mut c, &(k, ip("10.0.1.1")), &outcome(true), Health::Up);
    let id = c.dp.slot_of(&k, "10.0.1.1");
    assert_eq!(c.vips[&k].serving(), 1);
    assert!(c.dp.active_table(&k).iter().all(|s| *s == id));
}

#[test]
fn verdicts_for_unchecked_or_unknown_backends_change_nothing() {
    let p = pool(&[web(&WEB)]);
    let mut c = applied(&p);
    let k = key(&p, "web");
    assert!(!verdict(
        &mut c,
        &(k, ip("10.0.1.1")),
        &outcome(false),
        Health::Down
    ));
    assert!(!verdict(
        &mut c,
        &(k, ip("10.9.9.9")),
        &outcome(false),
        Health::Down
    ));
    let mut other = k;
    other.port = 81u16.to_be();
    assert!(!verdict(
        &mut c,
        &(other, ip("10.0.1.1")),
        &outcome(false),
        Health::Down
    ));
    assert_eq!(c.dp.log, []);
    assert_eq!(
        c.vips[&k].backends[&ip("10.0.1.1")].health,
        HealthView::Unchecked
    );
    assert!(c.probes().is_empty());
}

#[test]
fn removing_a_health_check_from_a_down_backend_brings_it_back() {
    let p = pool(&[web(&[
        "address: 10.0.1.1, health_check: {kind: tcp}",
        "address: 10.0.1.2",
    ])]);
    let mut c = applied(&p);
    let k = key(&p, "web");
    assert_eq!(c.probes().len(), 1);
    let id = c.dp.slot_of(&k, "10.0.1.1");
    verdict(&mut c, &(k, ip("10.0.1.1")), &outcome(false), Health::Down);
    assert_eq!(c.dp.backend(id).flags, BACKEND_F_USED | BACKEND_F_UNHEALTHY);

    // Without a check the backend counts as up: in the table and not DOWN.
    let p2 = pool(&[web(&["address: 10.0.1.1", "address: 10.0.1.2"])]);
    c.apply(&p2).unwrap();
    assert_eq!(
        c.vips[&k].backends[&ip("10.0.1.1")].health,
        HealthView::Unchecked
    );
    assert!(c.probes().is_empty());
    assert_eq!(
        c.dp.active_table(&k),
        expected_table(&c.dp, &p2, "web", &["10.0.1.1", "10.0.1.2"])
    );
    assert_eq!(c.dp.backend(id).flags, BACKEND_F_USED);
}

#[test]
fn a_restarted_controller_adopts_ids_and_tables_and_flips_to_the_other_buffer() {
    let p = pool(&four_vips());
    let mut first = applied(&p);
    // Make one VIP's active buffer 0, so both directions are covered.
    let mut vips = four_vips();
    vips[0] = web(&[
        "address: 10.0.1.1",
        "address: 10.0.1.2, weight: 50",
        "address: 10.0.1.3",
    ]);
    let p = pool(&vips);
    first.apply(&p).unwrap();
    let before = first.dp.restarted();
    assert_eq!(before.vips[&key(&p, "web")].active_ring, 0);

    let mut second = controller(before.clone());
    let report = second.apply(&p).unwrap();
    assert!(report.vips_added.is_empty() && report.vips_removed.is_empty());
    for v in &p.vips {
        let k = vip_key(v);
        let (old, new) = (before.vips[&k], second.dp.vips[&k]);
        assert_eq!(new.vip_id, old.vip_id, "{}", v.name);
        assert_eq!(
            new.active_ring,
            old.active_ring ^ 1,
            "{}: flipped to the other buffer",
            v.name
        );
        assert_eq!(
            second.dp.active_table(&k),
            before.active_table(&k),
            "{}: same table",
            v.name
        );
        for b in &v.backends {
            assert_eq!(
                second.vips[&k].backends[&b.address].id,
                first.vips[&k].backends[&b.address].id
            );
        }
    }
    // Slots and addresses are as they were: flows keep their backends.
    assert_eq!(second.dp.backends, before.backends);
    assert_eq!(second.dp.vip_addrs, before.vip_addrs);
    // And the adopted state is now ours: nothing more to write.
    second.dp.take_log();
    second.apply(&p).unwrap();
    assert_eq!(second.dp.log, []);
}

#[test]
fn a_slot_given_to_another_backend_gets_a_new_generation_also_across_a_restart() {
    // web is replaced by `site` (another port, other backends): `site`
    // takes web's VIP id and slots, but flows made under web's backends
    // must not match them (see `Backend::gen`).
    let p = pool(&[web(&WEB)]);
    let mut c = applied(&p);
    let k = key(&p, "web");
    let slots: Vec<u32> = ["10.0.1.1", "10.0.1.2", "10.0.1.3"]
        .iter()
        .map(|a| c.dp.slot_of(&k, a))
        .collect();
    assert!(slots.iter().all(|id| c.dp.backend(*id).gen == 1));
    let site = vip(
        "site",
        "10.100.0.1",
        8080,
        "tcp",
        &[
            "address: 10.0.9.1",
            "address: 10.0.9.2",
            "address: 10.0.9.3",
        ],
    );
    let site_pool = pool(std::slice::from_ref(&site));
    c.apply(&site_pool).unwrap();
    let k2 = key(&site_pool, "site");
    let reused: BTreeSet<u32> = ["10.0.9.1", "10.0.9.2", "10.0.9.3"]
        .iter()
        .map(|a| c.dp.slot_of(&k2, a))
        .collect();
    assert_eq!(reused, slots.iter().copied().collect(), "same slots reused");
    assert_eq!(c.vips[&k2].id, 0, "and the same VIP id");
    for id in &reused {
        assert_eq!(c.dp.backend(*id).gen, 2, "slot {id}");
    }
    // Removed while the daemon is down, reused after its restart: the
    // released slots' generations were read back and go on.
    c.apply(&pool(&["  []".to_string()])).unwrap();
    for id in &reused {
        let b = c.dp.backend(*id);
        assert_eq!((b.flags, b.gen), (BACKEND_F_DOWN, 2), "released slot {id}");
    }
    let mut second = controller(c.dp.restarted());
    second.apply(&p).unwrap();
    for a in ["10.0.1.1", "10.0.1.2", "10.0.1.3"] {
        assert_eq!(second.dp.backend(second.dp.slot_of(&k, a)).gen, 3, "{a}");
    }
}

#[test]
fn a_restarted_controller_removes_a_vip_dropped_meanwhile_with_its_address() {
    let p = pool(&four_vips());
    let first = applied(&p);
    let dp = first.dp.restarted();
    let any_slot = dp.slot_of(&key(&p, "any"), "10.0.3.1");
    let dns_slot = dp.slot_of(&key(&p, "dns"), "10.0.2.1");

    // While the daemon was down, `any` (alone on 10.100.0.2) and `dns`
    // (sharing 10.100.0.1 with web) were removed.
    let mut vips = four_vips();
    vips.drain(1..3);
    let mut second = controller(dp);
    let report = second.apply(&pool(&vips)).unwrap();
    // They were never ours in this run: not reported as removed.
    assert!(report.vips_removed.is_empty());

    assert!(!second.dp.vips.contains_key(&key(&p, "any")));
    assert!(!second.dp.vips.contains_key(&key(&p, "dns")));
    assert_eq!(
        second.dp.vip_addrs,
        BTreeMap::from([
            (akey("10.100.0.1"), ADDR_F_VIP),
            (akey("2001:db8::10"), ADDR_F_VIP)
        ])
    );
    for id in [any_slot, dns_slot] {
        assert_eq!(second.dp.backend(id).flags, BACKEND_F_DOWN, "slot {id}");
    }
    assert_eq!(used_slots(&second.dp), 4);
}

#[test]
fn a_restarted_controller_retires_backends_removed_meanwhile_and_reuses_them_when_full() {
    // Exactly as many slots as the pool needs (3 + 2 + 1 + 1).
    let p = pool(&four_vips());
    let mut first = controller(FakeDataPlane::new(4, 7));
    first.apply(&p).unwrap();
    let dp = first.dp.restarted();
    let web_k = key(&p, "web");
    let dns_k = key(&p, "dns");
    let replaced = dp.slot_of(&web_k, "10.0.1.3");
    let removed = dp.slot_of(&dns_k, "10.0.2.2");

    // While the daemon was down, web's 10.0.1.3 was replaced by 10.0.1.4
    // and dns lost 10.0.2.2.
    let mut vips = four_vips();
    vips[0] = web(&[
        "address: 10.0.1.1",
        "address: 10.0.1.2, weight: 200",
        "address: 10.0.1.4",
    ]);
    vips[1] = vip("dns", "10.100.0.1", 53, "udp", &["address: 10.0.2.1"]);
    let p2 = pool(&vips);
    let mut second = controller(dp);
    second.apply(&p2).unwrap();

    // Both removed backends were retired (their flows carry on); the
    // array being full, the replacement took the lowest retired slot.
    let new = second.dp.slot_of(&web_k, "10.0.1.4");
    assert_eq!(new, replaced.min(removed));
    let other = replaced.max(removed);
    assert_eq!(second.dp.backend(other).flags, BACKEND_F_USED);
    assert_eq!(used_slots(&second.dp), 7);
    assert_eq!(
        second.dp.active_table(&web_k),
        expected_table(
            &second.dp,
            &p2,
            "web",
            &["10.0.1.1", "10.0.1.2", "10.0.1.4"]
        )
    );
    assert_eq!(
        second.dp.active_table(&dns_k),
        expected_table(&second.dp, &p2, "dns", &["10.0.2.1"])
    );
}

#[test]
fn a_restarted_controller_keeps_a_down_backend_out_of_the_table() {
    let checked = [
        "address: 10.0.1.1, health_check: {kind: tcp}",
        "address: 10.0.1.2, health_check: {kind: tcp}",
    ];
    let p = pool(&[web(&checked)]);
    let mut first = applied(&p);
    let k = key(&p, "web");
    verdict(
        &mut first,
        &(k, ip("10.0.1.2")),
        &outcome(false),
        Health::Down,
    );
    let before = first.dp.restarted();

    let mut second = controller(before.clone());
    second.apply(&p).unwrap();
    // Until its prober (started from this state) says otherwise.
    assert_eq!(
        second.vips[&k].backends[&ip("10.0.1.2")].health,
        HealthView::Down
    );
    assert_eq!(second.dp.active_table(&k), before.active_table(&k));
    assert_eq!(second.dp.backends, before.backends);
    assert!(verdict(
        &mut second,
        &(k, ip("10.0.1.2")),
        &outcome(true),
        Health::Up
    ));
    assert_eq!(second.vips[&k].serving(), 2);
}

#[test]
fn a_restart_recovers_from_a_run_that_stopped_part_way() {
    // Three of four VIPs fit: apply stops with their tables flipped in
    // but before any address reached VIP_ADDRS.
    let p = pool(&four_vips());
    let mut first = controller(FakeDataPlane::new(3, 64));
    assert!(first.apply(&p).is_err());
    assert_eq!((first.dp.vips.len(), first.dp.vip_addrs.len()), (3, 0));

    let p2 = pool(&[web(&WEB)]);
    let mut second = controller(first.dp.restarted());
    second.apply(&p2).unwrap();
    let k = key(&p2, "web");
    assert_eq!(second.dp.vips.keys().collect::<Vec<_>>(), [&k]);
    assert_eq!(
        second.dp.vip_addrs,
        BTreeMap::from([(akey("10.100.0.1"), ADDR_F_VIP)])
    );
    assert_eq!(used_slots(&second.dp), 3);
    assert_eq!(
        second.dp.active_table(&k),
        expected_table(
            &second.dp,
            &p2,
            "web",
            &["10.0.1.1", "10.0.1.2", "10.0.1.3"]
        )
    );
}

#[test]
fn more_vips_than_the_maps_hold_is_a_full_error() {
    let p = pool(&four_vips());
    let mut c = controller(FakeDataPlane::new(3, 64));
    let err = c.apply(&p).unwrap_err();
    assert!(
        matches!(
            err,
            ControlError::Full {
                what: "VIP",
                field: "max_vips",
                max: 3
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("raise `tables.max_vips`"), "{err}");
    // What was written fits the maps (the fake checks ids against its sizes).
    assert_eq!(c.dp.vips.len(), 3);
}

#[test]
fn more_backend_slots_than_the_maps_hold_is_a_full_error() {
    // Two distinct addresses, but a slot per (VIP, backend): four slots.
    let b = ["address: 10.0.1.1", "address: 10.0.1.2"];
    let p = pool(&[web(&b), vip("dns", "10.100.0.1", 53, "udp", &b)]);
    let mut c = controller(FakeDataPlane::new(8, 3));
    let err = c.apply(&p).unwrap_err();
    assert!(
        matches!(
            err,
            ControlError::Full {
                what: "backend",
                field: "max_backends",
                max: 3
            }
        ),
        "{err:?}"
    );
    assert!(c.dp.backends.keys().all(|id| *id < 3));
}

#[test]
fn slots_given_to_a_new_vip_or_backend_start_with_zeroed_statistics() {
    // A slot may have served a removed backend (or VIP): its counters must
    // not carry over, or a metric would jump, or fall, for the new one.
    let mut c = controller(FakeDataPlane::new(8, 64));
    c.apply(&pool(&[web(&["address: 10.0.1.1", "address: 10.0.1.2"])]))
        .unwrap();
    let vip = c.vips.values().next().unwrap();
    let ids: Vec<u32> = vip.backends.values().map(|b| b.id).collect();
    let mut want = vec![(Some(vip.id), None)];
    want.extend(ids.iter().map(|id| (None, Some(*id))));
    let mut got = c.dp.cleared.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // A weight change allocates nothing.
    c.dp.cleared.clear();
    c.apply(&pool(&[web(&["address: 10.0.1.1", "address: 10.0.1.2"])]))
        .unwrap();
    assert!(c.dp.cleared.is_empty());
}

#[test]
fn a_round_robin_vip_gets_the_smooth_sequence_and_its_length() {
    let rr = |backends: &[&str]| {
        vip("web", "10.100.0.1", 80, "tcp", backends).replace(
            "    protocol: tcp\n",
            "    protocol: tcp\n    scheduler: round_robin\n",
        )
    };
    let mut c = controller(FakeDataPlane::new(8, 64));
    c.apply(&pool(&[rr(&[
        "address: 10.0.1.1, weight: 5",
        "address: 10.0.1.2, weight: 1",
        "address: 10.0.1.3, weight: 1",
    ])]))
    .unwrap();
    let p = pool(&[rr(&[
        "address: 10.0.1.1, weight: 5",
        "address: 10.0.1.2, weight: 1",
        "address: 10.0.1.3, weight: 1",
    ])]);
    let k = key(&p, "web");
    let v = &c.vips[&k];
    let id = |a: &str| v.backends[&ip(a)].id;
    let info = c.dp.vips[&k];
    assert_eq!(info.scheduler, lb_common::scheduler::ROUND_ROBIN);
    assert_eq!(info.seq_len, 7);
    let (a, b, d) = (id("10.0.1.1"), id("10.0.1.2"), id("10.0.1.3"));
    assert_eq!(&c.dp.active_table(&k)[..7], &[a, a, b, a, d, a, a]);
    assert!(c.dp.active_table(&k)[7..].iter().all(|s| *s == NO_BACKEND));
    // Back to Maglev: a full table, no sequence.
    c.apply(&pool(&[vip(
        "web",
        "10.100.0.1",
        80,
        "tcp",
        &[
            "address: 10.0.1.1, weight: 5",
            "address: 10.0.1.2, weight: 1",
            "address: 10.0.1.3, weight: 1",
        ],
    )]))
    .unwrap();
    let info = c.dp.vips[&k];
    assert_eq!(
        (info.scheduler, info.seq_len),
        (lb_common::scheduler::MAGLEV, 0)
    );
    assert!(c.dp.active_table(&k).iter().all(|s| *s != NO_BACKEND));
}

#[test]
fn slow_start_ramps_a_new_backend_from_near_zero_to_its_weight() {
    let web_ss = |backends: &[&str]| {
        vip("web", "10.100.0.1", 80, "tcp", backends).replace(
            "    protocol: tcp\n",
            "    protocol: tcp\n    slow_start: 30s\n",
        )
    };
    let two = ["address: 10.0.1.1", "address: 10.0.1.2"];
    let three = [
        "address: 10.0.1.1",
        "address: 10.0.1.2",
        "address: 10.0.1.3",
    ];
    let mut c = controller(FakeDataPlane::new(8, 64));
    // A new VIP's first backends share the traffic from the start.
    c.apply(&pool(&[web_ss(&two)])).unwrap();
    let p = pool(&[web_ss(&three)]);
    let k = key(&p, "web");
    assert!(c.vips[&k].backends.values().all(|b| b.up_since.is_none()));
    // A backend added later starts near zero: weight 1 of 100.
    c.apply(&p).unwrap();
    let id = c.vips[&k].backends[&ip("10.0.1.3")].id;
    let share = |c: &Controller<FakeDataPlane>| {
        let t = c.dp.active_table(&k);
        t.iter().filter(|s| **s == id).count() as f64 / t.len() as f64
    };
    assert!(share(&c) < 0.01, "share {}", share(&c));
    // Half way (15 s of 30): weight 50 of 100, 50 of 250 of the table.
    let now = Instant::now();
    c.vips
        .get_mut(&k)
        .unwrap()
        .backends
        .get_mut(&ip("10.0.1.3"))
        .unwrap()
        .up_since = Some(now - Duration::from_secs(15));
    assert!(c.ramp(now));
    // (A VIP's tables flip at most once per FLIP_GRACE.)
    while let Some(wait) = c.flush().unwrap() {
        std::thread::sleep(wait);
    }
    assert!((share(&c) - 0.2).abs() < 0.02, "share {}", share(&c));
    // Over: its whole weight, and the ramp ends.
    c.vips
        .get_mut(&k)
        .unwrap()
        .backends
        .get_mut(&ip("10.0.1.3"))
        .unwrap()
        .up_since = Some(now - Duration::from_secs(31));
    assert!(c.ramp(now));
    // (A VIP's tables flip at most once per FLIP_GRACE.)
    while let Some(wait) = c.flush().unwrap() {
        std::thread::sleep(wait);
    }
    assert!((share(&c) - 1.0 / 3.0).abs() < 0.02, "share {}", share(&c));
    assert!(c.vips[&k].backends[&ip("10.0.1.3")].up_since.is_none());
    assert!(!c.ramp(now), "nothing ramps any more");
}

#[test]
fn least_response_time_weights_backends_by_their_probe_times() {
    let lrt = vip(
        "web",
        "10.100.0.1",
        80,
        "tcp",
        &["address: 10.0.1.1", "address: 10.0.1.2"],
    )
    .replace(
        "    protocol: tcp\n",
        "    protocol: tcp\n    scheduler: least_response_time\n",
    );
    let p = pool(&[lrt]);
    let mut c = controller(FakeDataPlane::new(8, 64));
    c.apply(&p).unwrap();
    let k = key(&p, "web");
    // The data path reads a Maglev table.
    assert_eq!(c.dp.vips[&k].scheduler, lb_common::scheduler::MAGLEV);
    let probe = |ms: u64| ProbeOutcome {
        ok: true,
        detail: "connected".into(),
        latency: Duration::from_millis(ms),
    };
    for _ in 0..3 {
        c.probe_result(&(k, ip("10.0.1.1")), &probe(1), Health::Up)
            .unwrap();
        c.probe_result(&(k, ip("10.0.1.2")), &probe(4), Health::Up)
            .unwrap();
    }
    assert!(c.ramp(Instant::now()));
    while let Some(wait) = c.flush().unwrap() {
        std::thread::sleep(wait);
    }
    // Four times slower: a quarter of the weight, 20 % of the table.
    let slow = c.vips[&k].backends[&ip("10.0.1.2")].id;
    let t = c.dp.active_table(&k);
    let share = t.iter().filter(|s| **s == slow).count() as f64 / t.len() as f64;
    assert!((share - 0.2).abs() < 0.02, "share {share}");
    // Equally fast again (smoothed over a few probes): equal shares.
    for _ in 0..20 {
        c.probe_result(&(k, ip("10.0.1.2")), &probe(1), Health::Up)
            .unwrap();
    }
    c.ramp(Instant::now());
    while let Some(wait) = c.flush().unwrap() {
        std::thread::sleep(wait);
    }
    let t = c.dp.active_table(&k);
    let share = t.iter().filter(|s| **s == slow).count() as f64 / t.len() as f64;
    assert!((share - 0.5).abs() < 0.02, "share {share}");
}
