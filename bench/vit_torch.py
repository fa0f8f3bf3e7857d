#!/usr/bin/env python3
"""
vit_torch.py - the PyTorch side of the image-encode comparison: times the forward pass of EVA
ViT-g as MiniGPT-4 / MiniGPT-v2 run it (minigpt4/models/eva_vit.py, 39 blocks as BLIP-2 keeps
them, then ln_vision) on the CPU, fp32, under torch.no_grad, with random weights, and prints the
median and the minimum wall time in ms.

    /usr/bin/python3 bench/vit_torch.py --size 224 -t 2
    /usr/bin/python3 bench/vit_torch.py --size 448 -t 2 -r 3

The minigpt side is `minigpt bench --synthetic minigpt4-7b --type f16 --vision-only -t 2`
(bench/README.md). minigpt's number covers the whole encode (ViT + ln_vision + Q-Former or merge4
+ projection); the Q-Former and the projection add about 2% (224) / under 1% (448) of the ViT's
multiply-adds, so the ViT is the comparison.

By default linear layers and attention run as plain F.linear / matmul (torch's BLAS: on this
Debian build, BLAS_INFO=generic, which resolves to OpenBLAS through the libblas.so.3
alternative, and measured faster than oneDNN here). --matmul mkldnn routes them through torch's oneDNN kernel instead, as
tests/ref/vision_ref.py does; try both on a new machine and report the faster.
"""
import argparse
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("vit_torch.py: needs PyTorch (Debian: apt-get install python3-torch; run with /usr/bin/python3)")


def make_linear(use_mkldnn):
    """y = x w^T + b over the last dim of x, by oneDNN or by F.linear."""
    if not use_mkldnn:
        return F.linear

    def linear(x, w, b=None):
        x2 = x.reshape(-1, x.shape[-1]).contiguous().to_mkldnn()
        y = torch._C._nn.mkldnn_linear(x2, w, b).to_dense()
        return y.reshape(*x.shape[:-1], y.shape[-1])

    return linear


class EvaViTg:
    """EVA ViT-g weights and forward (eva_vit.py: PatchEmbed, Attention with q_bias/v_bias and no
    k bias, pre-LN blocks, GELU MLP), plus BLIP-2's ln_vision."""

    def __init__(self, size, use_mkldnn, dim=1408, heads=16, ff=6144, blocks=39, patch=14, seed=0):
        g = torch.Generator().manual_seed(seed)

        def rnd(*shape):  # uniform with std 0.02, as the synthetic minigpt weights
            return (torch.rand(*shape, generator=g) * 2 - 1) * (0.02 * math.sqrt(3))

        self.dim, self.heads, self.patch, self.grid = dim, heads, patch, size // patch
        self.use_mkldnn = use_mkldnn
        self.linear = make_linear(use_mkldnn)
        # matrices are kept in the layout the linear wants (oneDNN tensors when use_mkldnn)
        mat = (lambda t: t.contiguous().to_mkldnn()) if use_mkldnn else (lambda t: t.contiguous())
        vec = mat
        self.patch_w = rnd(dim, 3, patch, patch)
        self.patch_b = torch.zeros(dim)
        self.cls = rnd(1, 1, dim)
        # the checkpoint's 16x16 grid, interpolated as interpolate_pos_embed does when size != 224
        pos = rnd(1, 1 + 16 * 16, dim)
        if self.grid != 16:
            grid = pos[:, 1:].reshape(1, 16, 16, dim).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(self.grid, self.grid), mode="bicubic", align_corners=False)
            pos = torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)
        self.pos = pos
        self.blocks = []
        for _ in range(blocks):
            q_bias, v_bias = torch.zeros(dim), torch.zeros(dim)
            self.blocks.append({
                "ln1": (torch.ones(dim), torch.zeros(dim)),
                "qkv_w": mat(rnd(3 * dim, dim)),
                "qkv_b": vec(torch.cat((q_bias, torch.zeros(dim), v_bias))),
                "proj_w": mat(rnd(dim, dim)), "proj_b": vec(torch.zeros(dim)),
                "ln2": (torch.ones(dim), torch.zeros(dim)),
                "fc1_w": mat(rnd(ff, dim)), "fc1_b": vec(torch.zeros(ff)),
                "fc2_w": mat(rnd(dim, ff)), "fc2_b": vec(torch.zeros(dim)),
            })
        self.ln_vision = (torch.ones(dim), torch.zeros(dim))

    def attention(self, x, b):
        N, C = x.shape[1], self.dim
        h, d = self.heads, C // self.heads
        qkv = self.linear(x, b["qkv_w"], b["qkv_b"]).reshape(N, 3, h, d).permute(1, 2, 0, 3)
        q, k, v = qkv[0] * d ** -0.5, qkv[1], qkv[2]  # [h, N, d]
        if self.use_mkldnn:
            # per head through the same oneDNN kernel: s = q k^T, o = softmax(s) v
            outs = []
            for i in range(h):
                s = self.linear(q[i], k[i].contiguous().to_mkldnn()).softmax(dim=-1)
                outs.append(self.linear(s, v[i].t().contiguous().to_mkldnn()))
            o = torch.stack(outs)
        else:
            o = (q @ k.transpose(-1, -2)).softmax(dim=-1) @ v
        o = o.permute(1, 0, 2).reshape(1, N, C)
        return self.linear(o, b["proj_w"], b["proj_b"])

    def forward(self, img):
        x = F.conv2d(img, self.patch_w, self.patch_b, stride=self.patch).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls, x), dim=1) + self.pos
        for b in self.blocks:
            x = x + self.attention(F.layer_norm(x, (self.dim,), *b["ln1"], eps=1e-6), b)
            hdn = F.gelu(self.linear(F.layer_norm(x, (self.dim,), *b["ln2"], eps=1e-6), b["fc1_w"], b["fc1_b"]))
            x = x + self.linear(hdn, b["fc2_w"], b["fc2_b"])
        return F.layer_norm(x, (self.dim,), *self.ln_vision, eps=1e-5)


def main():
    ap = argparse.ArgumentParser(description="Time EVA ViT-g (fp32, CPU) in PyTorch.")
    ap.add_argument("--size", type=int, default=224, help="image side: 224 (MiniGPT-4) or 448 (MiniGPT-v2)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("-r", "--reps", type=int, default=5, help="timed runs (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    ap.add_argument("--blocks", type=int, default=39, help="ViT blocks (default 39; fewer for a quick try)")
    ap.add_argument("--matmul", choices=["mkldnn", "default"], default="default",
                    help="plain F.linear / matmul (default) or torch's oneDNN kernel")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    a = ap.parse_args()
    if a.size <= 0 or a.size % 14 or a.threads < 1 or a.reps < 1 or a.warmup < 0 or a.blocks < 1:
        ap.error("--size must be a positive multiple of 14; -t, -r, --blocks >= 1; --warmup >= 0")
    use_mkldnn = a.matmul == "mkldnn"
    if use_mkldnn and not torch.backends.mkldnn.is_available():
        ap.error("this torch build has no mkldnn")
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    model = EvaViTg(a.size, use_mkldnn, blocks=a.blocks)
    img = torch.rand(1, 3, a.size, a.size, generator=torch.Generator().manual_seed(1)) * 4 - 2
    runs = []
    with torch.no_grad():
        for i in range(a.warmup + a.reps):
            t0 = time.perf_counter()
            out = model.forward(img)
            ms = (time.perf_counter() - t0) * 1e3
            if i >= a.warmup:
                runs.append(ms)
    assert out.shape == (1, 1 + model.grid ** 2, 1408) and torch.isfinite(out).all()
    res = {"size": a.size, "threads": a.threads, "blocks": a.blocks, "matmul": "mkldnn" if use_mkldnn else "default",
           "torch": torch.__version__, "reps": a.reps, "warmup": a.warmup,
           "ms_median": statistics.median(runs), "ms_min": min(runs), "runs_ms": runs}
    if a.json:
        import json
        print(json.dumps(res))
    else:
        print("torch %s EVA ViT-g %d blocks at %d px (%d tokens), fp32, %s matmul, %d threads: "
              "median %.1f ms, min %.1f ms (%d runs after %d warm-up)"
              % (torch.__version__, a.blocks, a.size, 1 + model.grid ** 2, res["matmul"], a.threads,
                 res["ms_median"], res["ms_min"], a.reps, a.warmup))


if __name__ == "__main__":
    main()
