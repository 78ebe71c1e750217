//! The programs of the balancer object: `lb_xdp` and `lb_stateless`,
//! loaded and linked for their tail calls, `lb_clock` for the clock's
//! calibration (and, in `load.rs`, `lb_flow_swap` for the census); the
//! filters that steer packets to them.
use super::*;

impl BpfDataPlane {
    /// Writes word `w` of `STATELESS_FILTER` as the VIPs make it.
    pub(super) fn write_stateless_word(&mut self, w: u32) -> Result<()> {
        let word = self.filter.stateless_word(w);
        let mut a: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::STATELESS_FILTER))
            .map_err(map_err(maps::STATELESS_FILTER))?;
        a.set(w, word, 0).map_err(map_err(maps::STATELESS_FILTER))
    }

    /// Loads `lb_xdp` and `lb_stateless` (each once) and puts both in
    /// `PROGS`, for the tail calls between them.
    pub fn load_programs(&mut self) -> Result<()> {
        for name in [progs::BALANCER, progs::STATELESS] {
            load_xdp(xdp_mut(&mut self.ebpf, name)?, name)?;
        }
        let fd = |ebpf: &Ebpf, name: &str| -> Result<aya::programs::ProgramFd> {
            let fd = xdp(ebpf, name)?
                .fd()
                .map_err(|e| DataPlaneError::Setup(format!("{name}: {e}")))?;
            fd.try_clone()
                .map_err(|e| DataPlaneError::Setup(format!("{name}: {e}")))
        };
        let (balancer, stateless) = (
            fd(&self.ebpf, progs::BALANCER)?,
            fd(&self.ebpf, progs::STATELESS)?,
        );
        let mut table: aya::maps::ProgramArray<&mut MapData> =
            aya::maps::ProgramArray::try_from(self.map_mut(maps::PROGS))
                .map_err(map_err(maps::PROGS))?;
        table
            .set(lb_common::PROG_STATELESS, &stateless, 0)
            .map_err(map_err(maps::PROGS))?;
        table
            .set(lb_common::PROG_BALANCER, &balancer, 0)
            .map_err(map_err(maps::PROGS))
    }

    /// Writes a filter change, or all of the filter after a failed write.
    pub(super) fn write_filter(&mut self, w: lb_common::FilterWrites) -> Result<()> {
        let r = if self.filter_stale {
            lb_common::write_vip_filter_all(&mut self.ebpf, &self.filter)
        } else {
            lb_common::write_vip_filter(&mut self.ebpf, w)
        };
        self.filter_stale = r.is_err();
        r.map_err(DataPlaneError::Setup)
    }
}

/// Loads `lb_clock` and measures the kernel's tick with it.
pub(super) fn data_path_clock(
    ebpf: &mut aya::Ebpf,
) -> std::result::Result<lb_common::DataPathClock, String> {
    let prog = xdp_mut(ebpf, progs::CLOCK).map_err(|e| e.to_string())?;
    load_xdp(prog, progs::CLOCK).map_err(|e| e.to_string())?;
    lb_common::calibrate_clock(prog)
}

/// XDP program `name` of the object.
/// Runs `prog` (named `name`) once through BPF_PROG_TEST_RUN on the bytes
/// of `req` (a `repr(C)` struct of plain words, no padding): its return
/// value. The flow table's helpers (`lb_flow_swap`, `lb_flow_move`) take
/// their request so.
pub(super) fn run_on<T: Copy>(prog: &Xdp, name: &str, req: &T) -> Result<u32> {
    use aya::programs::{TestRun, TestRunOptions};
    // SAFETY: `T` is plain data (see above), read as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(req as *const T as *const u8, size_of::<T>()) };
    let mut out = vec![0u8; size_of::<T>()];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(bytes),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .map_err(|e| DataPlaneError::Setup(format!("running {name}: {e}")))?;
    Ok(r.return_value)
}

pub(super) fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    ebpf.program(name)
        .ok_or_else(|| DataPlaneError::Setup(format!("{name} missing from the eBPF object")))?
        .try_into()
        .map_err(|e| DataPlaneError::Setup(format!("{name}: {e}")))
}

/// XDP program `name` of the object, to load or attach.
pub(super) fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| DataPlaneError::Setup(format!("{name} missing from the eBPF object")))?
        .try_into()
        .map_err(|e| DataPlaneError::Setup(format!("{name}: {e}")))
}

/// Loads `prog` (named `name`) unless it is loaded; a program the kernel
/// rejects comes back with the verifier's log.
pub(super) fn load_xdp(prog: &mut Xdp, name: &str) -> Result<()> {
    if prog.fd().is_ok() {
        return Ok(());
    }
    prog.load().map_err(|e| match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => DataPlaneError::Setup(format!(
            "the kernel rejected the XDP program {name}: {io_error}\n{verifier_log}"
        )),
        e => DataPlaneError::Setup(format!("loading {name}: {e}")),
    })
}
