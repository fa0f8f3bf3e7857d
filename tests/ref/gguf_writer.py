"""
gguf_writer.py - an independent, pure Python + NumPy GGUF v3 writer used as a reference by the
tests. Its byte layout follows the one of llama.cpp's gguf-py GGUFWriter:

    magic "GGUF" | u32 version (3) | u64 n_tensors | u64 n_kv
    n_kv x (string key, u32 value type, value)          strings: u64 length + UTF-8 bytes
    n_tensors x (string name, u32 n_dims, n_dims x u64 ne (ne[0] innermost), u32 ggml type,
                 u64 offset relative to the data section)
    zero padding up to a multiple of the alignment (general.alignment, default 32)
    each tensor's bytes, each followed by zero padding up to a multiple of the alignment

Arrays are: u32 element type, u64 count, packed elements (strings as above). Bools are one byte.
Keys keep insertion order. Unlike gguf-py, empty strings and empty arrays are written (the format
allows them) and a duplicate key raises unless allow_duplicates is set (to craft bad files).

Usage:
    from gguf_writer import GGUFWriter, GGML_F32
    w = GGUFWriter(); w.add_u32("a", 1); w.add_tensor_f32("t", np.zeros((2, 3))); w.write(path)
"""
import struct

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
GGUF_DEFAULT_ALIGNMENT = 32

# ggml tensor type ids (ggml.h)
GGML_F32 = 0
GGML_F16 = 1
GGML_Q4_0 = 2
GGML_Q8_0 = 8
GGML_BF16 = 30

# block size (elements) and bytes per block, for the size check of add_tensor
_TYPE_BLOCK = {
    GGML_F32: (1, 4),
    GGML_F16: (1, 2),
    GGML_Q4_0: (32, 18),
    GGML_Q8_0: (32, 34),
    GGML_BF16: (1, 2),
}

# GGUF metadata value types (gguf.h)
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)

_NAMES = {
    "u8": T_U8, "i8": T_I8, "u16": T_U16, "i16": T_I16, "u32": T_U32, "i32": T_I32,
    "f32": T_F32, "bool": T_BOOL, "str": T_STR, "u64": T_U64, "i64": T_I64, "f64": T_F64,
}

_FMT = {
    T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i",
    T_F32: "<f", T_BOOL: "<?", T_U64: "<Q", T_I64: "<q", T_F64: "<d",
}


def _pad_to(n, align):
    return (n + align - 1) // align * align


def _enc_str(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _enc_scalar(t, v):
    if t == T_STR:
        return _enc_str(v)
    return struct.pack(_FMT[t], v)


class GGUFWriter:
    """Collects metadata and tensors, then writes one GGUF v3 file with write(path)."""

    def __init__(self, allow_duplicates=False):
        self.kv = []        # [(key, type, value, elem_type)]
        self.tensors = []   # [(name, ne list, ggml type, raw bytes)]
        self.allow_duplicates = allow_duplicates
        self.version = GGUF_VERSION

    # ---- metadata
    def _add(self, key, t, v, et=None):
        if not self.allow_duplicates and any(k == key for k, _, _, _ in self.kv):
            raise ValueError("duplicate key %r" % key)
        self.kv.append((key, t, v, et))

    def add_u8(self, k, v): self._add(k, T_U8, v)
    def add_i8(self, k, v): self._add(k, T_I8, v)
    def add_u16(self, k, v): self._add(k, T_U16, v)
    def add_i16(self, k, v): self._add(k, T_I16, v)
    def add_u32(self, k, v): self._add(k, T_U32, v)
    def add_i32(self, k, v): self._add(k, T_I32, v)
    def add_u64(self, k, v): self._add(k, T_U64, v)
    def add_i64(self, k, v): self._add(k, T_I64, v)
    def add_f32(self, k, v): self._add(k, T_F32, v)
    def add_f64(self, k, v): self._add(k, T_F64, v)
    def add_bool(self, k, v): self._add(k, T_BOOL, bool(v))
    def add_str(self, k, s): self._add(k, T_STR, s)

    def add_array(self, k, values, elem_type_name):
        if elem_type_name not in _NAMES:
            raise ValueError("unknown array element type %r" % elem_type_name)
        self._add(k, T_ARR, list(values), _NAMES[elem_type_name])

    def add_custom_alignment(self, n):
        self.add_u32("general.alignment", n)

    @property
    def alignment(self):
        for k, t, v, _ in self.kv:
            if k == "general.alignment" and t == T_U32:
                return v
        return GGUF_DEFAULT_ALIGNMENT

    # ---- tensors
    def add_tensor(self, name, raw_bytes, ggml_type, shape_ne):
        """raw_bytes: the encoded data; shape_ne: dims in GGUF order (ne[0] innermost)."""
        raw = bytes(raw_bytes)
        ne = [int(x) for x in shape_ne]
        if ggml_type in _TYPE_BLOCK:
            blk, size = _TYPE_BLOCK[ggml_type]
            n = 1
            for x in ne:
                n *= x
            if ne and ne[0] % blk != 0:
                raise ValueError("tensor %r: ne[0]=%d not a multiple of %d" % (name, ne[0], blk))
            if n // blk * size != len(raw):
                raise ValueError("tensor %r: %d bytes, expected %d" % (name, len(raw), n // blk * size))
        if any(t[0] == name for t in self.tensors):
            raise ValueError("duplicate tensor %r" % name)
        self.tensors.append((name, ne, int(ggml_type), raw))

    def add_tensor_f32(self, name, arr):
        a = np.ascontiguousarray(np.asarray(arr, dtype="<f4"))
        self.add_tensor(name, a.tobytes(), GGML_F32, list(reversed(a.shape)))

    def add_tensor_f16(self, name, arr):
        a = np.ascontiguousarray(np.asarray(arr, dtype="<f2"))
        self.add_tensor(name, a.tobytes(), GGML_F16, list(reversed(a.shape)))

    # ---- output
    def header_bytes(self):
        """Everything before the data section, padding included."""
        align = self.alignment
        out = bytearray()
        out += GGUF_MAGIC
        out += struct.pack("<IQQ", self.version, len(self.tensors), len(self.kv))
        for key, t, v, et in self.kv:
            out += _enc_str(key)
            out += struct.pack("<I", t)
            if t == T_ARR:
                out += struct.pack("<IQ", et, len(v))
                for x in v:
                    out += _enc_scalar(et, x)
            else:
                out += _enc_scalar(t, v)
        offset = 0
        for name, ne, gt, raw in self.tensors:
            out += _enc_str(name)
            out += struct.pack("<I", len(ne))
            for x in ne:
                out += struct.pack("<Q", x)
            out += struct.pack("<IQ", gt, offset)
            offset += _pad_to(len(raw), align)
        out += b"\0" * (_pad_to(len(out), align) - len(out))
        return bytes(out)

    def to_bytes(self):
        align = self.alignment
        out = bytearray(self.header_bytes())
        for _, _, _, raw in self.tensors:
            out += raw
            out += b"\0" * (_pad_to(len(raw), align) - len(raw))
        return bytes(out)

    def write(self, path):
        with open(path, "wb") as f:
            f.write(self.to_bytes())
