#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus from the reference trajectories in tests/data/golden.

    python3 fuzz/seed_corpus.py            # writes fuzz/corpus/<target>/...

An input is the header of `src/lib.rs` (rank, four dims, eight f64 hyperparameters, the confidence switch,
the instability switch (0: the reference's), steps, state mode; little-endian, as `arbitrary` reads it) followed by f32 values: the parameters,
then each step's gradient. The `lowp` target's seeds are the reference's 16-bit runs (`lowp/`): a byte
picking the storage types (0: bf16, 1: f16), the rounding (a 0 byte: to nearest; a 1 byte and an
8-byte seed: stochastic), then the same header and the values in 16 bits. The checkpoint target's
seeds are the reference's mid-run files, behind a byte that picks the matching registered tensors
and the optimizer's parameter type.
"""
import glob
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "tests", "data", "golden")


def header(shape, config, steps):
    dims = (list(shape) + [0, 0, 0, 0])[:4]
    lr = config["lr"]
    betas = (list(config["betas"]) + [0.0])[:3]
    eps = config["eps"] if isinstance(config["eps"], list) else [config["eps"], 0.0]
    clip = config.get("clip_threshold", 1.0)
    wd = config["weight_decay"]
    return (struct.pack("<B4B", len(shape), *dims)
            + struct.pack("<8dBB", lr, *betas, *eps, clip, wd, 1, 0)
            + struct.pack("<BB", steps - 1, 0))


def floats(values):
    return struct.pack(f"<{len(values)}f", *values)


def bf16(x):
    """The bits of `x` rounded to bfloat16 (to nearest, ties to even)."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


def halves(values, dtype):
    if dtype == "float16":
        return struct.pack(f"<{len(values)}e", *values)
    return struct.pack(f"<{len(values)}H", *map(bf16, values))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    count = 0
    for path in sorted(glob.glob(os.path.join(GOLDEN, "*.json")) + glob.glob(os.path.join(GOLDEN, "adamw", "*.json"))):
        case = json.load(open(path))
        if any(d > 64 for d in case["shape"]):
            continue
        steps = min(4, case["steps"])
        data = header(case["shape"], case["config"], steps) + floats(case["param0"])
        for g in case["grads"][:steps]:
            data += floats(g)
        targets = ["adamw"] if "AdamW" in case["source"] else ["step", "multi_step"]
        for t in targets:
            write(t, case["name"], data)
            count += 1
    for path in sorted(glob.glob(os.path.join(GOLDEN, "lowp", "*.json"))):
        case = json.load(open(path))
        if any(d > 64 for d in case["shape"]):
            continue
        steps = min(4, case["steps"])
        dtype = case["dtype"]
        data = header(case["shape"], case["config"], steps) + halves(case["param0"], dtype)
        for g in case["grads"][:steps]:
            data += halves(g, dtype)
        types = bytes([1 if dtype == "float16" else 0])
        write("lowp", case["name"], types + b"\0" + data)
        write("lowp", case["name"] + "_stochastic", types + b"\1" + struct.pack("<Q", 7) + data)
        count += 2
    picks = {"came_resume_16x12": 0, "came_resume_3x4x5": 1, "came_resume_vec_20": 2}
    # the optimizer's parameter type, in bits 2-3 of the pick (the files are float32)
    types = {"": 0, "_bf16": 1 << 2, "_f16": 2 << 2, "_f64": 3 << 2}
    for name, pick in picks.items():
        blob = open(os.path.join(GOLDEN, "resume", name + ".safetensors"), "rb").read()
        for suffix, dtype in types.items():
            write("checkpoint", name + suffix, bytes([pick | dtype]) + blob)
            write("checkpoint", name + suffix + "_params", bytes([pick | dtype | 0x80]) + blob)
            count += 2
    print(f"wrote {count} seeds under {os.path.join(HERE, 'corpus')}")


if __name__ == "__main__":
    main()
