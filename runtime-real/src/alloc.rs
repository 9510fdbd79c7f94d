//! The broker's global allocator: the system allocator, except that very large requests are
//! served by `mmap(MAP_NORESERVE)`.
//!
//! Why: the Kafka codec (`kafka-protocol` 0.18) pre-sizes a `Vec` from an array length read off
//! the wire before decoding a single element. A few bytes from a client can ask for hundreds of
//! gigabytes; the system allocator refuses and Rust aborts the process. Reserved-but-untouched
//! address space costs nothing, the decode then fails on the missing bytes, and the request
//! gets a clean error. Allocations this large never happen on a legitimate path (frames are
//! bounded by `socket.request.max.bytes`), so the normal path is untouched.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this many bytes are mapped lazily instead of allocated.
const LAZY_BYTES_MIN: usize = 1 << 30;

pub struct BrokerAlloc;

// SAFETY: every path either delegates to `System` with the same layout, or maps/unmaps a
// private anonymous region of exactly `layout.size()` bytes, page-aligned (which satisfies any
// alignment a Rust layout below the page size asks for; larger alignments go to `System`).
unsafe impl GlobalAlloc for BrokerAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LAZY_BYTES_MIN && layout.align() <= 4096 {
            // SAFETY: an anonymous private mapping with no address hint.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    layout.size(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            return if p == libc::MAP_FAILED { std::ptr::null_mut() } else { p.cast() };
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= LAZY_BYTES_MIN && layout.align() <= 4096 {
            // SAFETY: `ptr` came from the mmap above with this exact size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: `ptr` came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LAZY_BYTES_MIN && layout.align() <= 4096 {
            // SAFETY: fresh anonymous mappings are zero-filled.
            return unsafe { self.alloc(layout) };
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let lazy = |s: usize| s >= LAZY_BYTES_MIN && layout.align() <= 4096;
        if !lazy(layout.size()) && !lazy(new_size) {
            // SAFETY: both sides are System allocations.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the new layout is valid (same alignment, size checked by the caller).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: allocate, copy the smaller size, free the old block.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
