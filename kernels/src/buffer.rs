//! Weight buffers on 2 MiB pages where the OS allows: a decode step streams every weight byte,
//! and with 4 KiB pages the TLB misses of that stream cost measurable bandwidth (`inferneo
//! roofline` prints both). Linux with transparent huge pages in `madvise` mode (the common
//! default) gives them only to regions that ask, so large buffers are 2 MiB aligned and asked.
//!
//! On Linux a large buffer is its own anonymous mapping, exactly its length (rounded to the 4 KiB
//! page) from a 2 MiB boundary: every whole 2 MiB of it can be a huge page, and its last partial
//! 2 MiB stays on 4 KiB pages, because the kernel only puts a huge page where the mapping covers
//! all of it. A buffer from the allocator rounded up to whole huge pages instead made the tails
//! resident: a 2.25 MiB matrix took 4 MiB, and GPT-2 124M's 49 matrices held 60 MiB of padding.
//! A mapping also goes back to the OS the moment the buffer drops, whatever the allocator's
//! thresholds (glibc serves requests under its dynamic mmap threshold from a heap it keeps).

use half::{bf16, f16};
use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
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
    memory: Memory,
}

/// Where a [`HugeBuf`]'s bytes come from, and so how they are returned.
#[derive(Clone, Copy, Debug)]
enum Memory {
    /// The global allocator, with this layout.
    Heap(Layout),
    /// An anonymous mapping of this many bytes starting at the buffer (Linux, large buffers).
    Mapped(usize),
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
    /// `len` zeros, every page touched (resident from the start, so the first products or
    /// attention steps do not pay the page faults). Fails, allocating nothing, when `len`
    /// elements overflow the address space or the memory cannot be had.
    pub fn zeroed(len: usize) -> Result<HugeBuf<T>, AllocError> {
        let overflow = AllocError::Overflow { len, size: size_of::<T>() };
        let bytes = len.checked_mul(size_of::<T>()).ok_or(overflow)?.max(1);
        // Fails when `bytes` rounded up to the alignment exceeds `isize::MAX`.
        let layout = Layout::from_size_align(bytes, 64.max(align_of::<T>())).map_err(|_| overflow)?;
        if bytes >= HUGE_PAGE {
            if let Some((ptr, mapped)) = map_huge(bytes, overflow)? {
                return Ok(HugeBuf { ptr: ptr as *mut T, len, memory: Memory::Mapped(mapped) });
            }
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(AllocError::OutOfMemory { bytes, align: layout.align() });
        }
        Ok(HugeBuf { ptr: ptr as *mut T, len, memory: Memory::Heap(layout) })
    }

    /// Whether the OS was asked for huge pages for this buffer.
    pub fn is_huge(&self) -> bool {
        matches!(self.memory, Memory::Mapped(_))
    }
}

/// A zeroed, touched anonymous mapping of `bytes` (rounded up to the page) starting on a 2 MiB
/// boundary and advised `MADV_HUGEPAGE`: its address and mapped length.
#[cfg(target_os = "linux")]
fn map_huge(bytes: usize, overflow: AllocError) -> Result<Option<(*mut u8, usize)>, AllocError> {
    const PAGE: usize = 4096; // Linux's base page on x86-64; a multiple of it on the others.
    let mapped = bytes.checked_next_multiple_of(PAGE).ok_or(overflow)?;
    // Over-reserve by one huge page, then cut the unaligned head and the unused tail away.
    let reserve = mapped.checked_add(HUGE_PAGE).filter(|&r| r <= isize::MAX as usize).ok_or(overflow)?;
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(AllocError::OutOfMemory { bytes: mapped, align: HUGE_PAGE });
    }
    let head = (base as usize).next_multiple_of(HUGE_PAGE) - base as usize;
    let tail = reserve - head - mapped;
    // SAFETY: head < HUGE_PAGE <= reserve, so the aligned start lies inside the reservation.
    let ptr = unsafe { (base as *mut u8).add(head) };
    // SAFETY: [base, base + head) and [ptr + mapped, ptr + mapped + tail) are the reservation's
    // two ends, outside [ptr, ptr + mapped), which stays mapped; nothing points into them.
    // Unmapping a part of our own mapping cannot fail for lack of memory in a way that matters
    // here: at worst the pages stay reserved, never touched.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap(ptr.add(mapped) as *mut libc::c_void, tail);
        }
        // Best effort: where THP is off or unsupported the buffer simply stays on 4 KiB
        // pages. MADV_HUGEPAGE changes no contents. Advised before the first touch, or the
        // pages are already 4 KiB.
        let _ = libc::madvise(ptr as *mut libc::c_void, mapped, libc::MADV_HUGEPAGE);
        // Anonymous pages read as zero already; the write makes them resident now.
        std::ptr::write_bytes(ptr, 0, mapped);
    }
    Ok(Some((ptr, mapped)))
}

/// Elsewhere large buffers come from the allocator like small ones.
#[cfg(not(target_os = "linux"))]
fn map_huge(_: usize, _: AllocError) -> Result<Option<(*mut u8, usize)>, AllocError> {
    Ok(None)
}

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
        match self.memory {
            // SAFETY: ptr came from `alloc_zeroed` (the global allocator) with exactly this
            // layout, and is freed once.
            Memory::Heap(layout) => unsafe { dealloc(self.ptr as *mut u8, layout) },
            #[cfg(target_os = "linux")]
            // SAFETY: [ptr, ptr + mapped) is the mapping `map_huge` made for this buffer alone;
            // it is unmapped once, and no reference into it outlives `self`.
            Memory::Mapped(mapped) => unsafe {
                libc::munmap(self.ptr as *mut libc::c_void, mapped);
            },
            #[cfg(not(target_os = "linux"))]
            Memory::Mapped(_) => unreachable!("only Linux maps buffers"),
        }
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
            assert_eq!(b.is_huge(), cfg!(target_os = "linux") && len * 4 >= HUGE_PAGE);
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
