//! Loads the balancer object and prints how many instructions the verifier
//! walked to accept `lb_xdp` and `lb_stateless` (its limit is 1 000 000): the margin left for
//! new data-path code. Exits non-zero when the program is refused.
use anyhow::{Context, Result};
use aya::programs::Xdp;
use lb_tests::{ebpf_object, private_netns, test_sizes, Balancer};

fn main() -> Result<()> {
    private_netns().context("entering a private network namespace")?;
    let lb = Balancer::load(test_sizes())
        .with_context(|| format!("loading {}", ebpf_object().display()))?;
    for name in [lb_common::progs::BALANCER, lb_common::progs::STATELESS] {
        let prog: &Xdp = lb
            .ebpf()
            .program(name)
            .with_context(|| format!("no {name}"))?
            .try_into()?;
        let n = prog.info()?.verified_instruction_count();
        println!(
            "{name}: {} instructions verified (limit 1000000)",
            n.map_or("unknown".to_string(), |n| n.to_string())
        );
    }
    Ok(())
}
