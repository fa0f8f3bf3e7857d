"""
e2e_ctx_ref.py - PyTorch reference for the context trimming of tests/test_e2e_ctx.c.

Chat.answer_prepare (MiniGPT-4 conversation.py) keeps only the last rows of the prompt embeddings
and hands them to generate() as inputs_embeds, so the kept rows take positions 0.. afresh. This
script rebuilds such a kept window independently of the C engine - token rows from the GGUF's
token_embd, image rows from e2e_ref.py's own image tokens (v2_img_tokens.npy, computed in PyTorch) -
and runs llama_ref.forward on it.

    e2e_ctx_ref.py MODEL.gguf IMG_TOKENS.npy ROWS.npy OUT.npy

ROWS is float32 [n, 2]: (token id, -1) for a text row, (-1, image row index) for an image row.
OUT receives the logits of the last row [n_vocab].
"""
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402

torch.set_grad_enabled(False)


def read_gguf(path, wanted):
    """The metadata and the f32 tensors whose name satisfies wanted(name), as numpy arrays in
    PyTorch's [rows, cols] order."""
    b = open(path, "rb").read()
    pos = 0

    def rd(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return v

    def rstr():
        nonlocal pos
        n = rd("Q")
        s = b[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def rval(t):
        if t == 8:
            return rstr()
        if t == 9:
            et, n = rd("I"), rd("Q")
            return [rval(et) for _ in range(n)]
        return rd(scalar[t])

    assert b[:4] == b"GGUF"
    pos = 4
    rd("I")
    n_tensors, n_kv = rd("Q"), rd("Q")
    kv = {}
    for _ in range(n_kv):
        k = rstr()
        kv[k] = rval(rd("I"))
    infos = []
    for _ in range(n_tensors):
        name = rstr()
        ne = [rd("Q") for _ in range(rd("I"))]
        infos.append((name, ne, rd("I"), rd("Q")))
    align = kv.get("general.alignment", 32)
    data = (pos + align - 1) // align * align
    out = {}
    for name, ne, typ, off in infos:
        if not wanted(name):
            continue
        assert typ == 0, "%s: only f32 tensors are expected in the e2e models" % name
        n = int(np.prod(ne))
        out[name] = np.frombuffer(b, dtype="<f4", count=n, offset=data + off).reshape(list(reversed(ne))).copy()
    return kv, out


def unpermute(w, n_head):
    """Inverse of llama.cpp's q/k row permutation (llama_ref.permute): back to HF's layout."""
    idx = llama_ref.permute(np.arange(w.shape[0]).reshape(-1, 1), n_head).reshape(-1)
    return w[np.argsort(idx)]


def main():
    model, img_path, rows_path, out_path = sys.argv[1:5]
    kv, T = read_gguf(model, lambda n: not n.startswith(("v.", "mm.")))
    # the MiniGPT files keep the language model's keys under "llama." (set_arch in e2e_ref.py)
    arch = "llama" if "llama.embedding_length" in kv else kv["general.architecture"]
    cfg = dict(n_embd=kv[arch + ".embedding_length"], n_layer=kv[arch + ".block_count"],
               n_head=kv[arch + ".attention.head_count"], n_head_kv=kv[arch + ".attention.head_count_kv"],
               eps=kv[arch + ".attention.layer_norm_rms_epsilon"], theta=kv[arch + ".rope.freq_base"])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    W = {"layers": [], "output_norm": t(T["output_norm.weight"]), "output": t(T["output.weight"])}
    for i in range(cfg["n_layer"]):
        p = "blk.%d." % i
        W["layers"].append(dict(
            attn_norm=t(T[p + "attn_norm.weight"]),
            wq=t(unpermute(T[p + "attn_q.weight"], cfg["n_head"])),
            wk=t(unpermute(T[p + "attn_k.weight"], cfg["n_head_kv"])),
            wv=t(T[p + "attn_v.weight"]), wo=t(T[p + "attn_output.weight"]),
            ffn_norm=t(T[p + "ffn_norm.weight"]), w_gate=t(T[p + "ffn_gate.weight"]),
            w_up=t(T[p + "ffn_up.weight"]), w_down=t(T[p + "ffn_down.weight"])))
    tok_embd = t(T["token_embd.weight"])
    img = t(np.load(img_path).astype(np.float32))
    rows = np.load(rows_path).astype(np.int64)
    E = torch.stack([tok_embd[i] if i >= 0 else img[r] for i, r in rows])
    logits = llama_ref.forward(W, cfg, E)[-1]
    np.save(out_path, logits.numpy().astype(np.float32))


if __name__ == "__main__":
    main()
