//! The kernels' 16-bit conversions, stochastic rounding and random bits, checked on the host:
//! the section of `came.cu` between `CAME_PORTABLE_BEGIN` and `CAME_PORTABLE_END` is plain C,
//! so this test compiles it with the C compiler (`$CC`, else `cc`, the compiler Rust links
//! with) and compares it with the CPU's conversions ([`Element`]: `src/float.rs` for bf16,
//! `half` for f16; rounding is also checked against `half`) and the crate's stochastic rounding
//! and random bits, bit for bit: every bf16 and f16 value widened, a million `f32` values
//! rounded to each (every exponent, the ties, the values next to them, the subnormals and the
//! specials), stochastic rounding over values and random bits, and the random bits themselves.
//! No GPU and no NVRTC needed: what the device runs is this source, compiled by NVRTC with
//! contraction off and IEEE division (`compile.rs`).

use std::format;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::string::String;
use std::vec::Vec;

use half::{bf16, f16};

use super::compile::SOURCE;
use crate::Element;
use crate::element::random_bits;

/// What the harness runs, one per line of input: an operation and its operands.
const HARNESS: &str = r"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define CAME_FN static inline
static inline float came_from_bits(unsigned int b) { float f; memcpy(&f, &b, 4); return f; }
static inline unsigned int came_to_bits(float x) { unsigned int b; memcpy(&b, &x, 4); return b; }

@SECTION@

/* stdin: records of 16 bytes (op, a, b as little-endian u32, u32, u64); stdout: one u32 each */
int main(void) {
    unsigned char rec[16];
    while (fread(rec, 1, 16, stdin) == 16) {
        unsigned int op, a;
        unsigned long long b;
        memcpy(&op, rec, 4);
        memcpy(&a, rec + 4, 4);
        memcpy(&b, rec + 8, 8);
        unsigned int out = 0;
        switch (op) {
        case 0: out = came_to_bits(came_bf16_to_f32((unsigned short)a)); break;
        case 1: out = came_to_bits(came_f16_to_f32((unsigned short)a)); break;
        case 2: out = came_f32_to_bf16(came_from_bits(a)); break;
        case 3: out = came_f32_to_f16(came_from_bits(a)); break;
        case 4: out = came_stochastic16(came_from_bits(a), (unsigned int)b, 1); break;
        case 5: out = came_stochastic16(came_from_bits(a), (unsigned int)b, 0); break;
        case 6: out = came_random_bits(b, (unsigned long long)a); break;
        default: return 2;
        }
        fwrite(&out, 4, 1, stdout);
    }
    return 0;
}
";

/// The portable section of `came.cu`.
fn section() -> &'static str {
    let begin = SOURCE
        .find("// CAME_PORTABLE_BEGIN")
        .expect("begin marker in came.cu");
    let end = SOURCE
        .find("// CAME_PORTABLE_END")
        .expect("end marker in came.cu");
    &SOURCE[begin..end]
}

/// A fresh directory for the harness.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("came-portable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// Compiles the harness with the C compiler; the executable's path.
fn build(dir: &Path) -> PathBuf {
    let source = dir.join("harness.c");
    std::fs::write(&source, HARNESS.replace("@SECTION@", section())).expect("write the harness");
    let exe = dir.join("harness");
    let cc = std::env::var("CC").unwrap_or_else(|_| String::from("cc"));
    // IEEE single precision as the device computes it: no contraction into fused multiply-adds
    let out = Command::new(&cc)
        .args(["-std=c99", "-O2", "-ffp-contract=off", "-o"])
        .arg(&exe)
        .arg(&source)
        .arg("-lm")
        .output()
        .unwrap_or_else(|e| panic!("this test needs a C compiler ({cc}, or set CC): {e}"));
    assert!(
        out.status.success(),
        "{cc} could not compile the portable section of came.cu:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs the harness over `(op, a, b)` records.
fn run(exe: &Path, dir: &Path, records: &[(u32, u32, u64)]) -> Vec<u32> {
    let mut input = Vec::with_capacity(records.len() * 16);
    for &(op, a, b) in records {
        input.extend_from_slice(&op.to_le_bytes());
        input.extend_from_slice(&a.to_le_bytes());
        input.extend_from_slice(&b.to_le_bytes());
    }
    let path = dir.join("input.bin");
    std::fs::write(&path, &input).expect("write the input");
    let file = std::fs::File::open(&path).expect("open the input");
    let out = Command::new(exe)
        .stdin(file)
        .output()
        .expect("run the harness");
    assert!(out.status.success(), "the harness failed: {:?}", out.status);
    assert_eq!(out.stdout.len(), records.len() * 4, "one result per record");
    out.stdout
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `f32` values that exercise a rounding to 16 bits: every exponent with mantissas at and next
/// to each tie of both formats, the specials, and pseudo-random bits (with their low bits
/// cleared and set, as in `float.rs`).
fn f32_inputs() -> Vec<u32> {
    let mut v = Vec::new();
    for exp in 0..=255u32 {
        for sign in [0, 0x8000_0000u32] {
            let base = sign | exp << 23;
            // bf16 keeps 7 mantissa bits, f16 10: ties at bit 15 and bit 12
            for tie in [0x8000u32, 0x1000] {
                for m in [
                    0u32,
                    1,
                    0x7F_FFFF,
                    tie,
                    tie - 1,
                    tie + 1,
                    3 * tie,
                    3 * tie - 1,
                ] {
                    for high in [0u32, 0x1_0000, 0x2_0000, 0x7F_0000, 0x40_0000] {
                        v.push(base | ((m | high) & 0x7F_FFFF));
                    }
                }
            }
        }
    }
    let mut b = 1u32;
    for _ in 0..200_000 {
        b = b.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        v.extend([b, b & 0xFFFF_8000, b | 0x7FFF, b & 0xFFFF_F000, b | 0xFFF]);
    }
    v
}

#[test]
#[allow(clippy::cast_possible_truncation)] // the random bits are the low 32 of a u64
fn the_kernels_conversions_are_the_cpus_bit_for_bit() {
    let dir = scratch();
    let exe = build(&dir);

    // every 16-bit value widened, both formats
    let all16: Vec<(u32, u32, u64)> = (0..=u16::MAX)
        .flat_map(|h| [(0, u32::from(h), 0), (1, u32::from(h), 0)])
        .collect();
    let got = run(&exe, &dir, &all16);
    for (&(op, h, _), &bits) in all16.iter().zip(&got) {
        let h = h as u16;
        // the CPU's widening (a NaN bf16 keeps its bits, where `half` quiets it)
        let want = if op == 0 {
            bf16::from_bits(h).to_compute().to_bits()
        } else {
            f16::from_bits(h).to_compute().to_bits()
        };
        assert_eq!(
            bits, want,
            "op {op} of {h:#06x}: {bits:#010x}, the CPU {want:#010x}"
        );
    }

    // f32 values rounded to nearest, both formats
    let inputs = f32_inputs();
    let narrow: Vec<(u32, u32, u64)> = inputs
        .iter()
        .flat_map(|&x| [(2, x, 0), (3, x, 0)])
        .collect();
    let got = run(&exe, &dir, &narrow);
    for (&(op, x, _), &bits) in narrow.iter().zip(&got) {
        let f = f32::from_bits(x);
        let want = if op == 2 {
            bf16::from_compute(f).to_bits()
        } else {
            f16::from_compute(f).to_bits()
        };
        assert_eq!(bits, u32::from(want), "op {op} of {f:e} ({x:#010x})");
        // which are `half`'s
        let half = if op == 2 {
            bf16::from_f32(f).to_bits()
        } else {
            f16::from_f32(f).to_bits()
        };
        assert_eq!(want, half, "op {op} of {f:e}");
    }

    // stochastic rounding over values and random bits, and the random bits themselves
    let mut records = Vec::new();
    let mut z = 7u64;
    for (i, &x) in inputs.iter().enumerate().step_by(3) {
        z = z
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // values near 1 and near the f16 range too, where the neighbours are close to x
        let near_one = 1.0 + (f32::from_bits(x).abs() % 1.0) * 1e-2;
        for v in [x, near_one.to_bits(), (near_one * 3e4).to_bits()] {
            records.push((4, v, z >> 32));
            records.push((5, v, z & 0xFFFF_FFFF));
        }
        records.push((6, i as u32, z));
    }
    // every threshold the bits can give, for one value a quarter of a bf16 gap above 1
    for t in (0..1u64 << 24).step_by(4097) {
        records.push((4, (1.0f32 + 1.0 / 512.0).to_bits(), t << 8));
    }
    let got = run(&exe, &dir, &records);
    for (&(op, a, b), &bits) in records.iter().zip(&got) {
        let x = f32::from_bits(a);
        let want = match op {
            4 => u32::from(crate::round_stochastic::<bf16>(x, b as u32).to_bits()),
            5 => u32::from(crate::round_stochastic::<f16>(x, b as u32).to_bits()),
            _ => random_bits(b, a as usize),
        };
        assert_eq!(bits, want, "op {op} of ({a:#010x}, {b:#x})");
    }
    std::fs::remove_dir_all(&dir).ok();
}
