#!/usr/bin/python3
"""
convert_vision_ref.py DIR - PyTorch reference for the vision side of converted MiniGPT files
(tests/test_convert_vision.c).

DIR holds the official-key checkpoints of make_official.py (eva.pth, blip2.pth, v2.pth,
vicuna.pth). The weights are loaded from those checkpoints by their official names into the
modules of vision_ref.py (EVA ViT-g blocks of eva_vit.py, the BLIP-2 Q-Former as MiniGPT-4 drives
it) with strict key matching, and the forward runs in float64:

  MiniGPT-v2 (112 px here, the 448 recipe): pos_embed interpolated 4x4 -> 8x8 with eva_vit.py's
    interpolate_pos_embed (float32, as the official loader), ViT, ln_vision at its default init
    (weight 1, bias 0: MiniGPT-v2 never loads it), CLS dropped, 4 consecutive tokens concatenated,
    llama_proj (minigpt_v2.py encode_img).
  MiniGPT-4 Vicuna (224 px): pos_embed 4x4 -> 16x16, ViT, ln_vision from the BLIP-2 file, Q-Former
    (query tokens, cross-attention every 2nd layer, query FFN), llama_proj (minigpt4.py encode_img).

Writes DIR/cv_{v2,vicuna}_img.npy (fixed random image tensors), cv_*_vit.npy (after ln_vision),
cv_vicuna_qformer.npy, cv_*_tokens.npy (all float32).
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vision_ref  # noqa: E402

torch.set_grad_enabled(False)
vision_ref.USE_MKLDNN = False  # float64 throughout: plain F.linear / matmul

E, P, F_FF, BLOCKS, HEADS = 64, 14, 96, 2, 4
QN, QD, QF_FF, QL, QH = 4, 32, 64, 2, 2


def vit_from_official(sd, img_size):
    """eva_vit.py state dict -> vision_ref.EvaViT (strict), pos_embed interpolated as the official
    loader does (float32)."""
    vit = vision_ref.EvaViT(img_size, P, E, HEADS, F_FF, BLOCKS)
    new = {}
    for k, v in sd.items():
        if k == "pos_embed":
            v = vision_ref.interpolate_pos_embed(v.float(), img_size // P)
        k = k.replace("patch_embed.proj.", "patch_embed.").replace(".mlp.fc", ".fc")
        new[k] = v
    vit.load_state_dict(new, strict=True)
    return vit.double()


def qformer_from_official(sd):
    """BLIP-2 checkpoint -> vision_ref.QFormer (strict on the query branch; the text-only
    intermediate / output layers are not used by MiniGPT-4)."""
    qf = vision_ref.QFormer(QN, QD, QH, QF_FF, E, QL, 2)
    new = {"query_tokens": sd["query_tokens"],
           "ln.weight": sd["Qformer.bert.embeddings.LayerNorm.weight"],
           "ln.bias": sd["Qformer.bert.embeddings.LayerNorm.bias"]}
    for layer in range(QL):
        p = "Qformer.bert.encoder.layer.%d." % layer
        q = "layers.%d." % layer
        parts = {"attention": "attention"}
        if layer % 2 == 0:
            parts["crossattention"] = "crossattention"
        for src, dst in parts.items():
            for a, b in (("self.query", "query"), ("self.key", "key"), ("self.value", "value"),
                         ("output.dense", "dense"), ("output.LayerNorm", "ln")):
                for wb in ("weight", "bias"):
                    new["%s%s.%s.%s" % (q, dst, b, wb)] = sd["%s%s.%s.%s" % (p, src, a, wb)]
        for a, b in (("intermediate_query.dense", "intermediate_query"), ("output_query.dense", "output_query"),
                     ("output_query.LayerNorm", "output_ln")):
            for wb in ("weight", "bias"):
                new["%s%s.%s" % (q, b, wb)] = sd["%s%s.%s" % (p, a, wb)]
    qf.load_state_dict(new, strict=True)
    return qf.double()


def linear_from(sd):
    w = sd["llama_proj.weight"]
    lin = nn.Linear(w.shape[1], w.shape[0])
    lin.load_state_dict({"weight": w, "bias": sd["llama_proj.bias"]})
    return lin.double()


def save(d, name, t):
    np.save(os.path.join(d, name + ".npy"), t.detach().float().contiguous().numpy())


def main():
    d = sys.argv[1]
    eva = torch.load(os.path.join(d, "eva.pth"))
    gen = torch.Generator().manual_seed(77)

    # MiniGPT-v2
    vit = vit_from_official(eva, 112)
    ln_vision = nn.LayerNorm(E, eps=1e-5).double()  # default init, never loaded by MiniGPT-v2
    proj = linear_from(torch.load(os.path.join(d, "v2.pth"))["model"])
    img = torch.randn(1, 3, 112, 112, generator=gen)
    e = ln_vision(vit(img.double()))
    m4 = e[:, 1:, :].reshape(1, -1, 4 * E)
    save(d, "cv_v2_img", img[0])
    save(d, "cv_v2_vit", e[0])
    save(d, "cv_v2_tokens", proj(m4)[0])

    # MiniGPT-4 (Vicuna)
    blip2 = torch.load(os.path.join(d, "blip2.pth"))["model"]
    vit = vit_from_official(eva, 224)
    ln_vision = nn.LayerNorm(E, eps=1e-5)
    ln_vision.load_state_dict({"weight": blip2["ln_vision.weight"], "bias": blip2["ln_vision.bias"]})
    ln_vision = ln_vision.double()
    qf = qformer_from_official(blip2)
    proj = linear_from(torch.load(os.path.join(d, "vicuna.pth"))["model"])
    img = torch.randn(1, 3, 224, 224, generator=gen)
    e = ln_vision(vit(img.double()))
    q = qf(e)
    save(d, "cv_vicuna_img", img[0])
    save(d, "cv_vicuna_vit", e[0])
    save(d, "cv_vicuna_qformer", q[0])
    save(d, "cv_vicuna_tokens", proj(q)[0])
    print("ok")


if __name__ == "__main__":
    main()
