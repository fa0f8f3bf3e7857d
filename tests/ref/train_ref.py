"""
train_ref.py - PyTorch references for tests/test_train.c (the trainer's ops, whole model, AdamW,
schedule and clipping). Every array is written as float32 .npy into OUT; the C test reads them.

    train_ref.py ops OUT            random inputs + forward + autograd gradients of every op
    train_ref.py model CKPT OUT     loss and all gradients of the checkpoint's model on the example
                                    stored in OUT (ex_image.npy, ex_ids.npy, ex_mask.npy, ex_pos.npy);
                                    LoRA adapters (lora.blk.N.attn_q/v.a/.b, scale train.lora_alpha / r)
                                    when the checkpoint has them
    train_ref.py adamw OUT          3 torch.optim.AdamW steps, two groups (decay / no decay)
    train_ref.py sched OUT          warm-up + cosine values and clip_grad_norm_ results

The model forward is written from /work/shared/spec/minigpt.md (§1, §3, §4.2) with HF's rotate_half
RoPE on the un-permuted q/k rows: the GGUF stores them in llama.cpp's permuted order, so the C
trainer (adjacent pairs) and this file agree only if the layout convention is right.
"""
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as Fn

torch.set_num_threads(1)


def save(out, name, a):
    np.save(f"{out}/{name}.npy", np.ascontiguousarray(np.asarray(a, dtype=np.float32)))


def t32(a, grad=True):
    return torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=grad)


# ---------------------------------------------------------------- rope / attention

def rope_tables(T, hd, theta):
    i = torch.arange(0, hd, 2, dtype=torch.float32)
    inv = 1.0 / (theta ** (i / hd))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cos(ang.double()).float(), torch.sin(ang.double()).float()   # [T, hd/2]


def to_hf(x, hd):
    """[T, n*hd] in llama.cpp row order (pairs 2i, 2i+1) -> HF order (i, i + hd/2) per head."""
    T = x.shape[0]
    x = x.view(T, -1, hd)
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def attention(q, k, v, H, Hkv, hd, causal, theta):
    """q [T, H*hd], k/v [T, Hkv*hd] -> [T, H*hd]; theta None = no rope."""
    T = q.shape[0]
    if theta is not None:
        cs, sn = rope_tables(T, hd, theta)
        cs = torch.cat([cs, cs], -1)[:, None, :]
        sn = torch.cat([sn, sn], -1)[:, None, :]
        qh, kh = to_hf(q, hd), to_hf(k, hd)
        qh = qh * cs + rotate_half(qh) * sn
        kh = kh * cs + rotate_half(kh) * sn
    else:
        qh, kh = q.view(T, H, hd), k.view(T, Hkv, hd)
    vh = v.view(T, Hkv, hd)
    rep = H // Hkv
    kh = kh.repeat_interleave(rep, dim=1)
    vh = vh.repeat_interleave(rep, dim=1)
    s = torch.einsum("ihe,jhe->hij", qh, kh) / math.sqrt(hd)
    if causal:
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1)[None], float("-inf"))
    p = torch.softmax(s, -1)
    return torch.einsum("hij,jhe->ihe", p, vh).reshape(T, H * hd)


def rmsnorm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


# ---------------------------------------------------------------- ops

def ops(out):
    rng = np.random.default_rng(1234)

    def R(*shape, scale=1.0):
        return rng.standard_normal(shape).astype(np.float32) * scale

    def run(name, fn, inputs, extra=None):
        """inputs: dict name -> array (all get gradients); writes inputs, dy, out and grads."""
        ts = {k: t32(v) for k, v in inputs.items()}
        y = fn(**ts)
        dy = R(*y.shape)
        y.backward(torch.tensor(dy))
        for k, v in inputs.items():
            save(out, f"{name}_{k}", v)
            save(out, f"{name}_d{k}", ts[k].grad.numpy())
        save(out, f"{name}_dy", dy)
        save(out, f"{name}_y", y.detach().numpy())

    run("linear", lambda x, W, b: x @ W.T + b, {"x": R(5, 9), "W": R(7, 9), "b": R(7)})
    # linear layer with a rank-3 LoRA branch, scale 1.5: x W^T + 1.5 (x A^T) B^T
    run("lora", lambda x, W, A, B: x @ W.T + 1.5 * ((x @ A.T) @ B.T),
        {"x": R(5, 9), "W": R(7, 9), "A": R(3, 9), "B": R(7, 3)})
    run("layernorm", lambda x, w, b: Fn.layer_norm(x, (12,), w, b, 1e-6),
        {"x": R(4, 12) * 3 + 1, "w": R(12), "b": R(12)})
    run("rmsnorm", lambda x, w: rmsnorm(x, w, 1e-5), {"x": R(4, 12), "w": R(12)})
    run("gelu", lambda x: Fn.gelu(x), {"x": R(3, 11) * 2})
    run("silu", lambda x: Fn.silu(x), {"x": R(3, 11) * 2})
    run("swiglu", lambda g, u: Fn.silu(g) * u, {"g": R(3, 11) * 2, "u": R(3, 11)})
    run("softmax", lambda x: torch.softmax(x, -1), {"x": R(4, 9) * 2})
    # causal GQA attention with RoPE: T 6, 4 heads, 2 kv heads, head_dim 8, theta 100
    run("attn_llm", lambda q, k, v: attention(q, k, v, 4, 2, 8, True, 100.0),
        {"q": R(6, 32), "k": R(6, 16), "v": R(6, 16)})
    # bidirectional ViT attention: T 5, 2 heads, head_dim 6, no rope
    run("attn_vit", lambda q, k, v: attention(q, k, v, 2, 2, 6, False, None),
        {"q": R(5, 12), "k": R(5, 12), "v": R(5, 12)})
    # ViT attention block input side: qkv linear with q/v bias (k bias zero)
    E = 6
    run("qkv", lambda x, W, qb, vb: x @ W.T + torch.cat([qb, torch.zeros(E), vb]),
        {"x": R(5, E), "W": R(3 * E, E), "qb": R(E), "vb": R(E)})
    # patch embedding = conv 14x14 stride 14 on a 28x28 image, 5 output channels
    run("patch", lambda img, W, b: Fn.conv2d(img[None], W.view(5, 3, 14, 14), b, stride=14)[0]
        .flatten(1).T, {"img": R(3, 28, 28), "W": R(5, 3 * 14 * 14) * 0.1, "b": R(5)})
    # CLS + position embedding, then drop CLS and merge 4 (Np 8, E 3)
    run("clspos", lambda patch, cls, pos: torch.cat([cls[None], patch], 0) + pos,
        {"patch": R(8, 3), "cls": R(3), "pos": R(9, 3)})
    run("merge4", lambda x: x[1:].reshape(2, 12), {"x": R(9, 3)})
    # embedding lookup with a repeated id
    ids = np.array([3, 0, 3, 5, 1], dtype=np.int64)
    save(out, "embed_ids", ids)
    run("embed", lambda table: table[torch.tensor(ids)], {"table": R(6, 4)})
    # masked cross-entropy
    tg = np.array([1, 4, 0, 6, 2], dtype=np.int64)
    mk = np.array([1, 0, 1, 1, 0], dtype=np.float32)
    save(out, "ce_targets", tg)
    save(out, "ce_mask", mk)
    sel = torch.tensor(mk > 0)
    x = t32(R(5, 7) * 2)
    loss = Fn.cross_entropy(x[sel], torch.tensor(tg)[sel])
    loss.backward()
    save(out, "ce_x", x.detach().numpy())
    save(out, "ce_loss", [loss.item()])
    save(out, "ce_dx", x.grad.numpy())


# ---------------------------------------------------------------- GGUF reader (F32 tensors only)

def read_gguf(path):
    b = open(path, "rb").read()
    pos = 0

    def rd(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def rstr():
        nonlocal pos
        n = rd("Q")
        s = b[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def rval(t):
        if t == 8:
            return rstr()
        if t == 9:
            et, n = rd("I"), rd("Q")
            return [rval(et) for _ in range(n)]
        return rd(sizes[t])

    assert b[:4] == b"GGUF"
    pos = 4
    rd("I")
    nt, nkv = rd("Q"), rd("Q")
    kv = {}
    for _ in range(nkv):
        k = rstr()
        kv[k] = rval(rd("I"))
    infos = []
    for _ in range(nt):
        name = rstr()
        nd = rd("I")
        ne = [rd("Q") for _ in range(nd)]
        typ, off = rd("I"), rd("Q")
        infos.append((name, ne, typ, off))
    align = kv.get("general.alignment", 32)
    data = (pos + align - 1) // align * align
    tensors = {}
    for name, ne, typ, off in infos:
        assert typ == 0, name
        n = int(np.prod(ne))
        a = np.frombuffer(b, dtype="<f4", count=n, offset=data + off)
        tensors[name] = a.reshape(list(reversed(ne))).copy()
    return kv, tensors


# ---------------------------------------------------------------- whole model

def model(ckpt, out):
    kv, T = read_gguf(ckpt)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in T.items() if not k.startswith("opt.")}
    S, p = kv["minigpt.vision.image_size"], kv["minigpt.vision.patch_size"]
    E, nvl, Hv = kv["minigpt.vision.embedding_length"], kv["minigpt.vision.block_count"], kv["minigpt.vision.head_count"]
    veps, peps = kv["minigpt.vision.layer_norm_epsilon"], kv["minigpt.vision.post_layer_norm_epsilon"]
    d, nl = kv["llama.embedding_length"], kv["llama.block_count"]
    H, Hkv = kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"]
    eps, theta = kv["llama.attention.layer_norm_rms_epsilon"], kv["llama.rope.freq_base"]
    hd = d // H
    alpha = kv.get("train.lora_alpha")
    img = torch.tensor(np.load(f"{out}/ex_image.npy")).view(3, S, S)
    ids = np.load(f"{out}/ex_ids.npy").astype(np.int64)
    mask = np.load(f"{out}/ex_mask.npy")
    ipos = int(np.load(f"{out}/ex_pos.npy")[0])

    # vision tower (spec §1.2), ln_vision, merge4 + projection (§3)
    G = S // p
    x = Fn.conv2d(img[None], P["v.patch_embd.weight"].view(E, 3, p, p), P["v.patch_embd.bias"], stride=p)
    x = x[0].flatten(1).T
    x = torch.cat([P["v.class_embd"][None], x], 0) + P["v.position_embd"]
    for i in range(nvl):
        b = lambda s: P[f"v.blk.{i}.{s}"]
        h = Fn.layer_norm(x, (E,), b("ln1.weight"), b("ln1.bias"), veps)
        bias = torch.cat([b("attn_q.bias"), torch.zeros(E), b("attn_v.bias")])
        qkv = h @ b("attn_qkv.weight").T + bias
        q, k, v = qkv[:, :E], qkv[:, E:2 * E], qkv[:, 2 * E:]
        x = x + attention(q, k, v, Hv, Hv, E // Hv, False, None) @ b("attn_out.weight").T + b("attn_out.bias")
        h = Fn.layer_norm(x, (E,), b("ln2.weight"), b("ln2.bias"), veps)
        x = x + Fn.gelu(h @ b("ffn_up.weight").T + b("ffn_up.bias")) @ b("ffn_down.weight").T + b("ffn_down.bias")
    x = Fn.layer_norm(x, (E,), P["v.post_ln.weight"], P["v.post_ln.bias"], peps)
    vis = x[1:].reshape(G * G // 4, 4 * E) @ P["mm.proj.weight"].T + P["mm.proj.bias"]

    # sequence: text[:ipos], image rows, text[ipos:]
    emb = P["token_embd.weight"][torch.tensor(ids)]
    h = torch.cat([emb[:ipos], vis, emb[ipos:]], 0)
    n_img = vis.shape[0]
    for i in range(nl):
        b = lambda s: P[f"blk.{i}.{s}.weight"]

        def proj(x, s):
            # W x, plus (alpha / r) B (A x) where the layer has LoRA adapters on s (rows of B in W's
            # stored row order, so the permuted q layout needs nothing more)
            y = x @ b(s).T
            la = P.get(f"lora.blk.{i}.{s}.a")
            if la is not None:
                y = y + (alpha / la.shape[0]) * ((x @ la.T) @ P[f"lora.blk.{i}.{s}.b"].T)
            return y

        a = rmsnorm(h, b("attn_norm"), eps)
        o = attention(proj(a, "attn_q"), a @ b("attn_k").T, proj(a, "attn_v"), H, Hkv, hd, True, theta)
        h = h + o @ b("attn_output").T
        m = rmsnorm(h, b("ffn_norm"), eps)
        h = h + (Fn.silu(m @ b("ffn_gate").T) * (m @ b("ffn_up").T)) @ b("ffn_down").T
    logits = rmsnorm(h, P["output_norm.weight"], eps) @ P["output.weight"].T

    # targets: text token j (mask 1) predicted from the row before it
    rows, tg = [], []
    for j in range(len(ids)):
        s = j if j < ipos else j + n_img
        if mask[j] > 0 and s > 0:
            rows.append(s - 1)
            tg.append(ids[j])
    loss = Fn.cross_entropy(logits[torch.tensor(rows)], torch.tensor(tg))
    loss.backward()
    save(out, "model_loss", [loss.item()])
    for k, v in P.items():
        save(out, "grad_" + k, v.grad.numpy() if v.grad is not None else np.zeros(v.shape))


# ---------------------------------------------------------------- optimiser

def adamw(out):
    rng = np.random.default_rng(77)
    W = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    save(out, "adam_W0", W)
    save(out, "adam_b0", b)
    tw, tb = torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [tw], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for s in range(3):
        gw = rng.standard_normal((6, 5)).astype(np.float32)
        gb = rng.standard_normal(5).astype(np.float32)
        save(out, f"adam_gW{s}", gw)
        save(out, f"adam_gb{s}", gb)
        tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()
    save(out, "adam_W3", tw.detach().numpy())
    save(out, "adam_b3", tb.detach().numpy())


def sched(out):
    lr, lr_min, warm, total = 1e-3, 1e-4, 10, 100
    vals = []
    for s in range(120):
        if s < warm:
            vals.append(lr * (s + 1) / warm)
        else:
            p = min(max((s - warm) / (total - warm), 0.0), 1.0)
            vals.append(lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * p)))
    save(out, "sched", vals)
    rng = np.random.default_rng(5)
    g1, g2 = rng.standard_normal(7).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    t1, t2 = torch.zeros(7, requires_grad=True), torch.zeros(3, 4, requires_grad=True)
    t1.grad, t2.grad = torch.tensor(g1), torch.tensor(g2)
    norm = torch.nn.utils.clip_grad_norm_([t1, t2], 1.5)
    save(out, "clip_g1", g1)
    save(out, "clip_g2", g2)
    save(out, "clip_norm", [norm.item()])
    save(out, "clip_c1", t1.grad.numpy())
    save(out, "clip_c2", t2.grad.numpy())


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ops":
        ops(sys.argv[2])
    elif cmd == "model":
        model(sys.argv[2], sys.argv[3])
    elif cmd == "adamw":
        adamw(sys.argv[2])
    elif cmd == "sched":
        sched(sys.argv[2])
    else:
        sys.exit("unknown command " + cmd)
