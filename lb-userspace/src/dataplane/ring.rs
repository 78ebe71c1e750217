//! The Maglev tables written through a shared mapping of the mmapable
//! `RINGS` array: no syscall per slot.
use super::*;

/// The RINGS array, mapped into our memory (BPF_F_MMAPABLE): a table is
/// written with plain stores rather than one syscall per slot. Elements are
/// `u64`, packed slots (`lb_common::pack_ring`).
pub(super) struct RingMmap {
    ptr: *mut u64,
    len: usize,
}

/// Bytes per RINGS element in the kernel's layout.
const RING_STRIDE: usize = 8;

// SAFETY: the mapping is owned by this struct and only written through &mut self.
unsafe impl Send for RingMmap {}

impl RingMmap {
    pub(super) fn new(map: &MapData, entries: usize) -> Result<Self> {
        let fd = map.fd().as_fd().as_raw_fd();
        let bytes = entries * RING_STRIDE;
        let page = 4096;
        let len = bytes.div_ceil(page) * page;
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataPlaneError::Io {
                what: "mmap of the RINGS map".into(),
                source: std::io::Error::last_os_error(),
            });
        }
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
