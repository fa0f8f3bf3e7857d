"""kernels_ref.py - PyTorch / NumPy references for minigpt's elementwise ops (run by
tests/test_kernels.c).

    kernels_ref.py ops IN.f32 W.f32 B.f32 OUTDIR
        IN holds rows of length 384 (float32); writes rmsnorm.f32 (HF LlamaRMSNorm, eps 1e-6),
        layernorm.f32 (torch.nn.functional.layer_norm, eps 1e-5), softmax.f32, silu.f32,
        gelu.f32 (exact erf form), each of IN's shape.
    kernels_ref.py rope IN.f32 OUTDIR HEAD_DIM THETA POS...
        IN holds one head vector per position; rotate-half RoPE in float64 (NumPy) -> rope.f32
"""
import os
import sys

import numpy as np


def ops(argv):
    import torch

    x = torch.from_numpy(np.fromfile(argv[2], dtype=np.float32).reshape(-1, 384))
    w = torch.from_numpy(np.fromfile(argv[3], dtype=np.float32))
    b = torch.from_numpy(np.fromfile(argv[4], dtype=np.float32))
    out = argv[5]
    var = x.pow(2).mean(-1, keepdim=True)
    rms = w * (x * torch.rsqrt(var + 1e-6))
    res = {
        "rmsnorm": rms,
        "layernorm": torch.nn.functional.layer_norm(x, (384,), w, b, 1e-5),
        "softmax": torch.softmax(x * 8.0, dim=-1),
        "silu": torch.nn.functional.silu(x * 8.0),
        "gelu": torch.nn.functional.gelu(x * 8.0),
    }
    for k, v in res.items():
        v.numpy().astype(np.float32).tofile(os.path.join(out, k + ".f32"))


def rope(argv):
    out = argv[3]
    hd = int(argv[4])
    theta = float(argv[5])
    pos = [int(p) for p in argv[6:]]
    x = np.fromfile(argv[2], dtype=np.float32).astype(np.float64).reshape(len(pos), hd)
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.array(pos, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([ang, ang], axis=1)
    rot = np.concatenate([-x[:, hd // 2 :], x[:, : hd // 2]], axis=1)
    y = x * np.cos(emb) + rot * np.sin(emb)
    y.astype(np.float32).tofile(os.path.join(out, "rope.f32"))


if __name__ == "__main__":
    {"ops": ops, "rope": rope}[sys.argv[1]](sys.argv)
