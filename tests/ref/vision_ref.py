"""
vision_ref.py - PyTorch reference for the vision side (tests/test_vision.c runs it).

Re-implements, with random weights and a fixed seed, the math of the official modules:
EVA ViT-g (minigpt4/models/eva_vit.py: PatchEmbed, Attention with q_bias/v_bias, Block, pos-embed
interpolation), ln_vision, the BLIP-2 Q-Former as MiniGPT-4 drives it (minigpt4/models/Qformer.py:
query embeddings + LayerNorm, post-LN BERT layers, cross-attention every second layer, query FFN)
and the two projections (Q-Former -> llama_proj, and drop-CLS + merge of 4 tokens -> llama_proj).
Writes GGUF files (tensor names of docs/gguf-keys.md) and one .npy per stage into OUTDIR.

Usage: vision_ref.py OUTDIR interp|a|b [--quick]
  interp  position-embedding interpolation alone (interp_*.npy)
  a       MiniGPT-4 (Vicuna) path at 224: vision_a.gguf, a_*.npy
  b       MiniGPT-v2 path at 448: vision_b.gguf, b_*.npy
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_writer import GGUFWriter  # noqa: E402

torch.set_grad_enabled(False)

# This Debian torch links the generic (netlib) BLAS, so F.linear runs at ~1 GFLOP/s; the same
# product through torch's oneDNN (mkldnn) kernel is several times faster and equally fp32.
USE_MKLDNN = torch.backends.mkldnn.is_available()


def linear(x, w, b=None):
    """y = x w^T + b, as F.linear."""
    if not USE_MKLDNN:
        return F.linear(x, w, b)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch._C._nn.mkldnn_linear(x2.to_mkldnn(), w.contiguous().to_mkldnn(),
                                   None if b is None else b.contiguous().to_mkldnn()).to_dense()
    return y.reshape(*x.shape[:-1], w.shape[0])


def matmul_nt(a, b):
    """a [..., M, K] @ b[..., N, K]^T per leading index, through linear() for the same reason."""
    if not USE_MKLDNN:
        return a @ b.transpose(-1, -2)
    a2 = a.reshape(-1, *a.shape[-2:])
    b2 = b.reshape(-1, *b.shape[-2:])
    y = torch.stack([linear(a2[i], b2[i]) for i in range(a2.shape[0])])
    return y.reshape(*a.shape[:-2], a.shape[-2], b.shape[-2])


class Linear(nn.Linear):
    def forward(self, x):
        return linear(x, self.weight, self.bias)


# ==== EVA ViT-g (eva_vit.py) ====

class EvaAttention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        head_dim = dim // n_head
        self.scale = head_dim ** -0.5
        self.qkv = Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(B, N, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        a = matmul_nt(q, k).softmax(dim=-1)                    # (q @ k^T).softmax(-1)
        x = matmul_nt(a, v.transpose(-2, -1)).transpose(1, 2).reshape(B, N, -1)  # (a @ v)
        return self.proj(x)


class EvaBlock(nn.Module):
    def __init__(self, dim, n_head, n_ff):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EvaAttention(dim, n_head)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = Linear(dim, n_ff)
        self.fc2 = Linear(n_ff, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class EvaViT(nn.Module):
    def __init__(self, img_size, patch, dim, n_head, n_ff, n_block):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        g = img_size // patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, dim))
        self.blocks = nn.ModuleList([EvaBlock(dim, n_head, n_ff) for _ in range(n_block)])

    def forward(self, img):
        x = self.patch_embed(img).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        for b in self.blocks:
            x = b(x)
        return x


def interpolate_pos_embed(pos, new_grid):
    """eva_vit.py interpolate_pos_embed: CLS slot kept, grid resized bicubic (align_corners=False)."""
    c = pos.shape[-1]
    old = int(round(math.sqrt(pos.shape[-2] - 1)))
    extra = pos[:, :1]
    grid = pos[:, 1:].reshape(-1, old, old, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra, grid), dim=1)


# ==== Q-Former (Qformer.py, BERT with query-only FFN) ====

class BertAttn(nn.Module):
    """BertAttention: BertSelfAttention + BertSelfOutput (post-LN residual)."""

    def __init__(self, dim, n_head, kv_dim, eps):
        super().__init__()
        self.n_head = n_head
        self.query = Linear(dim, dim)
        self.key = Linear(kv_dim, dim)
        self.value = Linear(kv_dim, dim)
        self.dense = Linear(dim, dim)
        self.ln = nn.LayerNorm(dim, eps=eps)

    def heads(self, x):
        B, N, C = x.shape
        return x.view(B, N, self.n_head, C // self.n_head).permute(0, 2, 1, 3)

    def forward(self, h, kv):
        q = self.heads(self.query(h))
        k = self.heads(self.key(kv))
        v = self.heads(self.value(kv))
        s = matmul_nt(q, k) / math.sqrt(q.shape[-1])          # q @ k^T / sqrt(d)
        s = s + torch.zeros(1)  # extended attention mask of all-ones masks: (1 - 1) * -10000
        c = matmul_nt(s.softmax(dim=-1), v.transpose(-1, -2)).permute(0, 2, 1, 3)
        c = c.reshape(h.shape)
        return self.ln(self.dense(c) + h)


class QFormerLayer(nn.Module):
    def __init__(self, dim, n_head, n_ff, enc_dim, eps, cross):
        super().__init__()
        self.attention = BertAttn(dim, n_head, dim, eps)
        self.crossattention = BertAttn(dim, n_head, enc_dim, eps) if cross else None
        self.intermediate_query = Linear(dim, n_ff)
        self.output_query = Linear(n_ff, dim)
        self.output_ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, h, img):
        h = self.attention(h, h)
        if self.crossattention is not None:
            h = self.crossattention(h, img)
        f = self.output_query(F.gelu(self.intermediate_query(h)))
        return self.output_ln(f + h)


class QFormer(nn.Module):
    def __init__(self, n_query, dim, n_head, n_ff, enc_dim, n_layer, freq, eps=1e-12):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, n_query, dim))
        self.ln = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList([QFormerLayer(dim, n_head, n_ff, enc_dim, eps, i % freq == 0)
                                     for i in range(n_layer)])

    def forward(self, img):
        h = self.ln(self.query_tokens)
        for layer in self.layers:
            h = layer(h, img)
        return h


# ==== weights ====

def randomize(module, gen):
    """Random weights of a size that keeps activations O(1): linear ~ U(+-sqrt(3/K)),
    biases and norm offsets small, norm scales around 1."""
    for name, p in module.named_parameters():
        if p.dim() >= 2 and "token" not in name and "pos_embed" not in name:
            fan_in = p[0].numel()
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * math.sqrt(3.0 / fan_in))
        elif name.endswith("weight") and p.dim() == 1:
            p.copy_(1 + 0.2 * (torch.rand(p.shape, generator=gen) * 2 - 1))
        else:
            p.copy_(0.5 * (torch.rand(p.shape, generator=gen) * 2 - 1))


def f32(t):
    return t.detach().float().contiguous().numpy()


def add_vit(w, vit, ln_vision, hp, pos_embed):
    w.add_u32("minigpt.vision.image_size", hp["image"])
    w.add_u32("minigpt.vision.patch_size", hp["patch"])
    w.add_u32("minigpt.vision.embedding_length", hp["dim"])
    w.add_u32("minigpt.vision.block_count", hp["blocks"])
    w.add_u32("minigpt.vision.head_count", hp["heads"])
    w.add_u32("minigpt.vision.feed_forward_length", hp["ff"])
    w.add_f32("minigpt.vision.layer_norm_epsilon", 1e-6)
    w.add_f32("minigpt.vision.post_layer_norm_epsilon", 1e-5)
    w.add_tensor_f32("v.patch_embd.weight", f32(vit.patch_embed.weight))
    w.add_tensor_f32("v.patch_embd.bias", f32(vit.patch_embed.bias))
    w.add_tensor_f32("v.class_embd", f32(vit.cls_token[0, 0]))
    w.add_tensor_f32("v.position_embd", f32(pos_embed[0]))
    for i, b in enumerate(vit.blocks):
        p = "v.blk.%d." % i
        w.add_tensor_f32(p + "ln1.weight", f32(b.norm1.weight))
        w.add_tensor_f32(p + "ln1.bias", f32(b.norm1.bias))
        w.add_tensor_f32(p + "attn_qkv.weight", f32(b.attn.qkv.weight))
        w.add_tensor_f32(p + "attn_q.bias", f32(b.attn.q_bias))
        w.add_tensor_f32(p + "attn_v.bias", f32(b.attn.v_bias))
        w.add_tensor_f32(p + "attn_out.weight", f32(b.attn.proj.weight))
        w.add_tensor_f32(p + "attn_out.bias", f32(b.attn.proj.bias))
        w.add_tensor_f32(p + "ln2.weight", f32(b.norm2.weight))
        w.add_tensor_f32(p + "ln2.bias", f32(b.norm2.bias))
        w.add_tensor_f32(p + "ffn_up.weight", f32(b.fc1.weight))
        w.add_tensor_f32(p + "ffn_up.bias", f32(b.fc1.bias))
        w.add_tensor_f32(p + "ffn_down.weight", f32(b.fc2.weight))
        w.add_tensor_f32(p + "ffn_down.bias", f32(b.fc2.bias))
    if ln_vision is not None:
        w.add_tensor_f32("v.post_ln.weight", f32(ln_vision.weight))
        w.add_tensor_f32("v.post_ln.bias", f32(ln_vision.bias))


def add_qformer(w, qf, hp):
    w.add_u32("minigpt.qformer.query_count", hp["queries"])
    w.add_u32("minigpt.qformer.embedding_length", hp["dim"])
    w.add_u32("minigpt.qformer.block_count", hp["layers"])
    w.add_u32("minigpt.qformer.head_count", hp["heads"])
    w.add_u32("minigpt.qformer.feed_forward_length", hp["ff"])
    w.add_u32("minigpt.qformer.cross_attention_freq", hp["freq"])
    w.add_f32("minigpt.qformer.layer_norm_epsilon", 1e-12)
    w.add_tensor_f32("qf.query_embd", f32(qf.query_tokens[0]))
    w.add_tensor_f32("qf.embd_ln.weight", f32(qf.ln.weight))
    w.add_tensor_f32("qf.embd_ln.bias", f32(qf.ln.bias))

    def attn(prefix, a):
        w.add_tensor_f32(prefix + "_q.weight", f32(a.query.weight))
        w.add_tensor_f32(prefix + "_q.bias", f32(a.query.bias))
        w.add_tensor_f32(prefix + "_k.weight", f32(a.key.weight))
        w.add_tensor_f32(prefix + "_k.bias", f32(a.key.bias))
        w.add_tensor_f32(prefix + "_v.weight", f32(a.value.weight))
        w.add_tensor_f32(prefix + "_v.bias", f32(a.value.bias))
        w.add_tensor_f32(prefix + "_out.weight", f32(a.dense.weight))
        w.add_tensor_f32(prefix + "_out.bias", f32(a.dense.bias))
        w.add_tensor_f32(prefix + "_ln.weight", f32(a.ln.weight))
        w.add_tensor_f32(prefix + "_ln.bias", f32(a.ln.bias))

    for i, layer in enumerate(qf.layers):
        p = "qf.blk.%d." % i
        attn(p + "attn", layer.attention)
        if layer.crossattention is not None:
            attn(p + "cross", layer.crossattention)
        w.add_tensor_f32(p + "ffn_up.weight", f32(layer.intermediate_query.weight))
        w.add_tensor_f32(p + "ffn_up.bias", f32(layer.intermediate_query.bias))
        w.add_tensor_f32(p + "ffn_down.weight", f32(layer.output_query.weight))
        w.add_tensor_f32(p + "ffn_down.bias", f32(layer.output_query.bias))
        w.add_tensor_f32(p + "ffn_ln.weight", f32(layer.output_ln.weight))
        w.add_tensor_f32(p + "ffn_ln.bias", f32(layer.output_ln.bias))


def write_gguf(w, path):
    """GGUFWriter.write without building the whole file in memory first."""
    align = w.alignment
    with open(path, "wb") as f:
        f.write(w.header_bytes())
        for _, _, _, raw in w.tensors:
            f.write(raw)
            f.write(b"\0" * ((-len(raw)) % align))


def save(out, name, t):
    np.save(os.path.join(out, name + ".npy"), f32(t))


def main():
    out, what = sys.argv[1], sys.argv[2]
    quick = "--quick" in sys.argv[3:]
    os.makedirs(out, exist_ok=True)
    {"interp": case_interp, "a": case_a, "b": case_b}[what](out, quick)


def case_interp(out, quick):
    """Position-embedding interpolation alone: 16x16 grid -> 32 (MiniGPT-v2), 24, 10 (down)."""
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(1, 257, 1408, generator=gen)
    save(out, "interp_in", pos[0])
    for g in (32, 24, 10):
        save(out, "interp_out_%d" % g, interpolate_pos_embed(pos, g)[0])


def case_a(out, quick):
    gen = torch.Generator().manual_seed(2)
    # ---- A: MiniGPT-4 (Vicuna) path at 224: ViT -> ln_vision -> Q-Former -> llama_proj 768->4096
    # Quick mode (sanitizer runs) narrows the ViT to 2 heads of 88; the Q-Former keeps its widths.
    if quick:
        hp_v = dict(image=224, patch=14, dim=176, heads=2, ff=512, blocks=1)
    else:
        hp_v = dict(image=224, patch=14, dim=1408, heads=16, ff=6144, blocks=2)
    hp_q = dict(queries=32, dim=768, heads=12, ff=3072, layers=2 if quick else 4, freq=2)
    vit = EvaViT(hp_v["image"], 14, hp_v["dim"], hp_v["heads"], hp_v["ff"], hp_v["blocks"])
    ln_vision = nn.LayerNorm(hp_v["dim"], eps=1e-5)
    qf = QFormer(hp_q["queries"], hp_q["dim"], hp_q["heads"], hp_q["ff"], hp_v["dim"], hp_q["layers"], hp_q["freq"])
    proj = Linear(hp_q["dim"], 4096)
    for m in (vit, ln_vision, qf, proj):
        randomize(m, gen)
    img = torch.randn(1, 3, 224, 224, generator=gen)
    e = ln_vision(vit(img))
    q = qf(e)
    t = proj(q)
    w = GGUFWriter()
    w.add_str("minigpt.projector_type", "qformer")
    add_vit(w, vit, ln_vision, hp_v, vit.pos_embed)
    add_qformer(w, qf, hp_q)
    w.add_tensor_f32("mm.proj.weight", f32(proj.weight))
    w.add_tensor_f32("mm.proj.bias", f32(proj.bias))
    write_gguf(w, os.path.join(out, "vision_a.gguf"))
    save(out, "a_img", img[0])
    save(out, "a_vit", e[0])
    save(out, "a_qformer", q[0])
    save(out, "a_proj", t[0])


def case_b(out, quick):
    gen = torch.Generator().manual_seed(3)
    # ---- B: MiniGPT-v2 path at 448: the file keeps the 16x16 pos-embed (interpolated at load),
    # ln_vision absent (identity affine), drop CLS, merge 4 tokens, llama_proj 4*dim -> n_llm.
    # 1025 tokens at width 1408 cost ~57 GFLOP a block, so this case runs narrower (heads of 88
    # still); the width-1408 code path is the one of case A.
    if quick:
        hp_b = dict(image=448, patch=14, dim=352, heads=4, ff=512, blocks=1)
        n_llm = 256
    else:
        hp_b = dict(image=448, patch=14, dim=1408, heads=16, ff=6144, blocks=1)
        n_llm = 4096
    vit = EvaViT(224, 14, hp_b["dim"], hp_b["heads"], hp_b["ff"], hp_b["blocks"])
    proj = Linear(4 * hp_b["dim"], n_llm)
    for m in (vit, proj):
        randomize(m, gen)
    pos224 = vit.pos_embed.clone()
    vit.pos_embed = nn.Parameter(interpolate_pos_embed(pos224, 32))
    ln_vision = nn.LayerNorm(hp_b["dim"], eps=1e-5)  # default init: weight 1, bias 0
    img = torch.randn(1, 3, 448, 448, generator=gen)
    e = ln_vision(vit(img))
    m4 = e[:, 1:, :].reshape(1, -1, 4 * hp_b["dim"])
    t = proj(m4)
    w = GGUFWriter()
    w.add_str("minigpt.projector_type", "merge4")
    add_vit(w, vit, None, hp_b, pos224)
    w.add_tensor_f32("mm.proj.weight", f32(proj.weight))
    w.add_tensor_f32("mm.proj.bias", f32(proj.bias))
    write_gguf(w, os.path.join(out, "vision_b.gguf"))
    save(out, "b_img", img[0])
    save(out, "b_vit", e[0])
    save(out, "b_proj", t[0])


if __name__ == "__main__":
    main()
