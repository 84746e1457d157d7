//! The module's counting allocator: every module counts exactly its own heap.
//!
//! [`export_module!`](crate::export_module) installs [`CountingAllocator`] as the module
//! library's `#[global_allocator]`. Each cdylib has its own allocator, so the counters in
//! [`HEAP`] (one copy per loaded library) see that module's allocations and nothing else. The
//! counters' type is part of the ABI ([`HeapCounters`] in `abi.rs`); this file only fills them.
//! Counting is sharded over 16 cache-line-sized slots chosen per thread, which measured
//! 8–9 ns per allocation and free against 59–71 ns for one shared atomic (see DESIGN.md).
//!
//! With the crate feature `bench-no-heap-accounting` (off by default) the allocator forwards to
//! the system allocator without counting and [`HEAP`] stays at zero. It exists only so that
//! `cargo xtask bench` can measure what counting costs; never ship a module built with it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::atomic::{AtomicU8, Ordering::Relaxed},
};

use crate::abi::{HEAP_SHARDS, HeapCounters};

/// Whether allocations are counted: always, except in the benchmark build that measures what
/// counting costs (feature `bench-no-heap-accounting`).
const COUNTING: bool = !cfg!(feature = "bench-no-heap-accounting");

/// This library's heap counters (each loaded module library has its own copy of this static).
pub static HEAP: HeapCounters = HeapCounters::new();

/// The allocator [`export_module!`](crate::export_module) installs: the system allocator plus
/// counting into [`HEAP`] (no counting with the `bench-no-heap-accounting` feature).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only adds
// relaxed counter updates, so `System`'s guarantees carry over.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if COUNTING && !ptr.is_null() {
            HEAP.record_alloc(shard_index(), layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if COUNTING && !ptr.is_null() {
            HEAP.record_alloc(shard_index(), layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        if COUNTING {
            HEAP.record_free(shard_index(), layout.size());
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if COUNTING && !new.is_null() {
            HEAP.record_free(shard_index(), layout.size());
            HEAP.record_alloc(shard_index(), new_size);
        }
        new
    }
}

/// Picks this thread's shard. The thread-local is `const`-initialised and has no destructor, so
/// touching it never registers a thread-exit hook that would keep the library mapped.
fn shard_index() -> usize {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    thread_local! {
        static INDEX: Cell<u8> = const { Cell::new(u8::MAX) };
    }
    INDEX
        .try_with(|index| {
            let mut i = index.get();
            if i == u8::MAX {
                i = NEXT.fetch_add(1, Relaxed) % HEAP_SHARDS as u8;
                index.set(i);
            }
            i as usize
        })
        .unwrap_or(0)
}
