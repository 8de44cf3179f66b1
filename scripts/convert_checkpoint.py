#!/usr/bin/env python3
"""Moves a CAME run between PyTorch (came-pytorch 0.1.3) and this crate.

    pip install torch safetensors came-pytorch==0.1.3

    # PyTorch -> Rust: a state_dict saved with torch.save(optimizer.state_dict(), "opt.pt"),
    # optionally the parameters in optimizer order, torch.save([p.detach() for p in ps], "p.pt")
    python3 scripts/convert_checkpoint.py to-safetensors opt.pt came.safetensors --params p.pt
    #   then in Rust: came.load("came.safetensors") (or load_with_params)

    # Rust -> PyTorch: came.save("came.safetensors") (or save_with_params), then
    python3 scripts/convert_checkpoint.py to-pytorch came.safetensors opt.pt --params-out p.pt
    #   then load_state_dict(optimizer, torch.load("opt.pt")), this file's function
    #   (sys.path.insert(0, "scripts"); from convert_checkpoint import load_state_dict); for
    #   float32 and float64 weights optimizer.load_state_dict(torch.load("opt.pt")) does the same

    # A worked round trip, checked both ways (see the README):
    python3 scripts/convert_checkpoint.py demo DIR
    cargo run --release --features std --example replay -- --out DIR/out DIR/demo.json
    python3 scripts/convert_checkpoint.py check DIR

The file layout is the crate's checkpoint layout: tensors `state.<i>.<key>` and `param.<i>`,
metadata `optimizer`, `config`, `step.<i>`, `shape.<i>`, and with several parameter groups
`groups` and `group.<i>`. Parameters are numbered in optimizer order (group by group).

Weights in bfloat16 or float16 (`Came::<half::bf16>`, `Came::<half::f16>` in Rust) keep their
dtype (safetensors BF16, F16) both ways; their state is float32, as came-pytorch keeps it (it
steps 16-bit weights in float32). PyTorch's `Optimizer.load_state_dict` casts a state to its
parameter's dtype, which would round that state to 16 bits: `load_state_dict` below loads it
without the cast.
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CONFIG_KEYS = ("lr", "eps", "clip_threshold", "betas", "weight_decay")
STATE_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col",
              "exp_avg_res_row", "exp_avg_res_col")
SIXTEEN_BIT = (torch.bfloat16, torch.float16)


def state_dtype(dtype):
    """The dtype came-pytorch keeps the state of `dtype` parameters in (it steps 16-bit ones in
    float32)."""
    return torch.float32 if dtype in SIXTEEN_BIT else dtype


def as_state(value):
    """A state tensor as came-pytorch keeps it: 16-bit values (a state PyTorch's load_state_dict
    rounded, the crate's bf16 momentum) widened to float32."""
    return value.detach().to(state_dtype(value.dtype)).contiguous()


def group_config(group):
    return {k: (list(group[k]) if isinstance(group[k], (list, tuple)) else group[k])
            for k in CONFIG_KEYS}


def to_safetensors(state_dict, params=None):
    """came-pytorch state_dict (and parameters in optimizer order) -> (tensors, metadata)."""
    groups = state_dict["param_groups"]
    order = [(g, pid) for g, group in enumerate(groups) for pid in group["params"]]
    if params is not None and len(params) != len(order):
        sys.exit(f"{len(params)} parameters for {len(order)} optimizer parameters")
    meta = {"optimizer": "came", "source": "came-pytorch state_dict",
            "config": json.dumps(group_config(groups[0]))}
    if len(groups) > 1:
        meta["groups"] = json.dumps([group_config(g) for g in groups])
    tensors = {}
    for i, (g, pid) in enumerate(order):
        st = state_dict["state"].get(pid)
        if st is None:  # never stepped: a fresh state, shaped like the parameter
            if params is None:
                sys.exit(f"parameter {i} has no state yet: pass --params to give its shape")
            shape = list(params[i].shape)
            st = fresh_state(params[i])
        else:
            shape = list(st["exp_avg"].shape)
        meta[f"step.{i}"] = str(int(st["step"]))
        meta[f"shape.{i}"] = json.dumps(shape)
        if len(groups) > 1:
            meta[f"group.{i}"] = str(g)
        for key in STATE_KEYS:
            if key in st:
                tensors[f"state.{i}.{key}"] = as_state(st[key])
        if params is not None:
            tensors[f"param.{i}"] = params[i].detach().contiguous()
    return tensors, meta


def fresh_state(p):
    dtype = state_dtype(p.dtype)
    st = {"step": 0, "exp_avg": torch.zeros(p.shape, dtype=dtype)}
    if p.dim() >= 2:
        st["exp_avg_sq_row"] = torch.zeros(p.shape[:-1], dtype=dtype)
        st["exp_avg_sq_col"] = torch.zeros(p.shape[:-2] + p.shape[-1:], dtype=dtype)
        st["exp_avg_res_row"] = torch.zeros(p.shape[:-1], dtype=dtype)
        st["exp_avg_res_col"] = torch.zeros(p.shape[:-2] + p.shape[-1:], dtype=dtype)
    else:
        st["exp_avg_sq"] = torch.zeros(p.shape, dtype=dtype)
    return st


def to_pytorch(path):
    """A .safetensors checkpoint -> (came-pytorch state_dict, parameters or None)."""
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        if meta.get("optimizer") != "came":
            sys.exit(f"{path}: not a CAME checkpoint (optimizer={meta.get('optimizer')!r})")
        keys = set(f.keys())
        n = sum(1 for k in meta if k.startswith("step."))
        configs = json.loads(meta["groups"]) if "groups" in meta else [json.loads(meta["config"])]
        state, params = {}, []
        for i in range(n):
            st = {"step": int(meta[f"step.{i}"])}
            for key in STATE_KEYS:
                if f"state.{i}.{key}" in keys:
                    value = f.get_tensor(f"state.{i}.{key}")
                    if not value.is_floating_point():
                        sys.exit(f"{path}: state.{i}.{key} is {value.dtype} (8-bit momentum), "
                                 "which came-pytorch has no form of")
                    st[key] = as_state(value)
            p = f.get_tensor(f"param.{i}") if f"param.{i}" in keys else None
            params.append(p)
            # came-pytorch keeps the parameters' RMS in its state (it recomputes it each step)
            st["RMS"] = (p.norm(2) / math.sqrt(p.numel())) if p is not None else torch.tensor(0.0)
            state[i] = st
        members = [[] for _ in configs]
        for i in range(n):
            members[int(meta.get(f"group.{i}", "0"))].append(i)
    groups = []
    for config, ids in zip(configs, members):
        g = dict(config)
        g["eps"], g["betas"] = tuple(g["eps"]), tuple(g["betas"])
        g["params"] = ids
        groups.append(g)
    return {"state": state, "param_groups": groups}, (params if all(p is not None for p in params) else None)


def load_state_dict(optimizer, state_dict):
    """optimizer.load_state_dict(state_dict), each state tensor in the dtype it has in
    `state_dict`: PyTorch would cast it to its parameter's dtype (float32 state of bfloat16 or
    float16 weights to 16 bits)."""
    optimizer.load_state_dict(state_dict)
    saved = [pid for group in state_dict["param_groups"] for pid in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for pid, p in zip(saved, params):
        for key, value in state_dict["state"].get(pid, {}).items():
            if torch.is_tensor(value) and value.is_floating_point():
                optimizer.state[p][key] = value.to(device=p.device, copy=True)


def demo(out_dir, steps=10, resume_after=4):
    """Records a came-pytorch run and its mid-run checkpoint, converted for the crate."""
    from came_pytorch import CAME

    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    w = torch.nn.Parameter(torch.randn(16, 12, generator=gen))
    opt = CAME([w], lr=1e-3, weight_decay=0.02)
    param0 = w.detach().flatten().tolist()
    grads, params = [], []
    for t in range(steps):
        g = torch.randn(16, 12, generator=gen)
        w.grad = g.clone()
        opt.step()
        grads.append(g.flatten().tolist())
        params.append(w.detach().flatten().tolist())
        if t + 1 == resume_after:
            tensors, meta = to_safetensors(opt.state_dict(), [w.detach().clone()])
            save_file(tensors, os.path.join(out_dir, "demo.safetensors"), metadata=meta)
    torch.save(opt.state_dict(), os.path.join(out_dir, "demo_final_state.pt"))
    case = {"name": "demo", "source": "came-pytorch 0.1.3 (official CAME implementation)",
            "dtype": "float32", "shape": [16, 12], "grad_kind": "plain",
            "config": json.loads(json.dumps(group_config(opt.param_groups[0]))),
            "resume_after_step": resume_after, "steps": steps, "param0": param0,
            "grads": grads, "params": params}
    with open(os.path.join(out_dir, "demo.json"), "w") as f:
        json.dump(case, f)
    print(f"wrote {out_dir}/demo.json, demo.safetensors (state after step {resume_after}) "
          f"and demo_final_state.pt (after step {steps})")


def check(out_dir):
    """Loads the crate's final checkpoint into came-pytorch and compares it with PyTorch's."""
    from came_pytorch import CAME

    sd, params = to_pytorch(os.path.join(out_dir, "out", "demo.safetensors"))
    ref = torch.load(os.path.join(out_dir, "demo_final_state.pt"))
    w = torch.nn.Parameter(params[0].clone())
    opt = CAME([w], lr=1e-3, weight_decay=0.02)
    load_state_dict(opt, sd)
    worst = 0.0
    for key, value in ref["state"][0].items():
        if key in ("step", "RMS"):
            continue
        mine = opt.state[w][key]
        bound = 5e-6 + 1e-5 * value.abs().max().item()
        worst = max(worst, ((mine - value).abs().max() / bound).item())
    assert opt.state[w]["step"] == ref["state"][0]["step"], "step counts differ"
    print(f"came-pytorch loaded the crate's checkpoint: step {opt.state[w]['step']}, "
          f"worst state error {worst:.4f} of the FORMAT.md tolerance "
          f"({'ok' if worst <= 1 else 'FAIL'})")
    # and the run goes on in PyTorch from the crate's state
    w.grad = torch.ones_like(w) * 0.01
    opt.step()
    if worst > 1 or not torch.isfinite(w).all():
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-safetensors")
    a.add_argument("state_dict")
    a.add_argument("out")
    a.add_argument("--params")
    b = sub.add_parser("to-pytorch")
    b.add_argument("checkpoint")
    b.add_argument("out")
    b.add_argument("--params-out")
    c = sub.add_parser("demo")
    c.add_argument("dir")
    d = sub.add_parser("check")
    d.add_argument("dir")
    args = ap.parse_args()
    if args.cmd == "to-safetensors":
        params = torch.load(args.params) if args.params else None
        tensors, meta = to_safetensors(torch.load(args.state_dict), params)
        save_file(tensors, args.out, metadata=meta)
    elif args.cmd == "to-pytorch":
        sd, params = to_pytorch(args.checkpoint)
        torch.save(sd, args.out)
        if args.params_out:
            if params is None:
                sys.exit("the checkpoint holds no parameters")
            torch.save(params, args.params_out)
    elif args.cmd == "demo":
        demo(args.dir)
    else:
        check(args.dir)


if __name__ == "__main__":
    main()
