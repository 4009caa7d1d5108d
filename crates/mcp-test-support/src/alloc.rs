//! A global allocator that counts the bytes live, for benches and tests that measure what a
//! connection holds (`benches/benches/flood.rs`, `mcp-server`'s `tests/idle_memory.rs`).
//!
//! A binary opts in with
//! `#[global_allocator] static ALLOCATOR: Counting = Counting;` and reads [`live`]; nothing
//! is counted in a binary that does not.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the bytes live.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Bytes allocated through [`Counting`] and not yet freed (0 where it is not the global
/// allocator). Only differences between two readings mean something.
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged (so
// `System`'s guarantees are the caller's), and only adds a relaxed counter update, which
// neither allocates nor touches the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; see the impl.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; see the impl.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; see the impl.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; see the impl.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each method counts what it hands out and gives back (called directly, so that the
    /// test binary's own allocations do not mix in).
    #[test]
    fn counts_what_it_allocates_and_frees() {
        let a = Counting;
        let before = live();
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: a non-zero-size layout; each pointer is freed once, with the layout (or
        // new size) it was last allocated with; only the first byte of the zeroed block, inside it
        // and initialised, is read.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(live() - before, 100);
            let p = a.realloc(p, layout, 300);
            assert!(!p.is_null());
            assert_eq!(live() - before, 300);
            a.dealloc(p, Layout::from_size_align(300, 8).unwrap());
            let z = a.alloc_zeroed(layout);
            assert!(!z.is_null() && *z == 0);
            assert_eq!(live() - before, 100);
            a.dealloc(z, layout);
        }
        assert_eq!(live(), before);
    }
}
