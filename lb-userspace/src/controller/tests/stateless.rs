//! Stateless VIPs: each slot's previous backend, as the table changes and
//! across a restart.
use super::*;
use lb_common::{chain_age_s, chain_changed_s, chain_prev, chain_prev2, VIP_F_STATELESS};

fn stateless_web(backends: &[&str]) -> String {
    web(backends).replace(
        "    protocol: tcp\n",
        "    protocol: tcp\n    forwarding: gue\n    state: stateless\n",
    )
}

#[test]
fn a_changed_slot_names_its_old_backend_and_a_kept_one_keeps_what_it_named() {
    let three = &WEB[..];
    let p = pool(&[stateless_web(three)]);
    let mut c = controller(FakeDataPlane::new(8, 64)).with_stateless_vips(2);
    c.apply(&p).unwrap();
    let k = key(&p, "web");
    let info = c.dp.vips[&k];
    assert_eq!(info.flags & VIP_F_STATELESS, VIP_F_STATELESS);

    // A new VIP names no previous backend, and packets read none.
    let idx = info.chain_idx;
    assert!(c.dp.chains[&idx].iter().all(|e| *e == 0));
    assert_eq!(info.chain_until, 0);
    let before = c.dp.active_table(&k).to_vec();
    // A fourth backend takes some slots: they name their old backend.
    let mut four = three.to_vec();
    four.push("address: 10.0.1.4");
    let p4 = pool(&[stateless_web(&four)]);
    c.apply(&p4).unwrap();
    settle(&mut c);
    let after = c.dp.active_table(&k).to_vec();
    let chains = c.dp.chains[&idx].clone();
    let mut moved = 0;
    let now_s = (lb_common::monotonic_coarse_ns() / 1_000_000_000) as u32;
    for (s, (o, n)) in before.iter().zip(&after).enumerate() {
        if o != n {
            moved += 1;
            assert_eq!(chain_prev(chains[s]), *o, "slot {s}");
            assert!(chain_age_s(chains[s], now_s) < 60, "changed just now");
        } else {
            assert_eq!(chains[s], 0, "slot {s} kept its backend");
        }
    }
    // Packets read them until the window (default 1h) after the change.
    let latest = chains
        .iter()
        .map(|&e| chain_changed_s(e, now_s))
        .max()
        .unwrap();
    assert_eq!(
        c.dp.vips[&k].chain_until,
        lb_common::chain_until(latest, 3600)
    );
    let end_ns = (c.dp.vips[&k].chain_until as u64) << lb_common::CHAIN_UNTIL_SHIFT;
    let want_ns = (latest as u64 + 3600) * 1_000_000_000;
    assert!(
        end_ns >= want_ns && end_ns - want_ns < 1 << 30,
        "{end_ns} {want_ns}"
    );
    let new_id = c.dp.slot_of(&k, "10.0.1.4");
    // (Maglev moves a few slots between the old backends too.)
    let taken = after.iter().filter(|b| **b == new_id).count();
    assert!(taken > 0 && taken <= moved, "{taken} {moved}");
    // A weight change moves other slots; those that moved before and stay
    // keep what they named.
    let mut heavier = four.clone();
    heavier[0] = "address: 10.0.1.1, weight: 300";
    c.apply(&pool(&[stateless_web(&heavier)])).unwrap();
    settle(&mut c);
    let third = c.dp.active_table(&k).to_vec();
    let chains2 = c.dp.chains[&idx].clone();
    let mut twice = 0;
    for s in 0..third.len() {
        if third[s] != after[s] {
            assert_eq!(chain_prev(chains2[s]), after[s], "slot {s}");
            // Moved before too: the backend before is named second.
            let before_that = chain_prev(chains[s]);
            if chains[s] != 0 && before_that != third[s] {
                assert_eq!(chain_prev2(chains2[s]), before_that, "slot {s}");
                twice += 1;
            }
        } else {
            assert_eq!(chains2[s], chains[s], "slot {s}");
        }
    }
    assert!(twice > 0, "no slot moved twice");
    // Removing backend 10.0.1.4 from the pool clears the slots naming it.
    let gone = c.dp.slot_of(&k, "10.0.1.4");
    c.apply(&pool(&[stateless_web(&heavier[..3])])).unwrap();
    settle(&mut c);
    assert!(c.dp.chains[&idx]
        .iter()
        .all(|e| chain_prev(*e) != gone && chain_prev2(*e) != gone));
    // A restarted controller takes the table of previous backends over.
    let kept = c.dp.chains[&idx].clone();
    let mut second = controller(c.dp.restarted()).with_stateless_vips(2);
    second
        .apply(&pool(&[stateless_web(&heavier[..3])]))
        .unwrap();
    assert_eq!(second.dp.vips[&k].chain_idx, idx);
    assert_eq!(second.dp.chains[&idx], kept);
}

#[test]
fn stateless_vips_take_free_tables_up_to_the_limit() {
    let a = stateless_web(&WEB);
    let b = a
        .replace("name: web", "name: web2")
        .replace("port: 80", "port: 81");
    let cc = a
        .replace("name: web", "name: web3")
        .replace("port: 80", "port: 82");
    let mut c = controller(FakeDataPlane::new(8, 64)).with_stateless_vips(2);
    c.apply(&pool(&[a.clone(), b.clone()])).unwrap();
    let idx: BTreeSet<u8> = c.dp.vips.values().map(|i| i.chain_idx).collect();
    assert_eq!(idx, BTreeSet::from([0, 1]));
    let err = c.apply(&pool(&[a, b, cc])).unwrap_err();
    assert!(err.to_string().contains("max_stateless_vips"), "{err}");
}

#[test]
fn a_vip_gets_a_table_of_its_own_size_and_a_new_size_clears_what_its_slots_named() {
    const ROOM: u32 = 2003;
    let sized = |backends: &[&str], size: Option<u32>| {
        let mut v = stateless_web(backends);
        if let Some(n) = size {
            v = v.replace(
                "    backends:\n",
                &format!("    maglev_size: {n}\n    backends:\n"),
            );
        }
        v
    };
    let mut dp = FakeDataPlane::new(8, 64);
    dp.room = ROOM;
    let mut c = Controller::adopt(dp, ROOM, 8, 64)
        .unwrap()
        .with_stateless_vips(2);
    let p = pool_with_room(&[sized(&WEB, Some(1009))], ROOM);
    c.apply(&p).unwrap();
    let k = key(&p, "web");
    // The table Maglev builds at the VIP's size, and the VIP says so
    // (the fake data plane also checks every flip against the buffer).
    let serving: Vec<&str> = WEB.iter().map(|b| &b[9..17]).collect();
    let want = expected_table_of(&c.dp, &p, "web", &serving, 1009);
    assert_eq!(c.dp.active_table(&k), &want[..]);
    assert_eq!(c.dp.vips[&k].ring_size, 1009);
    // A fourth backend: changed slots name their old backend, as at any size.
    let mut four = WEB.to_vec();
    four.push("address: 10.0.1.4");
    c.apply(&pool_with_room(&[sized(&four, Some(1009))], ROOM))
        .unwrap();
    settle(&mut c);
    let idx = c.dp.vips[&k].chain_idx;
    let named = c.dp.chains[&idx].clone();
    assert!(
        named.iter().any(|e| *e != 0),
        "no slot names a previous backend"
    );
    // A restarted daemon adopts the table and what its slots name at their
    // size (the active buffer read at 1009 slots, not the room's).
    let restart = |c: &Controller<FakeDataPlane>| {
        Controller::adopt(c.dp.restarted(), ROOM, 8, 64)
            .unwrap()
            .with_stateless_vips(2)
    };
    let mut c = restart(&c);
    let p4 = |size| pool_with_room(&[sized(&four, size)], ROOM);
    c.apply(&p4(Some(1009))).unwrap();
    settle(&mut c);
    assert_eq!(c.dp.vips[&k].ring_size, 1009);
    let count = |t: &[u64]| t.iter().filter(|e| **e != 0).count();
    assert!(
        c.dp.chains[&idx] == named,
        "a restart at the same size keeps them: {} named before, {} after",
        count(&named),
        count(&c.dp.chains[&idx])
    );
    // The room's size (the default): another table, whose slots hash other
    // connections, so none names a previous backend.
    c.apply(&p4(None)).unwrap();
    settle(&mut c);
    assert_eq!(c.dp.active_table(&k).len(), ROOM as usize);
    assert_eq!(c.dp.vips[&k].ring_size, ROOM);
    assert!(c.dp.chains[&idx].iter().all(|e| *e == 0));
    // At the room's size, a weight change names previous backends, also in
    // slots past 1009; shrinking the table clears them all.
    let mut heavier = four.clone();
    heavier[0] = "address: 10.0.1.1, weight: 300";
    c.apply(&pool_with_room(&[sized(&heavier, None)], ROOM))
        .unwrap();
    settle(&mut c);
    assert!(c.dp.chains[&idx][1009..].iter().any(|e| *e != 0));
    c.apply(&pool_with_room(&[sized(&heavier, Some(1009))], ROOM))
        .unwrap();
    settle(&mut c);
    assert_eq!(c.dp.active_table(&k).len(), 1009);
    assert!(c.dp.chains[&idx].iter().all(|e| *e == 0));
    // A restart with the size changed in the pool file clears them too.
    c.apply(&pool_with_room(&[sized(&WEB, Some(1009))], ROOM))
        .unwrap();
    settle(&mut c);
    assert!(c.dp.chains[&idx].iter().any(|e| *e != 0));
    let mut c = restart(&c);
    c.apply(&pool_with_room(&[sized(&WEB, Some(1013))], ROOM))
        .unwrap();
    settle(&mut c);
    assert_eq!(c.dp.active_table(&k).len(), 1013);
    assert!(c.dp.chains[&idx].iter().all(|e| *e == 0));
}
