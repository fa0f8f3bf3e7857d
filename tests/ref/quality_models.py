#!/usr/bin/python3
"""
quality_models.py - f32 GGUF files with real-width random weights for the "Measured quality"
table of docs/QUANTIZATION.md (`minigpt quantize` makes the other types, `minigpt quality`
compares them with the f32 file). Random weights: the numbers compare storage types with each
other, they do not predict the loss of a trained model.

  quality_models.py llama OUT.gguf [N_LAYER [N_VOCAB]]
      LLaMA of LLaMA-7B width (d=4096, 32 heads, FFN 11008) with N_LAYER blocks (default 2) and
      N_VOCAB embedding / output rows (default 32000; the tokenizer is llama_ref.py's small one,
      the other rows are ordinary rows). Weights: llama_ref.random_weights (fixed seed,
      activations of order 1), stored as convert_hf_to_gguf.py would.
  quality_models.py vit OUT.gguf [N_BLOCK [IMAGE]]
      vision-only GGUF of EVA ViT-g width (1408, 16 heads x 88, MLP 6144) with N_BLOCK blocks
      (default 4) at IMAGE px (default 224), MiniGPT-v2's merge-4 projection to 4096 and an
      identity ln_vision; weights vision_ref.randomize (fixed seed).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import vision_ref  # noqa: E402
from gguf_writer import GGUFWriter  # noqa: E402


def llama(out, n_layer=2, n_vocab=32000):
    cfg = dict(llama_ref.CONFIGS["wide"], n_layer=n_layer)
    tok = llama_ref.build_vocab()
    if n_vocab < len(tok[0]):
        sys.exit("N_VOCAB must be at least the tokenizer's %d pieces" % len(tok[0]))
    W = llama_ref.random_weights(cfg, n_vocab, 1)
    w, _ = llama_ref.build_gguf(W, cfg, "f32", tok)
    del W
    llama_ref.write_gguf(w, out)
    print("wrote %s: llama, %d layers, d=%d, %d vocab rows" % (out, n_layer, cfg["n_embd"], n_vocab))


def vit(out, n_block=4, image=224):
    hp = dict(image=image, patch=14, dim=1408, heads=16, ff=6144, blocks=n_block)
    gen = torch.Generator().manual_seed(5)
    model = vision_ref.EvaViT(image, 14, hp["dim"], hp["heads"], hp["ff"], n_block)
    proj = vision_ref.Linear(4 * hp["dim"], 4096)
    for m in (model, proj):
        vision_ref.randomize(m, gen)
    w = GGUFWriter()
    w.add_str("general.architecture", "minigptv2")
    w.add_str("general.name", "quality_models random ViT")
    w.add_str("minigpt.projector_type", "merge4")
    vision_ref.add_vit(w, model, None, hp, model.pos_embed)
    w.add_tensor_f32("mm.proj.weight", vision_ref.f32(proj.weight))
    w.add_tensor_f32("mm.proj.bias", vision_ref.f32(proj.bias))
    vision_ref.write_gguf(w, out)
    print("wrote %s: EVA ViT width 1408, %d blocks, %d px, merge-4 projection to 4096" % (out, n_block, image))


def main():
    torch.set_grad_enabled(False)
    what, out = sys.argv[1], sys.argv[2]
    args = [int(a) for a in sys.argv[3:]]
    {"llama": llama, "vit": vit}[what](out, *args)


if __name__ == "__main__":
    main()
