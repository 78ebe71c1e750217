//! `cargo xtask fuzz [PACKETS] [SEED]`: random and mutated packets through
//! the real `lb_xdp` (BPF_PROG_TEST_RUN, in a private network namespace);
//! see `lb_tests::fuzz` for what each packet is checked for.
use anyhow::{bail, Context, Result};
use lb_tests::{fuzz, private_netns, Balancer};

fn main() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fuzzer loads XDP programs and needs root (CAP_BPF, CAP_NET_ADMIN)");
    }
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map_or(Ok(1_000_000), |a| a.parse())
        .context("PACKETS")?;
    let seed: u64 = match args.next() {
        Some(a) => a.parse().context("SEED")?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    private_netns()?;
    let mut lb = Balancer::load(fuzz::SIZES)?;
    fuzz::configure(&mut lb)?;
    let start = std::time::Instant::now();
    let r = fuzz::run(&lb, n, seed)?;
    println!(
        "fuzz: {} packets (seed {seed}) in {:.1} s: {} passed, {} dropped, {} sent; \
         no XDP_ABORTED, nothing changed that was passed, everything sent well formed",
        r.packets,
        start.elapsed().as_secs_f64(),
        r.passed,
        r.dropped,
        r.sent
    );
    println!("counters: {:?}", lb.counters());
    Ok(())
}
