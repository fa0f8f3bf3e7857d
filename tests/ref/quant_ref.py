"""quant_ref.py - independent NumPy/PyTorch reference for minigpt's element types.

Q8_0 / Q4_0 follow llama.cpp's quantize_row_q8_0_ref / quantize_row_q4_0_ref (fp32 arithmetic,
roundf = half away from zero for Q8_0, truncation after +8.5 for Q4_0, fp16 scale by IEEE RNE),
with the same guard as minigpt for non-finite products (NaN -> 0, clamp). fp16 uses numpy's
float16, bf16 uses torch.bfloat16.

Library use (other tests import it):
    quantize_q8_0(a) -> bytes, quantize_q4_0(a) -> bytes,
    dequantize_q8_0(b, n) -> float32 array, dequantize_q4_0(b, n), to_bf16_bytes(a)
Command line (run by tests/test_quant.c):
    quant_ref.py quant  IN.f32 OUTDIR    writes q8_0.bin q4_0.bin dq8_0.f32 dq4_0.f32 of IN
    quant_ref.py fp16   IN.u16 IN.f32 OUTDIR   writes h2f.f32 (halves -> f32) and f2h.u16
    quant_ref.py bf16   IN.u16 IN.f32 OUTDIR   writes b2f.f32 and f2b.u16 (via torch)
"""
import os
import sys

import numpy as np

QK = 32


def _blocks(a):
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(-1))
    if a.size % QK:
        raise ValueError("length must be a multiple of 32")
    return a.reshape(-1, QK)


def _roundf(v):
    """C roundf: nearest, halfway cases away from zero (exact in float32)."""
    t = np.trunc(v)
    frac = np.abs(v - t)  # exact: v and t share the exponent range
    return (t + np.where(frac >= np.float32(0.5), np.sign(v), np.float32(0))).astype(np.float32)


def _fp16_bytes(d):
    with np.errstate(all="ignore"):  # scales beyond 65504 become inf, as in C
        return np.asarray(d, dtype=np.float32).astype(np.float16).view(np.uint16)


def quantize_q8_0(a):
    x = _blocks(a)
    with np.errstate(all="ignore"):
        amax = np.max(np.abs(x), axis=1)
        d = (amax / np.float32(127)).astype(np.float32)
        idv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0))
        v = (x * idv[:, None].astype(np.float32)).astype(np.float32)
        v = np.where(np.isnan(v), np.float32(0), v)
        q = np.clip(_roundf(v), -127, 127).astype(np.int8)
    out = np.zeros(x.shape[0], dtype=[("d", "<u2"), ("qs", "i1", (QK,))])
    out["d"] = _fp16_bytes(d)
    out["qs"] = q
    return out.tobytes()


def quantize_q4_0(a):
    x = _blocks(a)
    with np.errstate(all="ignore"):
        idx = np.argmax(np.abs(x), axis=1)  # first index of the largest magnitude, as the C loop
        mx = x[np.arange(x.shape[0]), idx]
        d = (mx / np.float32(-8)).astype(np.float32)
        idv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0))
        v = (x * idv[:, None].astype(np.float32)).astype(np.float32) + np.float32(8.5)
        v = np.where(np.isnan(v), np.float32(8.5), v)
        q = np.trunc(np.clip(v, 0, 15)).astype(np.uint8)
    out = np.zeros(x.shape[0], dtype=[("d", "<u2"), ("qs", "u1", (QK // 2,))])
    out["d"] = _fp16_bytes(d)
    out["qs"] = q[:, : QK // 2] | (q[:, QK // 2 :] << 4)
    return out.tobytes()


def dequantize_q8_0(b, n):
    blk = np.frombuffer(b, dtype=[("d", "<u2"), ("qs", "i1", (QK,))], count=n // QK)
    d = blk["d"].view(np.float16).astype(np.float32)
    with np.errstate(all="ignore"):
        return (blk["qs"].astype(np.float32) * d[:, None]).reshape(-1).astype(np.float32)


def dequantize_q4_0(b, n):
    blk = np.frombuffer(b, dtype=[("d", "<u2"), ("qs", "u1", (QK // 2,))], count=n // QK)
    d = blk["d"].view(np.float16).astype(np.float32)
    lo = (blk["qs"] & 0x0F).astype(np.int32) - 8
    hi = (blk["qs"] >> 4).astype(np.int32) - 8
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)
    with np.errstate(all="ignore"):
        return (q * d[:, None]).reshape(-1).astype(np.float32)


def to_bf16_bytes(a):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(-1)))
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).tobytes()


def _main(argv):
    cmd = argv[1]
    if cmd == "quant":
        x = np.fromfile(argv[2], dtype=np.float32)
        out = argv[3]
        q8 = quantize_q8_0(x)
        q4 = quantize_q4_0(x)
        open(os.path.join(out, "q8_0.bin"), "wb").write(q8)
        open(os.path.join(out, "q4_0.bin"), "wb").write(q4)
        dequantize_q8_0(q8, x.size).tofile(os.path.join(out, "dq8_0.f32"))
        dequantize_q4_0(q4, x.size).tofile(os.path.join(out, "dq4_0.f32"))
    elif cmd == "fp16":
        h = np.fromfile(argv[2], dtype=np.uint16)
        f = np.fromfile(argv[3], dtype=np.float32)
        out = argv[4]
        h.view(np.float16).astype(np.float32).tofile(os.path.join(out, "h2f.f32"))
        with np.errstate(all="ignore"):
            f.astype(np.float16).view(np.uint16).tofile(os.path.join(out, "f2h.u16"))
    elif cmd == "bf16":
        import torch

        h = np.fromfile(argv[2], dtype=np.uint16)
        f = np.fromfile(argv[3], dtype=np.float32)
        out = argv[4]
        th = torch.from_numpy(h.view(np.int16).copy()).view(torch.bfloat16)
        th.to(torch.float32).numpy().tofile(os.path.join(out, "b2f.f32"))
        np.frombuffer(to_bf16_bytes(f), dtype=np.uint16).tofile(os.path.join(out, "f2b.u16"))
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    _main(sys.argv)
