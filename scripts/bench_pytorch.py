#!/usr/bin/env python3
"""Times the reference implementations on the same shapes as `examples/bench.rs`, for ratios
measured side by side on one machine:

    pip install torch came-pytorch==0.1.3
    python3 scripts/bench_pytorch.py --shape 4096x4096 --threads 1 --steps 9
    python3 scripts/bench_pytorch.py --model gpt2-small --threads 1 --steps 3
    python3 scripts/bench_pytorch.py --device cuda --shape 8192x8192 --steps 11

Prints lines in the bench example's format, `came_pytorch_step ...` and `torch_adamw_fused_step ...`
(`..._model` for a model).
"""
import argparse
import statistics
import time

import torch
from came_pytorch import CAME


def gpt2_small():
    d, vocab, ctx = 768, 50257, 1024
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,),
                   (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def timed(opt, params, steps, sync):
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    opt.step()  # warm-up and lazy state
    sync()
    ms = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.step()
        sync()
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms), min(ms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4096x4096")
    ap.add_argument("--model", default=None, choices=[None, "gpt2-small"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = gpt2_small() if args.model else [tuple(int(d) for d in args.shape.split("x"))]
    what = f"model={args.model}" if args.model else f"shape={args.shape}"
    kind = "model" if args.model else "step"
    numel = sum(torch.Size(s).numel() for s in shapes)
    for name, make in [
        ("came_pytorch", lambda ps: CAME(ps, lr=1e-4)),
        ("torch_adamw_fused", lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True)),
    ]:
        params = [torch.nn.Parameter(torch.randn(s, device=args.device) * 0.02) for s in shapes]
        median, best = timed(make(params), params, args.steps, sync)
        extra = "" if args.model else f" melem_per_s={numel / median / 1e3:.1f}"
        print(f"{name}_{kind} {what} dtype=f32 device={args.device} threads={args.threads} median_ms={median:.3f} "
              f"min_ms={best:.3f}{extra}")
        del params


if __name__ == "__main__":
    main()
