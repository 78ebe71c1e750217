//! What the benches share: pinning to a CPU, one BPF_PROG_TEST_RUN call,
//! a loaded program by name, the balancer's sizes, the statistics of a
//! run's times.
use crate::Balancer;
use anyhow::{bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};

/// The balancer of the live-frames and Katran benches, at production
/// sizes: a 1 048 576-entry flow table, tables of 65 537 slots, room for
/// 256 backends.
pub const SIZES: lb_userspace::dataplane::Sizes = lb_userspace::dataplane::Sizes {
    max_vips: 4,
    max_backends: 256,
    ring_size: 65537,
    flows: 1 << 20,
    persist: 1024,
    stateless_vips: 1,
    max_vip_backends: 256,
};

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> Result<()> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity(CPU {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Pins the calling thread to the last CPU; which one.
pub fn pin_to_last_cpu() -> Result<usize> {
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        bail!("sysconf(_SC_NPROCESSORS_ONLN) returned {n}");
    }
    let cpu = n as usize - 1;
    pin(cpu)?;
    Ok(cpu)
}

/// What one run returned: the action, the kernel's ns per run, the output.
pub struct RunResult {
    pub action: u32,
    pub ns: u64,
    pub data: Vec<u8>,
}

/// One BPF_PROG_TEST_RUN call of `repeat` runs on `data`.
pub fn run(prog: &Xdp, data: &[u8], repeat: u32) -> Result<RunResult> {
    let mut out = vec![0u8; data.len() + 512];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        action: r.return_value,
        ns: r.duration.as_nanos() as u64,
        data: out,
    })
}

/// The loaded XDP program `name` of `lb`'s object.
pub fn program<'a>(lb: &'a Balancer, name: &str) -> Result<&'a Xdp> {
    Ok(lb
        .ebpf()
        .program(name)
        .with_context(|| format!("no program `{name}` in the object"))?
        .try_into()?)
}

/// The middle sample of `v` (the upper one of an even count).
pub fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

/// The mean of the samples between the 10th and 90th percentile: the
/// kernel's clock reads in steps of about 10 ns, which a median keeps.
pub fn trimmed_mean(v: &[u64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    let cut = s.len() / 10;
    let mid = &s[cut..s.len() - cut];
    mid.iter().sum::<u64>() as f64 / mid.len().max(1) as f64
}
