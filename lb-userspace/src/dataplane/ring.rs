//! The Maglev tables (`RINGS`) and stateless VIPs' previous backends
//! (`CHAINS`), written through a shared mapping of the mmapable arrays:
//! no syscall per slot.
use super::*;

/// An array of `u64` (`RINGS`, `CHAINS`), mapped into our memory
/// (BPF_F_MMAPABLE): a table is written with plain stores rather than one
/// syscall per slot. `RINGS` elements are packed slots (`lb_common::pack_ring`).
pub(super) struct RingMmap {
    ptr: *mut u64,
    len: usize,
}

/// Bytes per RINGS element in the kernel's layout.
const RING_STRIDE: usize = 8;

// SAFETY: the mapping is owned by this struct and only written through &mut self.
unsafe impl Send for RingMmap {}

/// Maps the first `bytes` (rounded up to pages) of the mmapable array
/// `map` (named `name`) into our memory, shared with the kernel.
pub(super) fn mmap_array(map: &MapData, bytes: usize, name: &str) -> Result<*mut u8> {
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes.div_ceil(4096) * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(DataPlaneError::Io {
            what: format!("mmap of the {name} map"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(ptr as *mut u8)
}

impl RingMmap {
    pub(super) fn new(map: &MapData, entries: usize, name: &str) -> Result<Self> {
        let ptr = mmap_array(map, entries * RING_STRIDE, name)?;
        Ok(RingMmap {
            ptr: ptr as *mut u64,
            len: entries,
        })
    }

    /// Writes `slots` from element `start` on.
    pub(super) fn write(&mut self, start: usize, slots: &[u32]) -> Result<()> {
        let n = lb_common::ring_elems(slots.len() as u32) as usize;
        if start + n > self.len {
            return Err(DataPlaneError::Setup(format!(
                "ring write past the end of RINGS ({start} + {n} > {})",
                self.len
            )));
        }
        // SAFETY: in bounds (checked above); packets read only the buffer
        // that is active, and the controller writes the other one.
        for (i, e) in lb_common::pack_ring(slots).enumerate() {
            unsafe { self.ptr.add(start + i).write_volatile(e) };
        }
        Ok(())
    }

    /// Reads the packed slots of a table of `slots` slots from element `start` on.
    pub(super) fn read_slots(&self, start: usize, slots: u32) -> Result<Vec<u32>> {
        let raw = self.read(start, lb_common::ring_elems(slots) as usize)?;
        Ok((0..slots)
            .map(|i| lb_common::ring_slot(raw[lb_common::ring_elem(i) as usize], i))
            .collect())
    }

    /// Writes `value` at element `i`.
    pub(super) fn set(&mut self, i: usize, value: u64) -> Result<()> {
        self.check(i, 1)?;
        // SAFETY: in bounds.
        unsafe { self.ptr.add(i).write_volatile(value) };
        Ok(())
    }

    /// `n` elements from `start` on.
    pub(super) fn read(&self, start: usize, n: usize) -> Result<Vec<u64>> {
        self.check(start, n)?;
        // SAFETY: in bounds.
        Ok((0..n)
            .map(|i| unsafe { self.ptr.add(start + i).read_volatile() })
            .collect())
    }

    fn check(&self, start: usize, n: usize) -> Result<()> {
        if start + n > self.len {
            return Err(DataPlaneError::Setup(format!(
                "access past the end of a mapped array ({start} + {n} > {})",
                self.len
            )));
        }
        Ok(())
    }
}

impl Drop for RingMmap {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(
                self.ptr as *mut _,
                (self.len * RING_STRIDE).div_ceil(4096) * 4096,
            )
        };
    }
}
