"""
gguf_ref_files.py OUTDIR - writes the reference GGUF files of tests/test_gguf.c with the
independent writer gguf_writer.py:

    OUTDIR/ref_a64.gguf   every metadata type, five tensors, general.alignment = 64
    OUTDIR/ref_a32.gguf   the same content with the default alignment (no general.alignment key)
    OUTDIR/t_NAME.bin     the raw bytes of each tensor, in file order, for the C side to compare

The metadata values below are repeated in tests/test_gguf.c (they are inputs, not outputs).
Tensor contents are NumPy random draws with a fixed seed.
"""
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # keep tests/ref free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_writer import GGUFWriter, GGML_Q8_0  # noqa: E402


def tensors():
    rng = np.random.default_rng(1234)
    out = []
    out.append(("tok_embd.weight", "f32", rng.standard_normal((3, 5)).astype(np.float32)))
    out.append(("blk.0.attn_q.weight", "f16", rng.standard_normal((2, 3, 4)).astype(np.float16)))
    out.append(("norm", "f32", rng.standard_normal((7,)).astype(np.float32)))
    out.append(("four_d", "f32", rng.standard_normal((2, 1, 3, 2)).astype(np.float32)))
    q = rng.integers(0, 256, size=2 * 34, dtype=np.uint8)
    out.append(("blk.0.ffn_up.weight", "q8_0", q))
    return out


def fill(w, alignment):
    w.add_str("general.architecture", "llama")
    if alignment is not None:
        w.add_u32("general.alignment", alignment)
    w.add_u8("t.u8", 200)
    w.add_i8("t.i8", -100)
    w.add_u16("t.u16", 60000)
    w.add_i16("t.i16", -30000)
    w.add_u32("t.u32", 4000000000)
    w.add_i32("t.i32", -2000000000)
    w.add_u64("t.u64", 2**63 + 5)
    w.add_i64("t.i64", -(2**62) - 3)
    w.add_f32("t.f32", 0.1)
    w.add_f64("t.f64", -1e300)
    w.add_bool("t.true", True)
    w.add_bool("t.false", False)
    w.add_str("t.str", "h\u00e9llo \u2581world\n")
    w.add_str("t.empty", "")
    w.add_array("a.u8", [0, 1, 255], "u8")
    w.add_array("a.i8", [-128, 0, 127], "i8")
    w.add_array("a.u16", [0, 1, 65535], "u16")
    w.add_array("a.i16", [-32768, 0, 32767], "i16")
    w.add_array("a.u32", [0, 1, 4294967295], "u32")
    w.add_array("a.i32", [-2147483648, 0, 2147483647], "i32")
    w.add_array("a.f32", [0.5, -2.25, 1e30], "f32")
    w.add_array("a.bool", [True, False, True], "bool")
    w.add_array("a.str", ["a", "", "\u2581b<0x0A>"], "str")
    w.add_array("a.u64", [0, 1, 2**64 - 1], "u64")
    w.add_array("a.i64", [-(2**63), 0, 2**63 - 1], "i64")
    w.add_array("a.f64", [0.1, -0.0, 1e-300], "f64")
    w.add_array("a.empty", [], "i32")
    for name, kind, arr in tensors():
        if kind == "f32":
            w.add_tensor_f32(name, arr)
        elif kind == "f16":
            w.add_tensor_f16(name, arr)
        else:
            w.add_tensor(name, arr.tobytes(), GGML_Q8_0, [32, 2])


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for align, fname in ((64, "ref_a64.gguf"), (None, "ref_a32.gguf")):
        w = GGUFWriter()
        fill(w, align)
        w.write(os.path.join(out, fname))
    for name, kind, arr in tensors():
        with open(os.path.join(out, "t_%s.bin" % name), "wb") as f:
            f.write(np.ascontiguousarray(arr).tobytes())


if __name__ == "__main__":
    main()
