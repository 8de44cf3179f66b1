//! Memory budgets for on-device fine-tuning: for RAM budgets of 64 KiB, 256 KiB and 1 MiB, the
//! largest square weight matrix `n x n` whose weights, gradient and optimizer state fit, with
//! CAME in each storage against AdamW and SGD with momentum. The optimizer state lengths come
//! from the crate's own functions (`Shape::state_len`, `adamw::state_len`), workspace
//! included: what a firmware must reserve.
//!
//! ```text
//! cargo run --example budgets
//! ```
//!
//! Prints a Markdown table (the README's, "On devices").

use came::{Momentum, Shape};

/// Bytes a storage needs for an `n x n` matrix, or `None` when the shape is refused.
struct Storage {
    name: &'static str,
    bytes: fn(usize) -> Option<usize>,
}

/// CAME's state of an `n x n` matrix with `momentum`, in bytes (words of `f32`).
fn came_state(n: usize, momentum: Momentum) -> Option<usize> {
    let shape = Shape::new(&[n, n]).ok()?.with_momentum(momentum).ok()?;
    Some(shape.state_len() * 4)
}

const STORAGES: [Storage; 5] = [
    Storage {
        name: "CAME, f32 weights, f32 momentum",
        bytes: |n| Some(8 * n * n + came_state(n, Momentum::Full)?),
    },
    Storage {
        name: "CAME, bf16 weights, bf16 momentum",
        bytes: |n| Some(4 * n * n + came_state(n, Momentum::Bf16)?),
    },
    Storage {
        name: "CAME, bf16 weights, 8-bit momentum",
        bytes: |n| Some(4 * n * n + came_state(n, Momentum::INT8)?),
    },
    Storage {
        name: "AdamW, f32",
        bytes: |n| Some(8 * n * n + 4 * came::adamw::state_len(&[n, n])),
    },
    Storage {
        name: "SGD with momentum, f32",
        bytes: |n| Some(12 * n * n),
    },
];

const BUDGETS: [(usize, &str); 3] = [
    (64 << 10, "64 KiB"),
    (256 << 10, "256 KiB"),
    (1 << 20, "1 MiB"),
];

/// The largest `n` whose `n x n` matrix fits in `budget` bytes. A scan, not a bisection: the
/// bytes do not always grow with `n` (at `n = 64` the 8-bit rule starts to apply).
fn largest(storage: &Storage, budget: usize) -> usize {
    (1..=budget.isqrt())
        .filter(|&n| (storage.bytes)(n).is_some_and(|b| b <= budget))
        .max()
        .unwrap_or(0)
}

fn main() {
    print!("| weights, gradient and optimizer state in |");
    for (_, name) in BUDGETS {
        print!(" {name} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(BUDGETS.len()));
    for storage in &STORAGES {
        print!("| {} |", storage.name);
        for (budget, _) in BUDGETS {
            let n = largest(storage, budget);
            let bytes = (storage.bytes)(n).unwrap_or(0);
            print!(" {n} x {n} ({} params, {bytes} B) |", n * n);
        }
        println!();
    }
}
