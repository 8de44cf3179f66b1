//! A step allocates nothing: every step below runs under a global allocator that counts the
//! allocations made on the calling thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use came::adamw::{self, AdamWConfig, AdamWState};
use came::{CameConfig, CameState, Shape};

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread. Not inlined: LLVM assumes an allocation call leaves
/// the caller's memory alone, so inlined it could move the counter's reads across allocations
/// made before `f`.
#[inline(never)]
fn allocations_during(f: &mut dyn FnMut()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn steps_do_not_allocate() {
    // one lane and several; matrix, batch (3x3 kernels: the vector kernel of a convolution,
    // whole groups and a partial one), vector, scalar; clipped and not; with weight decay
    let shapes: [&[usize]; 9] = [
        &[4, 5],
        &[300, 257],
        &[2, 3, 4],
        &[40, 64, 33],
        &[13, 7, 3, 3],
        &[7],
        &[200_003],
        &[],
        &[0, 3],
    ];
    let configs = [
        CameConfig::new(1e-3),
        CameConfig::new(1e-3)
            .with_clip_threshold(1e-3)
            .with_weight_decay(0.1),
    ];
    for dims in shapes {
        let shape = Shape::new(dims).unwrap();
        let n = shape.numel();
        let mut p = vec![0.5f32; n];
        let g: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
        let mut buf = vec![0.0f32; shape.state_len()];
        let mut adam_buf = vec![0.0f32; adamw::state_len(dims)];
        let mut state = CameState::new(&mut buf);
        let mut adam = AdamWState::new(&mut adam_buf);
        for config in &configs {
            let count = allocations_during(&mut || {
                for _ in 0..3 {
                    came::step(config, &shape, &mut p, &g, &mut state).unwrap();
                    adamw::step(&AdamWConfig::default(), &mut p, &g, &mut adam).unwrap();
                }
            });
            assert_eq!(count, 0, "{dims:?} allocated");
        }
    }
    // 16-bit parameters and gradients, rounded to nearest and stochastically
    for dims in shapes {
        let shape = Shape::new(dims).unwrap();
        let n = shape.numel();
        let mut p = vec![half::bf16::from_f32(0.5); n];
        let g: Vec<half::f16> = (0..n)
            .map(|i| half::f16::from_f32((i as f32).sin()))
            .collect();
        let mut h = vec![half::f16::from_f32(0.5); n];
        let mut buf = vec![0.0f32; shape.state_len()];
        let mut state = CameState::new(&mut buf);
        let gb: Vec<half::bf16> = g.iter().map(|x| half::bf16::from_f32(x.to_f32())).collect();
        let stochastic = came::Rounding::Stochastic { seed: 1 };
        for config in configs
            .iter()
            .map(|c| c.with_rounding(stochastic))
            .chain(configs)
        {
            let count = allocations_during(&mut || {
                came::step(&config, &shape, &mut p, &gb, &mut state).unwrap();
                came::step(&config, &shape, &mut h, &g, &mut state).unwrap();
            });
            assert_eq!(count, 0, "{dims:?} in 16 bits allocated");
        }
    }
    // momentum in bf16 and in 8 bits, with 16-bit parameters too
    for dims in [&[300, 257][..], &[40, 64, 33], &[3, 64, 100]] {
        for momentum in [
            came::Momentum::Bf16,
            came::Momentum::INT8,
            came::Momentum::Int8 {
                code: came::Code8::MinMax,
                block: 32,
            },
        ] {
            let shape = Shape::new(dims).unwrap().with_momentum(momentum).unwrap();
            let n = shape.numel();
            let mut p = vec![half::bf16::from_f32(0.5); n];
            let g: Vec<half::bf16> = (0..n)
                .map(|i| half::bf16::from_f32((i as f32).sin()))
                .collect();
            let mut buf = vec![0.0f32; shape.state_len()];
            let mut state = CameState::new(&mut buf);
            let config = CameConfig::new(1e-3).with_weight_decay(0.1);
            let count = allocations_during(&mut || {
                for _ in 0..2 {
                    came::step(&config, &shape, &mut p, &g, &mut state).unwrap();
                }
            });
            assert_eq!(count, 0, "{dims:?} with {momentum:?} allocated");
        }
    }
    // the owned optimizer steps without allocating too
    #[cfg(feature = "std")]
    {
        use came::Optimizer as _;

        let mut opt = came::Came::<f32>::new(CameConfig::new(1e-3)).unwrap();
        opt.register("w", &[300, 257]).unwrap();
        opt.register("b", &[257]).unwrap();
        let (mut w, mut b) = (vec![0.5f32; 300 * 257], vec![0.0f32; 257]);
        let (gw, gb) = (vec![0.1f32; 300 * 257], vec![0.2f32; 257]);
        let mut pairs: [(&mut [f32], &[f32]); 2] = [(&mut w, &gw), (&mut b, &gb)];
        opt.step(&mut pairs).unwrap();
        let count = allocations_during(&mut || {
            opt.step(&mut pairs).unwrap();
        });
        assert_eq!(count, 0, "the owned optimizer allocated");
        // and leaving a tensor out allocates nothing either
        let mut some: [(&mut [f32], Option<&[f32]>); 2] = [(&mut w, Some(&gw)), (&mut b, None)];
        let count = allocations_during(&mut || {
            opt.step_some(&mut some).unwrap();
        });
        assert_eq!(count, 0, "a step of some tensors allocated");
        // with bf16 weights and stochastic rounding too
        let config = CameConfig::new(1e-3).with_rounding(came::Rounding::Stochastic { seed: 2 });
        let mut opt = came::Came::<half::bf16>::new(config).unwrap();
        opt.register("w", &[300, 257]).unwrap();
        let mut w = vec![half::bf16::from_f32(0.5); 300 * 257];
        let gw = vec![half::bf16::from_f32(0.1); 300 * 257];
        opt.step(&mut [(&mut w, &gw)]).unwrap();
        let count = allocations_during(&mut || {
            opt.step(&mut [(&mut w, &gw)]).unwrap();
        });
        assert_eq!(count, 0, "the owned bf16 optimizer allocated");
    }
    // the counter does count
    assert_eq!(
        allocations_during(&mut || drop(std::hint::black_box(vec![1u8; 3]))),
        1
    );
}
