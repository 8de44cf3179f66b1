//! A step allocates nothing of a var's size: it runs on candle's buffers. candle's AdamW, for
//! comparison, allocates several tensors of each var's size per step.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use came_candle::{Came, ParamsCame};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::{Rng, grads, tensor, var};

/// The system allocator, counting the bytes it hands out.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a side
// effect that does not touch the memory.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's, as `realloc` requires.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROWS: usize = 1024;
const COLS: usize = 512;
const VAR_BYTES: usize = ROWS * COLS * 4;

/// Bytes allocated by `f`.
fn allocated(f: impl FnOnce()) -> usize {
    let before = ALLOCATED.load(Ordering::Relaxed);
    f();
    ALLOCATED.load(Ordering::Relaxed) - before
}

// one test in this binary: the counter is global
#[test]
fn a_step_allocates_nothing_of_a_vars_size() {
    let mut rng = Rng::new(1);
    let w = var(&rng.values::<f32>(ROWS * COLS, 0.5), &[ROWS, COLS]);
    let b = var(&rng.values::<f32>(COLS, 0.5), &[COLS]);
    let g = grads(&[
        (
            &w,
            &tensor(&rng.values::<f32>(ROWS * COLS, 0.1), &[ROWS, COLS]),
        ),
        (&b, &tensor(&rng.values::<f32>(COLS, 0.1), &[COLS])),
    ]);
    let mut came = Came::new(vec![w.clone(), b.clone()], ParamsCame::default()).unwrap();
    came.step(&g).unwrap();
    let bytes = allocated(|| came.step(&g).unwrap());
    println!("CAME step: {bytes} bytes allocated for a {VAR_BYTES}-byte var");
    // the bookkeeping of two vars: a few small vectors
    assert!(bytes < 4096, "a CAME step allocated {bytes} bytes");

    let mut adamw = AdamW::new(vec![w, b], ParamsAdamW::default()).unwrap();
    adamw.step(&g).unwrap();
    let bytes = allocated(|| adamw.step(&g).unwrap());
    println!("candle AdamW step: {bytes} bytes allocated");
    assert!(
        bytes > 4 * VAR_BYTES,
        "candle's AdamW allocated {bytes} bytes"
    );
}
