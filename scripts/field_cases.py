#!/usr/bin/env python3
"""Writes the field-report cases of tests/data/field with the official implementation.

    pip install torch safetensors came-pytorch==0.1.3 numpy
    python3 scripts/field_cases.py
    python3 scripts/field_cases.py --back /tmp/came-empty-tensors.safetensors


- came_float32_10000x1.json: a 10000 x 1 tensor, 3 steps at lr 1e-2 (scripts/reference_case.py),
  where a plain f32 sum down the column used to miss the tolerance 2.7x;
- came_pytorch_empty_tensors.safetensors: one came-pytorch step of parameters with no elements
  ([0, 8], [8, 0], [2, 0, 4], [0, 3, 4], [0]) beside a scalar and a [3, 4] matrix (lr 1e-4,
  gradients 0.1), converted with scripts/convert_checkpoint.py. came-pytorch stores NaN for
  the statistics over an empty dim.

--back FILE goes the other way: converts a checkpoint the crate wrote for those shapes (the test
`checkpoint::pytorch_checkpoints_with_empty_tensors_load_and_step` writes one to the temporary
directory) to PyTorch, loads it into came-pytorch and takes a step there.
"""
import os
import subprocess
import sys

import torch
from came_pytorch import CAME

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "field")


def back(path):
    tmp = path + ".pt.d"
    os.makedirs(tmp, exist_ok=True)
    opt_pt, p_pt = os.path.join(tmp, "opt.pt"), os.path.join(tmp, "p.pt")
    subprocess.run([sys.executable, os.path.join(HERE, "convert_checkpoint.py"), "to-pytorch",
                    path, opt_pt, "--params-out", p_pt], check=True)
    params = [p.clone().requires_grad_(True) for p in torch.load(p_pt)]
    opt = CAME(params, lr=1e-4)
    opt.load_state_dict(torch.load(opt_pt))
    for p in params:
        p.grad = torch.full_like(p, 0.1)
    opt.step()
    steps = [opt.state[p]["step"] for p in params]
    print("shapes", [tuple(p.shape) for p in params], "steps after one more", steps)
    for f in (opt_pt, p_pt):
        os.remove(f)
    os.rmdir(tmp)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--back":
        return back(sys.argv[2])
    os.makedirs(OUT, exist_ok=True)
    subprocess.run([sys.executable, os.path.join(HERE, "reference_case.py"), "--shape", "10000x1",
                    "--steps", "3", "--lr", "1e-2",
                    "--out", os.path.join(OUT, "came_float32_10000x1.json")], check=True)
    shapes = [(0, 8), (8, 0), (), (2, 0, 4), (0,), (3, 4), (0, 3, 4)]
    params = [torch.full(s, 0.5).requires_grad_(True) for s in shapes]
    opt = CAME(params, lr=1e-4)
    for p in params:
        p.grad = torch.full_like(p, 0.1)
    opt.step()
    tmp = os.path.join(OUT, "tmp")
    os.makedirs(tmp, exist_ok=True)
    torch.save(opt.state_dict(), os.path.join(tmp, "opt.pt"))
    torch.save([p.detach() for p in params], os.path.join(tmp, "p.pt"))
    subprocess.run([sys.executable, os.path.join(HERE, "convert_checkpoint.py"), "to-safetensors",
                    os.path.join(tmp, "opt.pt"),
                    os.path.join(OUT, "came_pytorch_empty_tensors.safetensors"),
                    "--params", os.path.join(tmp, "p.pt")], check=True)
    for f in ("opt.pt", "p.pt"):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)
    print("scalar after one step:", params[2].item())


if __name__ == "__main__":
    main()
