//! The large configurations: cold start and a large reload (64 VIPs ×
//! 1000 backends), and verdicts at `--scale`'s size (512 VIPs over the
//! same 127 backends).
use super::*;

/// `--scale`'s size: 512 VIPs with the same 127 backends each (65 024
/// slots), every backend with a tcp check (never started).
fn shared_pool(instance: &str) -> String {
    big_pool(instance, SCALE_VIPS, SCALE_PER_VIP, SCALE_VIPS, true)
}

const SCALE_VIPS: u32 = 512;
const SCALE_PER_VIP: u32 = 127;

/// Verdict to table at `--scale`'s size: one backend of one VIP, 100 of
/// one VIP's backends at once, and one address down behind all 512 VIPs
/// (a host that serves them all: 512 tables). Each from the first verdict
/// recorded to the last table in place; checked in the kernel's tables.
pub(super) fn scale_verdicts(object: &[u8]) -> Result<()> {
    let instance = format!("lbverd{}", std::process::id());
    let _pins = Pins(instance.clone());
    let sizes = Sizes {
        max_vips: SCALE_VIPS,
        max_backends: 65535,
        ring_size: RING,
        flows: 1024,
        persist: 1024,
        stateless_vips: 1,
        max_vip_backends: SCALE_PER_VIP,
    };
    let dp = BpfDataPlane::load(object, &instance, sizes, false)?;
    let mut ctl = Controller::adopt(dp, RING, sizes.max_vips, sizes.max_backends)?;
    let pool =
        config::parse(&shared_pool(&instance), "scale.yaml").map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    ctl.apply(&pool)?;
    let cold = t.elapsed();
    let keys: Vec<VipKey> = pool.vips.iter().map(vip_key).collect();
    let addrs: Vec<_> = pool.vips[0].backends.iter().map(|b| b.address).collect();
    let failed = ProbeOutcome {
        ok: false,
        detail: "connection refused".into(),
        latency: Duration::from_millis(1),
    };
    // Records `down`'s verdicts, then flushes until every table is written.
    let run = |ctl: &mut Controller<BpfDataPlane>, down: &[(VipKey, std::net::IpAddr)]| {
        let t = Instant::now();
        for (k, a) in down {
            ensure!(
                ctl.probe_result(&(*k, *a), &failed, Health::Down)?,
                "{a} of {k:?} was down already"
            );
        }
        while let Some(wait) = ctl.flush()? {
            std::thread::sleep(wait);
        }
        Ok(t.elapsed())
    };
    let out_of_table = |ctl: &Controller<BpfDataPlane>, k: &VipKey, a: &std::net::IpAddr| {
        let id = ctl.vips[k].backends[a].id;
        ensure!(
            !kernel_table(&instance, k)?.contains(&id),
            "{a} is still in the table of {k:?}"
        );
        Ok(())
    };
    // One backend of one VIP, 20 times (each on another VIP).
    let mut one = Vec::new();
    for n in 0..20u32 {
        let k = keys[(n * 25 + 3) as usize];
        let a = addrs[(n * 7) as usize % addrs.len()];
        one.push(run(&mut ctl, &[(k, a)])?);
        out_of_table(&ctl, &k, &a)?;
    }
    one.sort_unstable();
    // 100 of the 127 backends of one VIP.
    let k = keys[SCALE_VIPS as usize - 1];
    let hundred: Vec<_> = addrs.iter().take(100).map(|a| (k, *a)).collect();
    let batch = run(&mut ctl, &hundred)?;
    for (k, a) in &hundred {
        out_of_table(&ctl, k, a)?;
    }
    // An address behind every VIP (probed once, one verdict each), none of
    // the above (those are 7n and the first 100).
    let a = addrs[120];
    let host: Vec<_> = keys.iter().map(|k| (*k, a)).collect();
    let everywhere = run(&mut ctl, &host)?;
    for k in keys.iter().step_by(16) {
        out_of_table(&ctl, k, &a)?;
    }
    println!(
        "verdicts at scale: {SCALE_VIPS} VIPs x {SCALE_PER_VIP} backends (the same addresses \
         behind every VIP), M = {RING}; applied from nothing in {} ms",
        ms(cold)
    );
    println!(
        "  one backend of one VIP down, to its table in place: median {} ms, max {} ms (20 verdicts)",
        ms(quantile(&one, 0.5)),
        ms(one[one.len() - 1])
    );
    println!("  100 of one VIP's backends down at once: {} ms", ms(batch));
    println!(
        "  one address down behind all {SCALE_VIPS} VIPs ({SCALE_VIPS} tables): {} ms",
        ms(everywhere)
    );
    Ok(())
}

/// A pool of `vips` VIPs with `per_vip` backends each: each VIP its own
/// addresses and no health checks, or (`shared`) the same addresses
/// behind every VIP, each with a tcp check.
fn big_pool(instance: &str, vips: u32, per_vip: u32, max_vips: u32, shared: bool) -> String {
    let kind = if shared { "tcp" } else { "none" };
    let mut text = format!(
        "instance: {instance}\ninterfaces: [lo]\nencapsulation:\n  source_v4: 10.255.0.0/24\n\
         tables:\n  maglev_size: {RING}\n  max_vips: {max_vips}\n  max_backends: 65535\n  \
         flow_table_size: 1024\nhealth_defaults:\n  kind: {kind}\nvips:\n"
    );
    for v in 0..vips {
        text += &format!(
            "  - name: v{v}\n    address: 10.100.{}.{}\n    port: 80\n    protocol: tcp\n    backends:\n",
            v / 250,
            1 + v % 250
        );
        let net = if shared { 1 } else { 1 + v };
        for i in 0..per_vip {
            text += &format!("      - address: 10.{net}.{}.{}\n", i / 250, 1 + i % 250);
        }
    }
    text
}

/// Cold start and a large reload: pool file read, then every slot and
/// table written (`Controller::apply` on a fresh instance).
pub(super) fn scale(object: &[u8]) -> Result<()> {
    let timed_apply =
        |ctl: &mut Controller<BpfDataPlane>, text: &str| -> Result<(Duration, usize)> {
            let t = Instant::now();
            let pool = config::parse(text, "scale.yaml").map_err(|e| anyhow::anyhow!("{e}"))?;
            let report = ctl.apply(&pool)?;
            Ok((t.elapsed(), report.tables_written.len()))
        };
    let fresh = |instance: &str| -> Result<Controller<BpfDataPlane>> {
        let sizes = Sizes {
            max_vips: 64,
            max_backends: 65535,
            ring_size: RING,
            flows: 1024,
            persist: 1024,
            stateless_vips: 1,
            max_vip_backends: 1000,
        };
        let dp = BpfDataPlane::load(object, instance, sizes, false)?;
        Ok(Controller::adopt(
            dp,
            RING,
            sizes.max_vips,
            sizes.max_backends,
        )?)
    };
    // 64 VIPs x 1000 backends, from nothing to every table in place.
    let instance = format!("lbcold{}", std::process::id());
    let _pins = Pins(instance.clone());
    let mut ctl = fresh(&instance)?;
    let (cold, tables) = timed_apply(&mut ctl, &big_pool(&instance, 64, 1000, 64, false))?;
    ensure!(tables == 64, "cold start wrote {tables} tables");
    drop(ctl);
    // 32 VIPs x 1000, then a reload that adds 10 VIPs x 1000 backends.
    let instance = format!("lbgrow{}", std::process::id());
    let _pins2 = Pins(instance.clone());
    let mut ctl = fresh(&instance)?;
    timed_apply(&mut ctl, &big_pool(&instance, 32, 1000, 64, false))?;
    let (grow, tables) = timed_apply(&mut ctl, &big_pool(&instance, 42, 1000, 64, false))?;
    ensure!(tables == 10, "the reload wrote {tables} tables");
    let verdict = |d: Duration, max: Duration| if d <= max { "met" } else { "NOT met" };
    println!("scale: pool file parsed and applied (all slots and tables written), M = {RING}");
    println!(
        "  cold start, 64 VIPs x 1000 backends (64000 slots): {} ms (target <= 2000 ms: {})",
        ms(cold),
        verdict(cold, Duration::from_secs(2))
    );
    println!(
        "  reload adding 10000 backends (10 VIPs) to 32000: {} ms (target <= 1000 ms: {})",
        ms(grow),
        verdict(grow, Duration::from_secs(1))
    );
    Ok(())
}
