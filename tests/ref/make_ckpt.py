#!/usr/bin/env python3
"""make_ckpt.py OUTDIR - reference checkpoints for tests/test_ckpt.c, written by PyTorch itself.

Writes torch.save files (zip and legacy format, bare and {"model": ...} wrapped, with strided
views, shared storages, fp32/fp16/bf16/int64/... tensors, 0-dim and empty tensors), a deflated
and a zip64 re-packing of a torch zip (both checked with Python's zipfile and torch.load), a
.safetensors file written from the format description, sharded HF folders (safetensors and .bin
with an index), and malicious pickles whose payload Python's own loader would run.

OUTDIR/cases.txt lists "checkpoint-path manifest-path"; a manifest has one line per tensor:
"name<TAB>dtype<TAB>d0,d1,..<TAB>stem" with stem.raw (contiguous bytes in the tensor's dtype)
and stem.npy (the values as float32).
"""
import collections
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import torch

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)

DTYPE_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
               torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
               torch.uint8: "u8", torch.bool: "bool"}
ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}


def raw_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def flatten(obj, prefix=""):
    """Tensors of a nested dict/list, named as the C loader names them."""
    out = []
    if isinstance(obj, torch.Tensor):
        out.append((prefix, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, (str, int)) and not isinstance(k, bool):
                out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += flatten(v, f"{prefix}.{i}" if prefix else str(i))
    return out


dumped = {}


def manifest(tag, obj):
    """Writes OUT/tag.manifest and the .raw/.npy reference of every tensor of obj."""
    lines = []
    os.makedirs(os.path.join(OUT, "ref"), exist_ok=True)
    for i, (name, t) in enumerate(flatten(obj)):
        stem = os.path.join("ref", f"{tag}_{i}")
        with open(os.path.join(OUT, stem + ".raw"), "wb") as f:
            f.write(raw_bytes(t))
        np.save(os.path.join(OUT, stem + ".npy"), t.detach().float().contiguous().numpy().astype("<f4"))
        shape = ",".join(str(d) for d in t.shape)
        lines.append(f"{name}\t{DTYPE_NAMES[t.dtype]}\t{shape}\t{stem}\n")
    path = os.path.join(OUT, tag + ".manifest")
    with open(path, "w") as f:
        f.writelines(lines)
    return path


cases = []


def case(ckpt_path, manifest_path):
    cases.append(f"{os.path.relpath(ckpt_path, OUT)} {os.path.relpath(manifest_path, OUT)}\n")


# ---- a state dict with official-looking names, dtypes and views ----
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.visual_encoder = torch.nn.Module()
        self.visual_encoder.blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.visual_encoder.blocks[0].attn = Block()
        self.llama_proj = torch.nn.Linear(8, 6)
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([torch.nn.Module()])
        self.model.layers[0].self_attn = torch.nn.Module()
        self.model.layers[0].self_attn.q_proj = torch.nn.Linear(8, 8, bias=False)
        self.register_buffer("position_ids", torch.arange(12).reshape(1, 12))


sd = Toy().state_dict()  # an OrderedDict with _metadata (pickled with BUILD)
base = torch.randn(6, 4)
base2 = torch.randn(7, 5)
shared = torch.randn(3, 5)
sd["half.weight"] = torch.randn(5, 3).half()
sd["half.transposed"] = torch.randn(3, 9).half().t()
sd["bf16.weight"] = torch.randn(4, 7).bfloat16()
sd["f64"] = torch.randn(2, 3, dtype=torch.float64)
sd["ids.int64"] = torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4) * 1000003
sd["int32"] = torch.arange(-3, 3, dtype=torch.int32)
sd["u8"] = torch.arange(250, 256).to(torch.uint8)
sd["mask"] = torch.tensor([True, False, True])
sd["view.transposed"] = base.t()
sd["view.slice"] = base2[2:5]
sd["view.colslice"] = base2[1:, 1:3]
sd["view.step"] = base2[::2, ::3]
sd["shared.a"] = shared
sd["shared.b"] = shared[1]
sd["expand"] = torch.arange(3.0).expand(4, 3)
sd["scalar"] = torch.tensor(3.5)
sd["one"] = torch.tensor([7.25])
sd["empty"] = torch.zeros(0, 3)
sd["deep.permuted"] = torch.randn(2, 3, 4).permute(2, 0, 1)

wrapped = {
    "model": sd,
    "optimizer": {"state": {0: {"step": 3, "exp_avg": torch.randn(6, 8)}},
                  "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]},
    "config": {"run": {"name": "stage2", "amp": True}, "seed": 42},
    "epoch": 2,
    "scaler": {"scale": 65536.0, "growth_factor": 2.0},
    "extra": {"param": torch.nn.Parameter(torch.randn(2, 2))},
}

m_plain = manifest("plain", sd)
m_wrapped = manifest("wrapped", wrapped)
for fmt, new in (("zip", True), ("legacy", False)):
    for tag, obj, man in (("plain", sd, m_plain), ("wrapped", wrapped, m_wrapped)):
        p = os.path.join(OUT, f"{fmt}_{tag}.pth")
        torch.save(obj, p, _use_new_zipfile_serialization=new)
        case(p, man)

# ---- the same zip re-packed: deflated with another folder name; and zip64 ----
src = zipfile.ZipFile(os.path.join(OUT, "zip_plain.pth"))
p = os.path.join(OUT, "zip_deflate.pth")
with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as dst:
    for n in src.namelist():
        dst.writestr("renamed_folder/" + n.split("/", 1)[1], src.read(n))
assert zipfile.ZipFile(p).testzip() is None
case(p, m_plain)


def write_zip64(path, members):
    """Stored entries with zip64 extra fields and a zip64 end record, per APPNOTE 4.3/4.5."""
    out = bytearray()
    central = bytearray()
    for name, data in members:
        nb = name.encode()
        crc = zlib.crc32(data)
        off = len(out)
        ext = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(nb), len(ext)) + nb + ext + data
        cext = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(nb), len(cext), 0, 0, 0, 0, 0xFFFFFFFF) + nb + cext
    cd_off = len(out)
    out += central
    eocd64_off = len(out)
    n = len(members)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, eocd64_off, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(out)


p = os.path.join(OUT, "zip64.pth")
write_zip64(p, [(n, src.read(n)) for n in src.namelist()])
z = zipfile.ZipFile(p)
assert z.testzip() is None and z.namelist() == src.namelist()
for path in ("zip_deflate.pth", "zip64.pth"):
    back = torch.load(os.path.join(OUT, path))
    assert all(torch.equal(back[k], v) for k, v in sd.items()), path
case(p, m_plain)


# ---- safetensors, written from the format description ----
def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        b = raw_bytes(t)
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


st = collections.OrderedDict((k, v.contiguous()) for k, v in sd.items())
p = os.path.join(OUT, "model.safetensors")
write_safetensors(p, st, {"format": "pt"})
case(p, manifest("st", st))

names = list(st.keys())
halves = (names[: len(names) // 2], names[len(names) // 2:])
for kind in ("st", "bin"):
    d = os.path.join(OUT, f"{kind}_sharded")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    weight_map = {}
    for i, part in enumerate(halves):
        shard = {k: st[k] for k in part}
        if kind == "st":
            fn = f"model-0000{i + 1}-of-00002.safetensors"
            write_safetensors(os.path.join(d, fn), shard)
        else:  # one zip shard and one legacy shard
            fn = f"pytorch_model-0000{i + 1}-of-00002.bin"
            torch.save(shard, os.path.join(d, fn), _use_new_zipfile_serialization=(i == 0))
        weight_map.update({k: fn for k in part})
    index = "model.safetensors.index.json" if kind == "st" else "pytorch_model.bin.index.json"
    with open(os.path.join(d, index), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)
    case(d, os.path.join(OUT, "st.manifest"))
case(os.path.join(OUT, "st_sharded", "model.safetensors.index.json"), os.path.join(OUT, "st.manifest"))

with open(os.path.join(OUT, "cases.txt"), "w") as f:
    f.writelines(cases)

# ---- malicious pickles: Python's loader would run the payload ----
CMD = 'touch "$MG_PWNED_DIR/PWNED"'


class Evil:
    def __reduce__(self):
        return (os.system, (CMD,))


def torch_zip_with_pickle(path, pkl):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")


cmd_b = CMD.encode()
global_pkl = b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(cmd_b)) + cmd_b + b"\x85R."
eval_src = f"__import__('os').system('{CMD}')".encode()
eval_pkl = b"\x80\x02cbuiltins\neval\nX" + struct.pack("<I", len(eval_src)) + eval_src + b"\x85R."
stack_pkl = pickle.dumps(Evil(), protocol=4)
assert b"\x93" in stack_pkl  # STACK_GLOBAL
evil = {
    "evil_global": ("posix.system", global_pkl),
    "evil_eval": ("builtins.eval", eval_pkl),
    "evil_stack_global": ("posix.system", stack_pkl),
}
lines = []
proof_root = os.path.join(OUT, "proof")
shutil.rmtree(proof_root, ignore_errors=True)
for tag, (glob, pkl) in evil.items():
    p = os.path.join(OUT, tag + ".pth")
    torch_zip_with_pickle(p, pkl)
    lines.append(f"{tag}.pth {glob}\n")
for tag, new in (("evil_reduce_obj", True), ("evil_reduce_legacy", False)):
    torch.save({"w": torch.ones(2), "evil": Evil()}, os.path.join(OUT, tag + ".pth"),
               _use_new_zipfile_serialization=new)
    lines.append(f"{tag}.pth posix.system\n")
with open(os.path.join(OUT, "evil.txt"), "w") as f:
    f.writelines(lines)

# Proof that the files are live: torch.load (in one child process) runs each payload.
proof = ("import os, sys, torch\n"
         "for fn, d in zip(sys.argv[1::2], sys.argv[2::2]):\n"
         "    os.environ['MG_PWNED_DIR'] = d\n"
         "    try:\n"
         "        torch.load(fn)\n"
         "    except Exception:\n"
         "        pass\n")
args = []
for line in lines:
    fn = line.split()[0]
    d = os.path.join(proof_root, fn)
    os.makedirs(d)
    args += [os.path.join(OUT, fn), d]
subprocess.run([sys.executable, "-c", proof] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
# ---- malformed files and the error each must give (bad.txt: "path<TAB>substring") ----
bad = []


def bad_zip(tag, pkl, storages, expect):
    p = os.path.join(OUT, tag + ".pth")
    with zipfile.ZipFile(p, "w") as z:
        if pkl is not None:
            z.writestr("archive/data.pkl", pkl)
        for k, b in storages.items():
            z.writestr(f"archive/data/{k}", b)
    bad.append(f"{tag}.pth\t{expect}\n")


def tensor_pkl(key, size, stride, offset=0, wrap=lambda t: {"w": t}):
    """A pickle (written by Python's pickler) of _rebuild_tensor_v2 over storage `key`."""
    class Storage:
        pass

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, key, "cpu", 4) if isinstance(obj, Storage) else None

    class T:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (Storage(), offset, size, stride, False, collections.OrderedDict()))

    import io
    buf = io.BytesIO()
    P(buf, protocol=2).dump(wrap(T()))
    return buf.getvalue()


f4 = struct.pack("<4f", 1, 2, 3, 4)
bad_zip("bad_extent", tensor_pkl("0", (5,), (1,)), {"0": f4}, "reaches past its storage")
bad_zip("bad_extent2", tensor_pkl("0", (2, 2), (1, 2), 1), {"0": f4}, "reaches past its storage")
bad_zip("bad_missing_storage", tensor_pkl("7", (2,), (1,)), {"0": f4}, "missing entry 'archive/data/7'")
bad_zip("bad_no_pkl", None, {"0": f4}, "data.pkl")
bad_zip("bad_cycle", b"\x80\x02]q\x00h\x00ah\x00a.", {}, "too")
bad_zip("bad_dup_names", tensor_pkl("0", (2,), (1,), wrap=lambda t: {"x.y": t, "x": {"y": t}}), {"0": f4},
        "duplicate tensor name 'x.y'")


def bad_st(tag, header, data, expect, raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    with open(os.path.join(OUT, tag + ".safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
    bad.append(f"{tag}.safetensors\t{expect}\n")


e = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
bad_st("st_overlap", {"a": e, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "overlap")
bad_st("st_dtype", {"a": dict(e, dtype="F8_E4M3")}, bytes(8), "unsupported dtype 'F8_E4M3'")
bad_st("st_offsets", {"a": dict(e, data_offsets=[0, 16])}, bytes(8), "bad data_offsets")
bad_st("st_offsets_neg", {"a": dict(e, data_offsets=[-8, 0])}, bytes(8), "bad data_offsets")
bad_st("st_shape", {"a": dict(e, shape=[3])}, bytes(8), "does not match its shape")
bad_st("st_shape_neg", {"a": dict(e, shape=[-2])}, bytes(8), "bad shape")
bad_st("st_shape_huge", {"a": dict(e, shape=[2**62, 2**62])}, bytes(8), "bad shape")
bad_st("st_not_object", None, bytes(8), "not a JSON object", raw_header=b"[1, 2]  ")
bad_st("st_dup", None, bytes(8), "duplicate", raw_header=b'{"a": 1, "a": 2}')
bad_st("st_json", None, bytes(8), "header JSON", raw_header=b'{"a": {')
bad_st("st_entry", {"a": [1, 2]}, bytes(8), "bad header entry")
with open(os.path.join(OUT, "st_hlen.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", 2**63) + b"{}")
bad.append("st_hlen.safetensors\tunknown format\n")

for tag, wm, expect in (("idx_escape", {"a": "../model.safetensors"}, "bad shard name"),
                        ("idx_wrong_shard", {"nope": "model.safetensors"}, "'nope' is not in shard"),
                        ("idx_no_map", None, "weight_map")):
    d = os.path.join(OUT, tag)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    write_safetensors(os.path.join(d, "model.safetensors"), {"a": torch.ones(2)})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": wm} if wm is not None else {"metadata": {}}, f)
    bad.append(f"{tag}\t{expect}\n")
os.makedirs(os.path.join(OUT, "empty_dir"), exist_ok=True)
bad.append("empty_dir\tno model.safetensors\n")
with open(os.path.join(OUT, "garbage.bin"), "wb") as f:
    f.write(b"hello world, not a checkpoint")
bad.append("garbage.bin\tunknown format\n")
with open(os.path.join(OUT, "bad.txt"), "w") as f:
    f.writelines(bad)

print("make_ckpt: wrote", len(cases), "cases and", len(lines), "malicious files to", OUT)
