//! Applying pool files: VIPs, addresses, slots, tables, and the maps' limits.
use super::*;

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
fn the_forwarding_mode_is_in_every_backend_slot_and_follows_a_reload() {
    let with = |mode: &str| {
        pool(&[web(&WEB).replace(
            "    protocol: tcp\n",
            &format!("    protocol: tcp\n    forwarding: {mode}\n"),
        )])
    };
    let mut c = controller(FakeDataPlane::new(8, 64));
    for (mode, flag) in [
        ("dsr_l2", BACKEND_F_DSR_L2),
        ("gue", BACKEND_F_GUE),
        ("encap", 0),
    ] {
        let p = with(mode);
        c.apply(&p).unwrap();
        let k = key(&p, "web");
        assert_eq!(c.dp.vips[&k].mode, p.vips[0].forwarding.number());
        for b in c.vips[&k].backends.values() {
            let flags = c.dp.backend(b.id).flags;
            assert_eq!(
                flags & (BACKEND_F_DSR_L2 | BACKEND_F_GUE),
                flag,
                "{mode}: slot {} flags {flags:#x}",
                b.id
            );
            assert_eq!(flags & BACKEND_F_USED, BACKEND_F_USED);
        }
    }
}
