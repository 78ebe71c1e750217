//! A restarted controller over the maps it finds pinned.
use super::*;

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
