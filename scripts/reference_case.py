#!/usr/bin/env python3
"""Records a reference trajectory with the official implementations, in the format of
tests/data/golden/FORMAT.md, so `cargo run --release --example replay -- FILE` can check this
crate against runs it has never seen.

    pip install torch came-pytorch==0.1.3 numpy
    python3 scripts/reference_case.py --shape 300x257 --steps 5 --out /tmp/case.json
    python3 scripts/reference_case.py --optimizer adamw --shape 33 --dtype float64 --out /tmp/a.json

Gradients are Gaussian (seeded), with rows scaled by 1..5 and every seventh row zero when the
tensor has rows, so statistics differ from row to row.
"""
import argparse
import json

import numpy as np
import torch


def shortest(x, dtype):
    # the shortest decimal that reads back to the same value in the case's dtype
    return float(str(np.float32(x))) if dtype == torch.float32 else float(x)


def dump_numbers(values, dtype):
    if dtype == torch.float32:
        return "[" + ",".join(str(np.float32(v)) for v in values) + "]"
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizer", choices=["came", "adamw"], default="came")
    ap.add_argument("--shape", default="8x12", help="RxC, N, AxBxC..., or 'scalar'")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--betas", default=None, help="comma-separated")
    ap.add_argument("--eps", default=None, help="comma-separated (CAME: eps1,eps2)")
    ap.add_argument("--clip-threshold", type=float, default=1.0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--grad-scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    shape = [] if args.shape == "scalar" else [int(d) for d in args.shape.split("x")]
    gen = torch.Generator().manual_seed(args.seed)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    p = torch.nn.Parameter(param.clone())

    if args.optimizer == "came":
        from came_pytorch import CAME

        betas = tuple(float(b) for b in (args.betas or "0.9,0.999,0.9999").split(","))
        eps = tuple(float(e) for e in (args.eps or "1e-30,1e-16").split(","))
        opt = CAME([p], lr=args.lr, eps=eps, clip_threshold=args.clip_threshold,
                   betas=betas, weight_decay=args.weight_decay)
        config = {"lr": args.lr, "eps": list(eps), "clip_threshold": args.clip_threshold,
                  "betas": list(betas), "weight_decay": args.weight_decay}
        source = "came-pytorch 0.1.3 (official CAME implementation), torch %s CPU" % torch.__version__
    else:
        betas = tuple(float(b) for b in (args.betas or "0.9,0.999").split(","))
        eps = float(args.eps or 1e-8)
        opt = torch.optim.AdamW([p], lr=args.lr, betas=betas, eps=eps,
                                weight_decay=args.weight_decay, foreach=False)
        config = {"lr": args.lr, "betas": list(betas), "eps": eps,
                  "weight_decay": args.weight_decay, "bias_correction": True}
        source = "torch.optim.AdamW (foreach=False), torch %s CPU" % torch.__version__

    grads, params = [], []
    for _ in range(args.steps):
        g = torch.randn(shape, generator=gen, dtype=torch.float64) * args.grad_scale
        if len(shape) >= 2:
            rows = torch.arange(shape[-2], dtype=torch.float64)
            scale = (1 + rows % 5) * (rows % 7 != 3)
            g = g * scale.unsqueeze(-1)
        g = g.to(dtype)
        p.grad = g.clone()
        opt.step()
        grads.append(g.flatten().tolist())
        params.append(p.detach().flatten().tolist())

    # "step" is a count and came-pytorch's "RMS" is the parameters' RMS, not optimizer state
    state = {k: v for k, v in opt.state[p].items() if torch.is_tensor(v) and k not in ("step", "RMS")}
    name = args.name or "%s_%s_%s" % (args.optimizer, args.dtype, args.shape)
    parts = [
        '"name":%s' % json.dumps(name),
        '"source":%s' % json.dumps(source),
        '"dtype":"%s"' % args.dtype,
        '"shape":%s' % json.dumps(shape),
        '"grad_kind":"generated"',
        '"config":%s' % json.dumps(config),
        '"steps":%d' % args.steps,
        '"param0":%s' % dump_numbers(param.flatten().tolist(), dtype),
        '"grads":[%s]' % ",".join(dump_numbers(g, dtype) for g in grads),
        '"params":[%s]' % ",".join(dump_numbers(q, dtype) for q in params),
        '"state":{%s}' % ",".join('"%s":%s' % (k, dump_numbers(v.flatten().tolist(), dtype))
                                   for k, v in state.items()),
        '"state_shapes":%s' % json.dumps({k: list(v.shape) for k, v in state.items()}),
    ]
    with open(args.out, "w") as f:
        f.write("{" + ",".join(parts) + "}\n")


if __name__ == "__main__":
    main()
