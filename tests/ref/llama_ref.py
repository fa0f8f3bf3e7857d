"""
llama_ref.py - independent PyTorch reference for minigpt's LLaMA decoder (tests/test_llama.c).

Builds a random LLaMA in fp32 with its own implementation of Hugging Face's LlamaForCausalLM
math (RMSNorm, rotate-half RoPE on HF-layout q/k, GQA by repeat_interleave of the kv heads,
SwiGLU, untied head), writes it as a GGUF the way llama.cpp's convert_hf_to_gguf.py does
(q/k rows permuted for llama.cpp's adjacent-pair rope, tensor and key names of llama.cpp,
a small SentencePiece-style tokenizer), and saves reference outputs:

    OUT/llama_CFG_prompt.npy          prompt ids (float32)                         [T_p]
    OUT/llama_CFG_TYPE.gguf           the model with matrices stored as TYPE
    OUT/llama_CFG_TYPE_tokens.npy     prompt + greedy continuation ids (float32)   [T]
    OUT/llama_CFG_TYPE_logits.npy     logits at every position of tokens           [T, n_vocab]
    OUT/llama_CFG_TYPE_embd.npy       token_embd rows of the prompt (as stored)    [T_p, n_embd]

For a quantized TYPE the reference runs with the dequantized weights (quant_ref.py), so the
outputs differ from the C engine only by its arithmetic (and, for Q8_0/Q4_0 matrices, by the
Q8_0 quantization of activations that llama.cpp's matmul does).

usage: llama_ref.py tiny|wide OUTDIR [TYPE,...]   (types: f32,f16,bf16,q8_0,q4_0)
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_writer import GGUFWriter, GGML_BF16, GGML_Q4_0, GGML_Q8_0  # noqa: E402
import quant_ref  # noqa: E402

CONFIGS = {
    # n_vocab rows deliberately exceed the tokenizer's piece count (as Vicuna v0: 32001 vs 32000)
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=192, n_ctx=256, eps=1e-6,
                 theta=10000.0, extra_rows=3, n_prompt=12, n_greedy=32, types="f32,f16,bf16,q8_0,q4_0"),
    "wide": dict(n_embd=4096, n_layer=2, n_head=32, n_head_kv=32, n_ff=11008, n_ctx=4096, eps=1e-5,
                 theta=10000.0, extra_rows=0, n_prompt=8, n_greedy=32, types="f32"),
}

CORPUS = (
    "Hello world. The quick brown fox jumps over the lazy dog. Give the following image: "
    "<Img>ImageContent</Img>. You will be able to see the image once I provide it to you. "
    "Please answer my questions. Human: what is in the picture? Assistant: a cat sitting on a mat, "
    "there are two people in the room and a dog under the table. [INST] describe this image [/INST] "
    "0123456789 {<12><34><56><78>} grounding refer identify detect, this is the end of the text!"
)


# ---------------------------------------------------------------- tokenizer (SentencePiece-like)

def build_vocab():
    """<unk>, <s>, </s>, 256 byte pieces, the corpus characters, then BPE merges learned on the
    corpus (scores decrease with merge order, as SentencePiece BPE models)."""
    words = [("\u2581" + w) for w in CORPUS.split(" ")]
    seqs = [list(w) for w in words]
    pieces = []
    seen = set()
    for w in words:
        for ch in w:
            if ch not in seen:
                seen.add(ch)
                pieces.append(ch)
    for _ in range(220):
        counts = {}
        for s in seqs:
            for a, b in zip(s, s[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        (a, b), c = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        if c < 2:
            break
        merged = a + b
        if merged not in seen:
            seen.add(merged)
            pieces.append(merged)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if s[i] == a and s[i + 1] == b:
                    s[i:i + 2] = [merged]
                i += 1
    toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(toks)
    for i, p in enumerate(pieces):
        toks.append(p)
        types.append(1)
        scores.append(-float(i))
    return toks, scores, types


# ---------------------------------------------------------------- the model (HF math, fp32)

def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(W, cfg, x):
    """x: [T, d] input embeddings; returns logits [T, n_vocab]."""
    T, d = x.shape
    H, Hkv = cfg["n_head"], cfg["n_head_kv"]
    hd = d // H
    inv_freq = 1.0 / (cfg["theta"] ** (torch.arange(0, hd, 2).float() / hd))
    t = torch.arange(T).float()
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    mask = torch.full((T, T), float("-inf")).triu(1)
    h = x
    for L in W["layers"]:
        a = rmsnorm(h, L["attn_norm"], cfg["eps"])
        q = (a @ L["wq"].T).view(T, H, hd)
        k = (a @ L["wk"].T).view(T, Hkv, hd)
        v = (a @ L["wv"].T).view(T, Hkv, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        s = torch.einsum("thd,shd->hts", q, k) / (hd ** 0.5) + mask
        p = torch.softmax(s.float(), dim=-1)
        o = torch.einsum("hts,shd->thd", p, v).reshape(T, H * hd)
        h = h + o @ L["wo"].T
        m = rmsnorm(h, L["ffn_norm"], cfg["eps"])
        h = h + (torch.nn.functional.silu(m @ L["w_gate"].T) * (m @ L["w_up"].T)) @ L["w_down"].T
    return rmsnorm(h, W["output_norm"], cfg["eps"]) @ W["output"].T


def random_weights(cfg, n_vocab, seed):
    g = np.random.default_rng(seed)
    d, ff = cfg["n_embd"], cfg["n_ff"]
    hd = d // cfg["n_head"]
    kv = cfg["n_head_kv"] * hd

    def randn(*shape):
        return torch.from_numpy(g.standard_normal(shape, dtype=np.float32))

    def mat(n, k):
        return randn(n, k).mul_(1.0 / (k ** 0.5))

    def norm():
        return 1.0 + 0.1 * randn(d)

    W = {"tok_embd": randn(n_vocab, d), "layers": []}
    for _ in range(cfg["n_layer"]):
        W["layers"].append(dict(attn_norm=norm(), wq=mat(d, d), wk=mat(kv, d), wv=mat(kv, d), wo=mat(d, d),
                                ffn_norm=norm(), w_gate=mat(ff, d), w_up=mat(ff, d), w_down=mat(d, ff)))
    W["output_norm"] = norm()
    W["output"] = mat(n_vocab, d) * 2.0
    return W


# ---------------------------------------------------------------- storage types

def encode(a, typ):
    """Returns (raw bytes, ggml type, dequantized fp32 array of the same shape)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    n = a.size
    if typ == "f32":
        return a.tobytes(), 0, a
    if typ == "f16":
        h = a.astype(np.float16)
        return h.tobytes(), 1, h.astype(np.float32)
    if typ == "bf16":
        b = quant_ref.to_bf16_bytes(a)
        deq = (np.frombuffer(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        return b, GGML_BF16, deq.reshape(a.shape)
    if typ == "q8_0":
        b = quant_ref.quantize_q8_0(a)
        return b, GGML_Q8_0, quant_ref.dequantize_q8_0(b, n).reshape(a.shape)
    if typ == "q4_0":
        b = quant_ref.quantize_q4_0(a)
        return b, GGML_Q4_0, quant_ref.dequantize_q4_0(b, n).reshape(a.shape)
    raise ValueError(typ)


def permute(w, n_head):
    """llama.cpp convert_hf_to_gguf: rows of each head reordered from [half0, half1] to pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_gguf(W, cfg, typ, tok):
    """Writes W as llama.cpp would and returns (writer, weights as the reference must see them)."""
    toks, scores, types = tok
    w = GGUFWriter()
    w.add_str("general.architecture", "llama")
    w.add_str("general.name", "llama_ref random")
    w.add_u32("llama.context_length", cfg["n_ctx"])
    w.add_u32("llama.embedding_length", cfg["n_embd"])
    w.add_u32("llama.block_count", cfg["n_layer"])
    w.add_u32("llama.feed_forward_length", cfg["n_ff"])
    w.add_u32("llama.rope.dimension_count", cfg["n_embd"] // cfg["n_head"])
    w.add_u32("llama.attention.head_count", cfg["n_head"])
    w.add_u32("llama.attention.head_count_kv", cfg["n_head_kv"])
    w.add_f32("llama.attention.layer_norm_rms_epsilon", cfg["eps"])
    w.add_f32("llama.rope.freq_base", cfg["theta"])
    w.add_str("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", toks, "str")
    w.add_array("tokenizer.ggml.scores", scores, "f32")
    w.add_array("tokenizer.ggml.token_type", types, "i32")
    w.add_u32("tokenizer.ggml.bos_token_id", 1)
    w.add_u32("tokenizer.ggml.eos_token_id", 2)
    w.add_u32("tokenizer.ggml.unknown_token_id", 0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)

    R = {"layers": []}

    def mat(name, t, n_head_perm=None):
        a = t.numpy()
        raw, gt, deq = encode(permute(a, n_head_perm) if n_head_perm else a, typ)
        w.add_tensor(name, raw, gt, [a.shape[1], a.shape[0]])
        # quantization is per row, so un-permuting the dequantized rows gives the HF-layout weights
        if n_head_perm:
            hd = a.shape[0] // n_head_perm
            inv = np.argsort(permute(np.arange(a.shape[0]).reshape(-1, 1), n_head_perm).reshape(-1))
            deq = deq[inv]
            assert hd % 2 == 0
        return torch.from_numpy(np.ascontiguousarray(deq))

    def vec(name, t):
        w.add_tensor_f32(name, t.numpy())
        return t

    R["tok_embd"] = mat("token_embd.weight", W["tok_embd"])
    for i, L in enumerate(W["layers"]):
        p = "blk.%d." % i
        R["layers"].append(dict(
            attn_norm=vec(p + "attn_norm.weight", L["attn_norm"]),
            wq=mat(p + "attn_q.weight", L["wq"], cfg["n_head"]),
            wk=mat(p + "attn_k.weight", L["wk"], cfg["n_head_kv"]),
            wv=mat(p + "attn_v.weight", L["wv"]),
            wo=mat(p + "attn_output.weight", L["wo"]),
            ffn_norm=vec(p + "ffn_norm.weight", L["ffn_norm"]),
            w_gate=mat(p + "ffn_gate.weight", L["w_gate"]),
            w_up=mat(p + "ffn_up.weight", L["w_up"]),
            w_down=mat(p + "ffn_down.weight", L["w_down"])))
    R["output_norm"] = vec("output_norm.weight", W["output_norm"])
    R["output"] = mat("output.weight", W["output"])
    return w, R


def write_gguf(w, path):
    """Streams the file (header, then each tensor padded to the alignment) without building the
    whole file in memory first; same bytes as GGUFWriter.write."""
    align = w.alignment
    with open(path, "wb") as f:
        f.write(w.header_bytes())
        for _, _, _, raw in w.tensors:
            f.write(raw)
            f.write(b"\0" * ((-len(raw)) % align))


def greedy(R, cfg, prompt, n_new):
    """Greedy continuation (full recompute per step); returns ids, all-position logits, min margin."""
    ids = list(prompt)
    margin = float("inf")
    for _ in range(n_new):
        lg = forward(R, cfg, R["tok_embd"][torch.tensor(ids)])[-1]
        top2 = torch.topk(lg, 2).values
        margin = min(margin, float(top2[0] - top2[1]) / float(lg.abs().max()))
        ids.append(int(torch.argmax(lg)))
    logits = forward(R, cfg, R["tok_embd"][torch.tensor(ids)])
    return ids, logits, margin


def main():
    name, out = sys.argv[1], sys.argv[2]
    cfg = CONFIGS[name]
    types = (sys.argv[3] if len(sys.argv) > 3 else cfg["types"]).split(",")
    os.makedirs(out, exist_ok=True)
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    tok = build_vocab()
    n_tok = len(tok[0])
    n_vocab = n_tok + cfg["extra_rows"]
    rng = np.random.default_rng(1234)
    prompt = [1] + [int(x) for x in rng.integers(3, n_tok, cfg["n_prompt"] - 1)]
    np.save(os.path.join(out, "llama_%s_prompt.npy" % name), np.array(prompt, dtype=np.float32))
    # pick the first seed whose greedy runs have no near-tie (so greedy equality is a fair test)
    for seed in range(20):
        W = random_weights(cfg, n_vocab, seed)
        results = {}
        ok = True
        for typ in types:
            w, R = build_gguf(W, cfg, typ, tok)
            ids, logits, margin = greedy(R, cfg, prompt, cfg["n_greedy"])
            if typ in ("f32", "f16", "bf16") and margin < 2e-3:
                ok = False
                break
            results[typ] = (w, R, ids, logits)
        if ok:
            break
        print("llama_ref: seed %d has a greedy near-tie, trying the next" % seed)
    for typ, (w, R, ids, logits) in results.items():
        base = os.path.join(out, "llama_%s_%s" % (name, typ))
        write_gguf(w, base + ".gguf")
        np.save(base + "_tokens.npy", np.array(ids, dtype=np.float32))
        np.save(base + "_logits.npy", logits.numpy().astype(np.float32))
        np.save(base + "_embd.npy", R["tok_embd"][torch.tensor(prompt)].numpy().astype(np.float32))
    print("llama_ref: %s, %d tokenizer pieces, %d vocab rows, seed %d, types %s" %
          (name, n_tok, n_vocab, seed, ",".join(types)))


if __name__ == "__main__":
    main()
