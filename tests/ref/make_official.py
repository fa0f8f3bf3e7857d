#!/usr/bin/python3
"""make_official.py OUTDIR - small checkpoints with the OFFICIAL key names, for tests/test_convert.c.

Writes (all random, fixed seeds):
  hf_st/   HF LLaMA folder: config.json, tokenizer.model (SentencePiece BPE trained here),
           model.safetensors (written by hand below: 8-byte header length, JSON header, raw data)
  hf_bin/  the same weights as two torch.save shards + pytorch_model.bin.index.json
  ids.txt  a fixed prompt (token ids, one line)
  logits.npy   [n_prompt, V] float32: an HF-LLaMA forward (rotate_half RoPE, GQA, SwiGLU,
               RMSNorm; float64, written from the transformers 4.30 equations) on the prompt
  eva.pth  eva_vit_g.pth-style bare state dict (cls_token, pos_embed on a 4x4 grid, blocks.N.*)
  blip2.pth    {"model": ...} BLIP-2 style: query_tokens, Qformer.bert.*, ln_vision.*, t5_proj.*
  v2.pth   MiniGPT-v2 style {"model": llama_proj + peft 0.2 LoRA keys on q_proj / v_proj}
  v2_nolora.pth, v2_badproj.pth  the same without LoRA / with a wrongly shaped llama_proj
  vicuna.pth   MiniGPT-4 (Vicuna) style {"model": llama_proj [d, D]}
  ref_q0.npy / ref_v0.npy   layer-0 q/v after the LoRA merge W + (alpha/r) B@A (q permuted as
               llama.cpp's convert_hf_to_gguf.py LlamaModel.permute), torch float32 matmul
  ref_pos.npy  pos_embed interpolated 4x4 -> 8x8 with torch bicubic (eva_vit.py's recipe)
"""
import json
import os
import struct
import sys

import numpy as np
import sentencepiece as spm
import torch

CFG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           intermediate_size=96, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256)
VIT = dict(E=64, P=14, F=96, blocks=2, grid=4, heads=4)
QF = dict(Q=4, D=32, F=64, layers=2, heads=2)
LORA_R = 8


def train_tokenizer(out):
    words = ("the of and to in is was for on that with as by at from his her it an were are which this be or "
             "have had not but they one all also has new been first after who its more two other time would "
             "image vision model token llama hello world picture describe cat dog red blue").split()
    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 12))) for _ in range(800)]
    path = os.path.join(out, "corpus.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=path, model_prefix=os.path.join(out, "tok"), model_type="bpe", vocab_size=300,
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, bos_id=1, eos_id=2, unk_id=0,
        minloglevel=2)
    return os.path.join(out, "tok.model")


def llama_weights(V, gen):
    d, L, H, KV, F = (CFG[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads", "intermediate_size"))
    hd = d // H

    def r(*s, scale=0.15):
        return (torch.randn(*s, generator=gen) * scale).float()

    W = {"model.embed_tokens.weight": r(V, d, scale=1.0)}
    for i in range(L):
        p = "model.layers.%d." % i
        W[p + "input_layernorm.weight"] = 1 + r(d, scale=0.1)
        W[p + "self_attn.q_proj.weight"] = r(H * hd, d)
        W[p + "self_attn.k_proj.weight"] = r(KV * hd, d)
        W[p + "self_attn.v_proj.weight"] = r(KV * hd, d)
        W[p + "self_attn.o_proj.weight"] = r(d, H * hd)
        W[p + "post_attention_layernorm.weight"] = 1 + r(d, scale=0.1)
        W[p + "mlp.gate_proj.weight"] = r(F, d)
        W[p + "mlp.up_proj.weight"] = r(F, d)
        W[p + "mlp.down_proj.weight"] = r(d, F)
    W["model.norm.weight"] = 1 + r(d, scale=0.1)
    W["lm_head.weight"] = r(V, d, scale=0.5)
    return W


def hf_forward(W, ids):
    """HF LlamaForCausalLM (transformers 4.30 equations) in float64; logits of every position."""
    d, L, H, KV = (CFG[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "num_key_value_heads"))
    hd, eps, theta = d // H, CFG["rms_norm_eps"], CFG["rope_theta"]
    Wd = {k: v.double() for k, v in W.items()}
    n = len(ids)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    inv = 1.0 / (theta ** (torch.arange(0, hd, 2).double() / hd))
    ang = torch.outer(torch.arange(n).double(), inv)
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos(), emb.sin()

    def rot_half(x):
        return torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1)

    x = Wd["model.embed_tokens.weight"][torch.tensor(ids)]
    mask = torch.full((n, n), float("-inf")).double().triu(1)
    for i in range(L):
        p = "model.layers.%d." % i
        h = rms(x, Wd[p + "input_layernorm.weight"])
        q = (h @ Wd[p + "self_attn.q_proj.weight"].T).view(n, H, hd).transpose(0, 1)
        k = (h @ Wd[p + "self_attn.k_proj.weight"].T).view(n, KV, hd).transpose(0, 1)
        v = (h @ Wd[p + "self_attn.v_proj.weight"].T).view(n, KV, hd).transpose(0, 1)
        q = q * cos + rot_half(q) * sin
        k = k * cos + rot_half(k) * sin
        k = k.repeat_interleave(H // KV, 0)
        v = v.repeat_interleave(H // KV, 0)
        a = torch.softmax(q @ k.transpose(1, 2) / hd ** 0.5 + mask, -1) @ v
        x = x + a.transpose(0, 1).reshape(n, d) @ Wd[p + "self_attn.o_proj.weight"].T
        h = rms(x, Wd[p + "post_attention_layernorm.weight"])
        g = h @ Wd[p + "mlp.gate_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * (h @ Wd[p + "mlp.up_proj.weight"].T)) @ Wd[p + "mlp.down_proj.weight"].T
    x = rms(x, Wd["model.norm.weight"])
    return (x @ Wd["lm_head.weight"].T).float()


def write_safetensors(path, tensors):
    """Hand-written safetensors: u64 header size, JSON header (sorted offsets), raw little-endian data."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header).encode()
    hb += b" " * ((-len(hb)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, in torch."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rnd(gen, *s, scale=0.2):
    return (torch.randn(*s, generator=gen) * scale).float()


def vit_state(gen):
    E, P, F, G = VIT["E"], VIT["P"], VIT["F"], VIT["grid"]
    sd = {"cls_token": rnd(gen, 1, 1, E), "pos_embed": rnd(gen, 1, 1 + G * G, E),
          "patch_embed.proj.weight": rnd(gen, E, 3, P, P), "patch_embed.proj.bias": rnd(gen, E)}
    for i in range(VIT["blocks"]):
        p = "blocks.%d." % i
        sd.update({p + "norm1.weight": 1 + rnd(gen, E, scale=0.1), p + "norm1.bias": rnd(gen, E),
                   p + "attn.qkv.weight": rnd(gen, 3 * E, E), p + "attn.q_bias": rnd(gen, E),
                   p + "attn.v_bias": rnd(gen, E), p + "attn.proj.weight": rnd(gen, E, E),
                   p + "attn.proj.bias": rnd(gen, E), p + "norm2.weight": 1 + rnd(gen, E, scale=0.1),
                   p + "norm2.bias": rnd(gen, E), p + "mlp.fc1.weight": rnd(gen, F, E),
                   p + "mlp.fc1.bias": rnd(gen, F), p + "mlp.fc2.weight": rnd(gen, E, F),
                   p + "mlp.fc2.bias": rnd(gen, E)})
    return sd


def blip2_state(gen):
    Q, D, F, E = QF["Q"], QF["D"], QF["F"], VIT["E"]
    sd = {"query_tokens": rnd(gen, 1, Q, D), "Qformer.bert.embeddings.LayerNorm.weight": 1 + rnd(gen, D),
          "Qformer.bert.embeddings.LayerNorm.bias": rnd(gen, D),
          "Qformer.bert.embeddings.position_ids": torch.arange(512).unsqueeze(0),
          "ln_vision.weight": 1 + rnd(gen, E), "ln_vision.bias": rnd(gen, E),
          "t5_proj.weight": rnd(gen, 48, D), "t5_proj.bias": rnd(gen, 48)}
    for l in range(QF["layers"]):
        p = "Qformer.bert.encoder.layer.%d." % l
        parts = [("attention.self.query", D, D), ("attention.self.key", D, D), ("attention.self.value", D, D),
                 ("attention.output.dense", D, D), ("attention.output.LayerNorm", D, 0),
                 ("intermediate_query.dense", F, D), ("output_query.dense", D, F),
                 ("output_query.LayerNorm", D, 0), ("intermediate.dense", F, D), ("output.dense", D, F),
                 ("output.LayerNorm", D, 0)]
        if l % 2 == 0:
            parts += [("crossattention.self.query", D, D), ("crossattention.self.key", D, E),
                      ("crossattention.self.value", D, E), ("crossattention.output.dense", D, D),
                      ("crossattention.output.LayerNorm", D, 0)]
        for name, r, c in parts:
            sd[p + name + ".weight"] = rnd(gen, r, c) if c else 1 + rnd(gen, r, scale=0.1)
            sd[p + name + ".bias"] = rnd(gen, r)
    return sd


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    tokpath = train_tokenizer(out)
    sp = spm.SentencePieceProcessor(model_file=tokpath)
    V = sp.get_piece_size()
    cfg = dict(CFG, vocab_size=V, architectures=["LlamaForCausalLM"], model_type="llama",
               bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype="float32")
    gen = torch.Generator().manual_seed(1234)
    W = llama_weights(V, gen)
    tok_bytes = open(tokpath, "rb").read()
    for sub in ("hf_st", "hf_bin"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        with open(os.path.join(out, sub, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        with open(os.path.join(out, sub, "tokenizer.model"), "wb") as f:
            f.write(tok_bytes)
    write_safetensors(os.path.join(out, "hf_st", "model.safetensors"), W)
    names = list(W)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    wmap = {}
    for i, part in enumerate(shards):
        fn = "pytorch_model-%05d-of-%05d.bin" % (i + 1, len(shards))
        torch.save({k: W[k].clone() for k in part}, os.path.join(out, "hf_bin", fn))
        wmap.update({k: fn for k in part})
    with open(os.path.join(out, "hf_bin", "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wmap}, f)

    ids = [1] + sp.encode("hello world, describe the red cat and the blue dog")
    with open(os.path.join(out, "ids.txt"), "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    np.save(os.path.join(out, "logits.npy"), hf_forward(W, ids).numpy())

    torch.save(vit_state(gen), os.path.join(out, "eva.pth"))
    torch.save({"model": blip2_state(gen)}, os.path.join(out, "blip2.pth"))

    d, H, KV = CFG["hidden_size"], CFG["num_attention_heads"], CFG["num_key_value_heads"]
    hd = d // H
    v2 = {"llama_proj.weight": rnd(gen, d, 4 * VIT["E"]), "llama_proj.bias": rnd(gen, d)}
    pre = "llama_model.base_model.model.model.layers.%d.self_attn.%s_proj.lora_%s.weight"
    for i in range(CFG["num_hidden_layers"]):
        for proj, n_out in (("q", H * hd), ("v", KV * hd)):
            v2[pre % (i, proj, "A")] = rnd(gen, LORA_R, d)
            v2[pre % (i, proj, "B")] = rnd(gen, n_out, LORA_R)
    torch.save({"model": v2}, os.path.join(out, "v2.pth"))
    scale = 16.0 / LORA_R
    q0 = W["model.layers.0.self_attn.q_proj.weight"] + scale * (v2[pre % (0, "q", "B")] @ v2[pre % (0, "q", "A")])
    v0 = W["model.layers.0.self_attn.v_proj.weight"] + scale * (v2[pre % (0, "v", "B")] @ v2[pre % (0, "v", "A")])
    np.save(os.path.join(out, "ref_q0.npy"), permute(q0, H).numpy())
    np.save(os.path.join(out, "ref_v0.npy"), v0.numpy())
    torch.save({"model": {k: v for k, v in v2.items() if "lora" not in k}}, os.path.join(out, "v2_nolora.pth"))
    bad = dict(v2)
    bad["llama_proj.weight"] = rnd(gen, d, 4 * VIT["E"] + 4)
    torch.save({"model": bad}, os.path.join(out, "v2_badproj.pth"))
    vic = {"llama_proj.weight": rnd(gen, d, QF["D"]), "llama_proj.bias": rnd(gen, d),
           "llama_model.model.norm.weight": 1 + rnd(gen, d), "some_extra.weight": rnd(gen, 3)}
    torch.save({"model": vic}, os.path.join(out, "vicuna.pth"))
    np.save(os.path.join(out, "ref_norm_override.npy"), vic["llama_model.model.norm.weight"].numpy())

    pos = torch.load(os.path.join(out, "eva.pth"))["pos_embed"].float()
    G, E = VIT["grid"], VIT["E"]
    grid = pos[:, 1:].reshape(1, G, G, E).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(2 * G, 2 * G), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2)
    np.save(os.path.join(out, "ref_pos.npy"), torch.cat([pos[:, :1], grid], 1)[0].numpy())
    print("ok")


if __name__ == "__main__":
    main()
