//! Health verdicts: flags and tables in order, panic mode, checks removed.
use super::*;

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
fn a_flush_within_a_budget_writes_a_vip_at_least_and_leaves_the_rest_due_at_once() {
    // One backend behind four VIPs goes down: four tables to write.
    let vips: Vec<String> = (0..4)
        .map(|i| {
            vip(
                &format!("v{i}"),
                &format!("10.100.0.{}", i + 1),
                80,
                "tcp",
                &[
                    "address: 10.0.1.1, health_check: {kind: tcp}",
                    "address: 10.0.1.2",
                ],
            )
        })
        .collect();
    let p = pool(&vips);
    let mut c = applied(&p);
    for i in 0..4 {
        let k = key(&p, &format!("v{i}"));
        c.probe_result(&(k, ip("10.0.1.1")), &outcome(false), Health::Down)
            .unwrap();
    }
    std::thread::sleep(FLIP_GRACE);
    let rings = |log: &[Op]| {
        log.iter()
            .filter(|o| matches!(o, Op::WriteRing(..)))
            .count()
    };
    // No time at all: one VIP per call, the next due at once.
    for left in (0..3).rev() {
        assert_eq!(
            c.flush_within(Duration::ZERO).unwrap(),
            Some(Duration::ZERO)
        );
        assert_eq!(rings(&c.dp.take_log()), 1, "{left} left");
    }
    assert_eq!(c.flush_within(Duration::ZERO).unwrap(), None);
    assert_eq!(rings(&c.dp.take_log()), 1);
    for i in 0..4 {
        let k = key(&p, &format!("v{i}"));
        assert_eq!(
            c.dp.active_table(&k),
            expected_table(&c.dp, &p, &format!("v{i}"), &["10.0.1.2"])
        );
    }
}
