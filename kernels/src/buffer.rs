//! Weight buffers on 2 MiB pages where the OS allows: a decode step streams every weight byte,
//! and with 4 KiB pages the TLB misses of that stream cost measurable bandwidth (`inferneo
//! roofline` prints both). Linux with transparent huge pages in `madvise` mode (the common
//! default) gives them only to regions that ask, so large buffers are 2 MiB aligned and asked.

use half::{bf16, f16};
use std::alloc::{alloc, alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};

const HUGE_PAGE: usize = 2 << 20;

/// Element types whose all-zero bit pattern is a valid value (zero), so a zeroed allocation is
/// an initialised buffer.
pub trait Zeroed: Copy + Send + Sync + 'static {}
impl Zeroed for f32 {}
impl Zeroed for f16 {}
impl Zeroed for bf16 {}
impl Zeroed for i8 {}
impl Zeroed for u32 {}
impl Zeroed for u8 {}

/// A fixed-length, zero-initialised slice; buffers of 2 MiB or more are 2 MiB aligned and
/// advised for huge pages.
pub struct HugeBuf<T: Zeroed> {
    ptr: *mut T,
    len: usize,
    layout: Layout,
}

// SAFETY: HugeBuf owns its allocation exclusively (like Vec<T>); T is Send + Sync.
unsafe impl<T: Zeroed> Send for HugeBuf<T> {}
// SAFETY: shared access only hands out &[T]; T is Sync.
unsafe impl<T: Zeroed> Sync for HugeBuf<T> {}

/// Why a [`HugeBuf`] could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// `len` elements of `size` bytes do not fit in the address space.
    Overflow { len: usize, size: usize },
    /// The allocator refused this many bytes.
    OutOfMemory { bytes: usize, align: usize },
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllocError::Overflow { len, size } => {
                write!(f, "{len} elements of {size} bytes overflow the address space")
            }
            AllocError::OutOfMemory { bytes, .. } => write!(f, "cannot allocate {} MiB", bytes.div_ceil(1 << 20)),
        }
    }
}

impl std::error::Error for AllocError {}

impl AllocError {
    /// Ends the process as `Vec` does on the same failures: a capacity-overflow panic, or the
    /// allocator's out-of-memory handler. For buffers whose failure the caller cannot report.
    pub fn abort(self) -> ! {
        match self {
            AllocError::Overflow { .. } => panic!("{self}"),
            AllocError::OutOfMemory { bytes, align } => {
                handle_alloc_error(Layout::from_size_align(bytes, align).expect("a layout that was tried"))
            }
        }
    }
}

impl<T: Zeroed> HugeBuf<T> {
    /// `len` zeros. Fails, allocating nothing, when `len` elements overflow the address space
    /// or the allocator refuses them.
    pub fn zeroed(len: usize) -> Result<HugeBuf<T>, AllocError> {
        let overflow = AllocError::Overflow { len, size: size_of::<T>() };
        let bytes = len.checked_mul(size_of::<T>()).ok_or(overflow)?.max(1);
        let huge = bytes >= HUGE_PAGE;
        let align = if huge { HUGE_PAGE } else { 64.max(align_of::<T>()) };
        let size = if huge { bytes.checked_next_multiple_of(HUGE_PAGE).ok_or(overflow)? } else { bytes };
        // Fails when `size` rounded up to `align` exceeds `isize::MAX`.
        let layout = Layout::from_size_align(size, align).map_err(|_| overflow)?;
        // Huge: advise before the first touch (the zero fill), or the pages are already 4 KiB.
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe {
            if huge {
                alloc(layout)
            } else {
                alloc_zeroed(layout)
            }
        };
        if ptr.is_null() {
            return Err(AllocError::OutOfMemory { bytes: size, align });
        }
        if huge {
            advise_huge(ptr, size);
            // SAFETY: ptr is valid for `size` bytes we own.
            unsafe { std::ptr::write_bytes(ptr, 0, size) };
        }
        Ok(HugeBuf { ptr: ptr as *mut T, len, layout })
    }

    /// Whether the OS was asked for huge pages for this buffer.
    pub fn is_huge(&self) -> bool {
        self.layout.align() == HUGE_PAGE
    }
}

#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut u8, size: usize) {
    // Best effort: where THP is off or unsupported the buffer simply stays on 4 KiB pages.
    // SAFETY: [ptr, ptr + size) is one live allocation we own, 2 MiB aligned; MADV_HUGEPAGE
    // changes no contents.
    let _ = unsafe { libc::madvise(ptr as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_: *mut u8, _: usize) {}

impl<T: Zeroed> Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr points to `len` zero-initialised (valid) T's that live as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: Zeroed> DerefMut for HugeBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Zeroed> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        // SAFETY: ptr came from `alloc` or `alloc_zeroed` (both the global allocator) with
        // exactly this layout, and is freed once.
        unsafe { dealloc(self.ptr as *mut u8, self.layout) }
    }
}

impl<T: Zeroed + std::fmt::Debug> std::fmt::Debug for HugeBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HugeBuf(len {}, huge {})", self.len, self.is_huge())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_aligned_and_writable() {
        for len in [0usize, 1, 1000, (4 << 20) / 4 + 3] {
            let mut b = HugeBuf::<f32>::zeroed(len).unwrap();
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&v| v == 0.0));
            b.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
            assert!(b.iter().enumerate().all(|(i, &v)| v == i as f32));
            assert_eq!(b.is_huge(), len * 4 >= HUGE_PAGE);
            if b.is_huge() {
                assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
            }
        }
        let q = HugeBuf::<i8>::zeroed(5).unwrap();
        assert_eq!(&q[..], &[0i8; 5]);
    }

    #[test]
    fn lengths_past_the_address_space_are_errors_not_small_buffers() {
        // `len * 4` wraps to a small number in unchecked arithmetic.
        let wraps = usize::MAX / 4 + 2;
        assert_eq!(HugeBuf::<f32>::zeroed(wraps).unwrap_err(), AllocError::Overflow { len: wraps, size: 4 });
        assert!(matches!(HugeBuf::<f32>::zeroed(usize::MAX).unwrap_err(), AllocError::Overflow { .. }));
        // Fits in usize but not in a Layout (over isize::MAX), or rounds past usize::MAX.
        assert!(matches!(HugeBuf::<i8>::zeroed(usize::MAX - 10).unwrap_err(), AllocError::Overflow { .. }));
    }
}
