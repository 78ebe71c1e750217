//! Tables for other schedulers and weights: round robin, slow start, least response time.
use super::*;

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
    settle(&mut c);
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
    settle(&mut c);
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
    settle(&mut c);
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
    settle(&mut c);
    let t = c.dp.active_table(&k);
    let share = t.iter().filter(|s| **s == slow).count() as f64 / t.len() as f64;
    assert!((share - 0.5).abs() < 0.02, "share {share}");
}

#[test]
fn least_connections_vips_count_and_get_weights_limits_and_their_table() {
    let with = |setting: &str, backends: &[&str]| {
        vip("web", "10.100.0.1", 80, "tcp", backends).replace(
            "    protocol: tcp\n",
            &format!("    protocol: tcp\n{setting}"),
        )
    };
    let backends = [
        "address: 10.0.1.1, weight: 5, health_check: { kind: tcp }",
        "address: 10.0.1.2, weight: 1, max_connections: 7",
        "address: 10.0.1.3, weight: 2, state: drain",
    ];
    // Exact: every backend taking new flows once, in the sequence.
    let p = pool(&[with("    scheduler: least_connections_exact\n", &backends)]);
    let mut c = controller(FakeDataPlane::new(8, 64));
    c.apply(&p).unwrap();
    let k = key(&p, "web");
    let id = |c: &Controller<FakeDataPlane>, a: &str| c.vips[&k].backends[&ip(a)].id;
    let (a, b, d) = (id(&c, "10.0.1.1"), id(&c, "10.0.1.2"), id(&c, "10.0.1.3"));
    let info = c.dp.vips[&k];
    assert_eq!(
        (info.scheduler, info.flags, info.seq_len),
        (lb_common::scheduler::LEAST_CONN_EXACT, VIP_F_COUNT, 2)
    );
    let mut seq = c.dp.active_table(&k)[..2].to_vec();
    seq.sort();
    assert_eq!(seq, [a.min(b), a.max(b)]);
    assert!(c.dp.active_table(&k)[2..].iter().all(|s| *s == NO_BACKEND));
    // Weights and limits; the draining backend takes no new flow.
    let limit = |c: &Controller<FakeDataPlane>, id| c.dp.limits[&id];
    assert_eq!(
        limit(&c, a),
        BackendLimit {
            weight: 5,
            max_conns: 0,
            ..Default::default()
        }
    );
    assert_eq!(
        limit(&c, b),
        BackendLimit {
            weight: 1,
            max_conns: 7,
            ..Default::default()
        }
    );
    assert_eq!(
        limit(&c, d),
        BackendLimit {
            weight: 0,
            max_conns: 0,
            ..Default::default()
        }
    );
    // A backend failing its checks: weight 0, out of the sequence.
    verdict(&mut c, &(k, ip("10.0.1.1")), &outcome(false), Health::Down);
    assert_eq!(limit(&c, a).weight, 0);
    assert_eq!(c.dp.vips[&k].seq_len, 1);
    assert_eq!(c.dp.active_table(&k)[0], b);
    // Two random choices read the Maglev table.
    let p = pool(&[with("    scheduler: least_connections\n", &backends)]);
    c.apply(&p).unwrap();
    let info = c.dp.vips[&k];
    assert_eq!(
        (info.scheduler, info.flags, info.seq_len),
        (lb_common::scheduler::LEAST_CONN, VIP_F_COUNT, 0)
    );
    assert!(c.dp.active_table(&k).iter().all(|s| *s == b));
    // Maglev with a backend limit still counts; without, it does not.
    let p = pool(&[with("", &backends)]);
    c.apply(&p).unwrap();
    assert_eq!(c.dp.vips[&k].flags, VIP_F_COUNT);
    let p = pool(&[with("", &["address: 10.0.1.1", "address: 10.0.1.2"])]);
    c.apply(&p).unwrap();
    assert_eq!(c.dp.vips[&k].flags, 0);
    assert_eq!(
        limit(&c, b),
        BackendLimit {
            weight: 100,
            max_conns: 0,
            ..Default::default()
        }
    );
}

#[test]
fn persistence_sets_the_timeout_and_the_client_prefix() {
    let p = pool(&[
        vip("web", "10.100.0.1", 80, "tcp", &["address: 10.0.1.1"]).replace(
            "    protocol: tcp\n",
            "    protocol: tcp\n    persistence: { timeout: 90s, prefix_v4: 24, prefix_v6: 64 }\n",
        ),
    ]);
    let c = applied(&p);
    let info = c.dp.vips[&key(&p, "web")];
    assert_eq!(
        (
            info.persist_s,
            info.src_prefix_v4,
            info.src_prefix_v6,
            info.flags
        ),
        (90, 24, 64, 0)
    );
}
