#!/usr/bin/python3
"""image_ref.py - the reference side of the image tests: builds a corpus of JPEG/PNG/WebP/BMP
files (Pillow's encoders plus hand-written PNG and BMP variants Pillow cannot write) and records
what Pillow 9.4 and torch make of them, exactly as MiniGPT's preprocessing does.

usage: /usr/bin/python3 tests/ref/image_ref.py OUTDIR [--quick]

Writes into OUTDIR:
  NAME.EXT             the encoded image
  NAME.rgb             Image.open(NAME.EXT).convert('RGB') as raw uint8 [h, w, 3]
  NAME.WxH.rgb         that image .resize((W, H), Image.BICUBIC), raw uint8
  NAME.S.npy           float32 [3, S, S]: ToTensor + Normalize(CLIP mean/std) of the S x S resize,
                       computed with torch the way torchvision does it
  manifest.txt         "D NAME FILE W H" (decode), "R NAME W H" (resize), "T NAME S" (tensor)
  trunc.txt            "NAME FILE LEN OK HASH": Pillow's verdict on the file cut to LEN bytes
                       (OK 1/0) and weighted_hash() of its RGB bytes when OK
"""
import io
import os
import struct
import sys
import warnings
import zlib

import numpy as np
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def content(w, h, seed):
    """Smooth gradients, hard edges and noise: something every codec and filter has to work on."""
    rng = np.random.default_rng(seed)
    x = np.arange(w, dtype=np.float32)[None, :]
    y = np.arange(h, dtype=np.float32)[:, None]
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:, :, 0] = 255 * x / max(w - 1, 1)
    img[:, :, 1] = 255 * y / max(h - 1, 1)
    img[:, :, 2] = 127.5 + 127.5 * np.sin(x / 7.0 + seed) * np.cos(y / 5.0)
    img[((x // 16 + y // 16) % 2) == 1] *= 0.6
    img += rng.integers(-40, 41, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def weighted_hash(data):
    """sum of byte[i] * (i * 2654435761 + 1) modulo 2**64 (the C test computes the same)."""
    a = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
    i = np.arange(len(a), dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(np.sum((i * np.uint64(2654435761) + np.uint64(1)) * a, dtype=np.uint64))


# ---- hand-written PNG -------------------------------------------------------------------------

def png_chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def png_pack_rows(samples, depth):
    """samples: int array [h, w*channels] -> list of packed row bytes."""
    rows = []
    for r in samples:
        if depth == 16:
            rows.append(r.astype(">u2").tobytes())
        elif depth == 8:
            rows.append(r.astype(np.uint8).tobytes())
        else:
            per = 8 // depth
            n = (len(r) + per - 1) // per
            out = bytearray(n)
            for i, v in enumerate(r):
                out[i // per] |= int(v) << (8 - depth * (i % per + 1))
            rows.append(bytes(out))
    return rows


def write_png(path, arr, color_type, depth, plte=None, trns=None, interlace=False):
    """arr: [h, w, channels] integer samples."""
    h, w = arr.shape[:2]
    ch = arr.reshape(h, w, -1)
    raw = b""
    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                  (0, 1, 1, 2)]
        for xs, ys, dx, dy in passes:
            sub = ch[ys::dy, xs::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for row in png_pack_rows(sub.reshape(sub.shape[0], -1), depth):
                raw += b"\0" + row
    else:
        for row in png_pack_rows(ch.reshape(h, -1), depth):
            raw += b"\0" + row
    s = b"\x89PNG\r\n\x1a\n" + png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 1 if interlace else 0))
    if plte is not None:
        s += png_chunk(b"PLTE", bytes(plte))
    if trns is not None:
        s += png_chunk(b"tRNS", bytes(trns))
    s += png_chunk(b"IDAT", zlib.compress(raw, 6)) + png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(s)


# ---- hand-written BMP -------------------------------------------------------------------------

def write_bmp(path, w, h, bits, rows, palette=None, header=40, compression=0, masks=None,
              top_down=False, pixel_data=None, colors_used=0, pal_pad=4, zero_offset=False):
    """rows: list of h byte strings (top row first) of unpadded pixel data, or pixel_data given."""
    if pixel_data is None:
        stride = ((w * bits + 31) >> 3) & ~3
        ordered = rows if top_down else rows[::-1]
        pixel_data = b"".join(r + b"\0" * (stride - len(r)) for r in ordered)
    pal = b""
    if palette is not None:
        pal = b"".join(bytes([b, g, r]) + (b"\0" if pal_pad == 4 else b"") for r, g, b in palette)
    extra = b""
    if header == 12:
        hdr = struct.pack("<IHHHH", 12, w, h, 1, bits)
    else:
        hh = (2**32 - h) if top_down else h
        hdr = struct.pack("<IiIHHIIiiII", header, w, hh, 1, bits, compression, len(pixel_data),
                          2835, 2835, colors_used, 0)
        if masks is not None and header >= 56:
            hdr += struct.pack("<IIII", *masks)
        elif masks is not None:
            extra = struct.pack("<III", *masks[:3])
        hdr += b"\0" * (header - len(hdr))
    offset = 14 + len(hdr) + len(extra) + len(pal)
    body = hdr + extra + pal + pixel_data
    head = b"BM" + struct.pack("<IHHI", 14 + len(body), 0, 0, 0 if zero_offset else offset)
    with open(path, "wb") as f:
        f.write(head + body)


def rle8_encode(idx_rows):
    """Bottom-up RLE8 with encoded runs, absolute runs, an end-of-line and end-of-bitmap."""
    out = bytearray()
    for r in idx_rows[::-1]:
        r = list(r)
        i = 0
        while i < len(r):
            j = i
            while j < len(r) and r[j] == r[i] and j - i < 255:
                j += 1
            if j - i >= 3 or len(r) - i < 3:
                out += bytes([j - i, r[i]])
                i = j
            else:
                n = min(len(r) - i, 20)
                if n < 3:
                    out += bytes([1, r[i]])
                    i += 1
                    continue
                out += bytes([0, n]) + bytes(r[i:i + n])
                if n % 2:
                    out += b"\0"
                i += n
        out += b"\0\0"
    out += b"\0\1"
    return bytes(out)


def rle4_encode(idx_rows):
    """Bottom-up RLE4 with encoded runs of two alternating nibbles."""
    out = bytearray()
    for r in idx_rows[::-1]:
        r = list(r)
        for i in range(0, len(r), 2):
            a = r[i]
            b = r[i + 1] if i + 1 < len(r) else 0
            out += bytes([min(2, len(r) - i), (a << 4) | b])
        out += b"\0\0"
    out += b"\0\1"
    return bytes(out)


# ---- the corpus -------------------------------------------------------------------------------

def build(out, quick):
    items = []  # (name, file)

    def add(name, ext):
        items.append((name, f"{name}.{ext}"))
        return os.path.join(out, f"{name}.{ext}")

    def rgb(w, h, seed):
        return Image.fromarray(content(w, h, seed), "RGB")

    big = (1000, 750) if quick else (4000, 3000)
    # JPEG
    rgb(640, 480, 1).save(add("jpeg_420", "jpg"), quality=90, subsampling=2)
    rgb(641, 479, 2).save(add("jpeg_444", "jpg"), quality=95, subsampling=0)
    rgb(333, 251, 3).save(add("jpeg_422", "jpg"), quality=75, subsampling=1)
    rgb(500, 375, 4).save(add("jpeg_progressive", "jpg"), quality=85, progressive=True)
    rgb(300, 200, 5).save(add("jpeg_optimized", "jpg"), quality=60, optimize=True)
    rgb(257, 190, 6).convert("L").save(add("jpeg_gray", "jpg"), quality=90)
    cmyk = np.concatenate([content(211, 157, 7), content(211, 157, 8)[:, :, :1]], axis=-1)
    Image.frombytes("CMYK", (211, 157), cmyk.tobytes()).save(add("jpeg_cmyk", "jpg"), quality=90)
    rgb(1, 1, 9).save(add("jpeg_1x1", "jpg"))
    rgb(2, 3, 10).save(add("jpeg_2x3", "jpg"))
    rgb(13, 997, 11).save(add("jpeg_13x997", "jpg"))
    rgb(997, 13, 12).save(add("jpeg_997x13", "jpg"))
    rgb(big[0], big[1], 13).save(add("jpeg_big", "jpg"), quality=92)
    rgb(100, 100, 14).save(add("jpeg_100", "jpg"))  # upscaling
    rgb(224, 224, 15).save(add("jpeg_224", "jpg"))  # identity at 224
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": MiniGPT's plain open().convert() ignores it, and so must we
    rgb(120, 80, 16).save(add("jpeg_exif_rotated", "jpg"), exif=exif.tobytes())
    # PNG written by Pillow
    rgb(301, 199, 20).save(add("png_rgb", "png"))
    rgba = np.concatenate([content(160, 120, 21), content(160, 120, 22)[:, :, :1]], axis=-1)
    Image.fromarray(rgba, "RGBA").save(add("png_rgba", "png"))
    Image.fromarray(rgba[:, :, [0, 3]], "LA").save(add("png_la", "png"))
    rgb(150, 97, 23).convert("L").save(add("png_gray", "png"))
    rgb(99, 61, 24).convert("1").save(add("png_1bit", "png"))
    p = rgb(200, 133, 25).quantize(colors=200)
    p.save(add("png_palette_trns", "png"), transparency=bytes(range(0, 250, 5)))
    rgb(200, 133, 26).quantize(colors=12).save(add("png_palette4", "png"), bits=4)
    rgb(1, 1, 27).save(add("png_1x1", "png"))
    rgb(2, 3, 28).save(add("png_2x3", "png"))
    rgb(13, 997, 29).save(add("png_13x997", "png"))
    rgb(997, 13, 30).save(add("png_997x13", "png"))
    g16 = (content(123, 77, 31)[:, :, 0].astype(np.int32) * 3 - 100).clip(0, 65535) * 1
    g16[0, :10] = [0, 1, 254, 255, 256, 1000, 65535, 32768, 12345, 128]
    Image.fromarray(g16.astype(np.uint16), "I;16").save(add("png_gray16_pil", "png"))
    # PNG written by hand (bit depths and layouts Pillow does not write)
    rng = np.random.default_rng(40)
    c16 = content(97, 71, 41).astype(np.int64) * 257 + rng.integers(0, 257, (71, 97, 3))
    write_png(add("png_rgb16", "png"), c16, 2, 16)
    a16 = rng.integers(0, 65536, (71, 97, 1))
    write_png(add("png_rgba16", "png"), np.concatenate([c16, a16], axis=-1), 6, 16)
    write_png(add("png_la16", "png"), np.concatenate([c16[:, :, :1], a16], axis=-1), 4, 16)
    write_png(add("png_gray16", "png"), c16[:, :, :1] // 200, 0, 16)
    write_png(add("png_gray2", "png"), content(37, 29, 42)[:, :, :1] // 64, 0, 2)
    write_png(add("png_gray4", "png"), content(37, 29, 43)[:, :, :1] // 16, 0, 4,
              trns=struct.pack(">H", 3))
    idx = rng.integers(0, 16, (45, 51, 1))
    short_plte = bytes(rng.integers(0, 256, 10 * 3).astype(np.uint8))  # 10 entries, indices to 15
    write_png(add("png_palette_short", "png"), idx, 3, 4, plte=short_plte, trns=b"\x00\x80")
    write_png(add("png_palette1", "png"), idx % 2, 3, 1, plte=b"\x10\x20\x30\xf0\xe0\xd0")
    write_png(add("png_palette2", "png"), idx % 4, 3, 2, plte=short_plte[:12])
    write_png(add("png_interlaced", "png"), content(67, 43, 44), 2, 8, interlace=True)
    write_png(add("png_interlaced16", "png"), c16[:, :, :1] // 100, 0, 16, interlace=True)
    write_png(add("png_interlaced_pal", "png"), idx, 3, 4, plte=short_plte, interlace=True)
    write_png(add("png_interlaced_tiny", "png"), content(3, 2, 45), 2, 8, interlace=True)
    write_png(add("png_rgb_trns", "png"), content(40, 30, 46), 2, 8, trns=struct.pack(">HHH", 1, 2, 3))
    # WebP
    rgb(320, 240, 50).save(add("webp_lossy", "webp"), quality=80)
    rgb(203, 151, 51).save(add("webp_lossless", "webp"), lossless=True)
    Image.fromarray(rgba, "RGBA").save(add("webp_lossy_alpha", "webp"), quality=70)
    Image.fromarray(rgba, "RGBA").save(add("webp_lossless_alpha", "webp"), lossless=True)
    rgb(1, 1, 52).save(add("webp_1x1", "webp"))
    frames = [rgb(96, 64, 54 + i) for i in range(3)]
    frames[1].paste(Image.new("RGB", (20, 10), (255, 0, 0)), (5, 5))
    frames[0].save(add("webp_animated", "webp"), save_all=True, append_images=frames[1:],
                   duration=100, quality=80)
    rgb(13, 997, 53).save(add("webp_13x997", "webp"))
    # BMP written by Pillow
    rgb(211, 97, 60).save(add("bmp_rgb24", "bmp"))
    Image.fromarray(rgba, "RGBA").save(add("bmp_rgba32", "bmp"))
    rgb(211, 97, 61).quantize(colors=77).save(add("bmp_p8", "bmp"))
    rgb(211, 97, 62).convert("L").save(add("bmp_gray", "bmp"))
    rgb(211, 97, 63).convert("1").save(add("bmp_1bit", "bmp"))
    rgb(13, 997, 64).save(add("bmp_13x997", "bmp"))
    rgb(1, 1, 65).save(add("bmp_1x1", "bmp"))
    # BMP written by hand
    c = content(29, 17, 70)
    rows24 = [bytes(r[:, ::-1].tobytes()) for r in c]
    write_bmp(add("bmp_topdown24", "bmp"), 29, 17, 24, rows24, top_down=True)
    write_bmp(add("bmp_core12", "bmp"), 29, 17, 24, rows24, header=12)
    v555 = ((c[:, :, 0].astype(np.uint16) >> 3) << 10) | ((c[:, :, 1] >> 3).astype(np.uint16) << 5) | (c[:, :, 2] >> 3)
    write_bmp(add("bmp_555", "bmp"), 29, 17, 16, [r.astype("<u2").tobytes() for r in v555])
    v565 = ((c[:, :, 0].astype(np.uint16) >> 3) << 11) | ((c[:, :, 1] >> 2).astype(np.uint16) << 5) | (c[:, :, 2] >> 3)
    write_bmp(add("bmp_565", "bmp"), 29, 17, 16, [r.astype("<u2").tobytes() for r in v565],
              compression=3, masks=(0xF800, 0x7E0, 0x1F, 0))
    bgra = np.concatenate([c[:, :, ::-1], c[:, :, :1]], axis=-1)
    write_bmp(add("bmp_v5_bgra", "bmp"), 29, 17, 32, [r.tobytes() for r in bgra], header=124,
              compression=3, masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000))
    xbgr = np.concatenate([c[:, :, :1] * 0, c[:, :, ::-1]], axis=-1)
    write_bmp(add("bmp_v4_xbgr", "bmp"), 29, 17, 32, [r.tobytes() for r in xbgr], header=108,
              compression=3, masks=(0xFF000000, 0xFF0000, 0xFF00, 0), top_down=True)
    pal16 = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(16)]
    idx4 = rng.integers(0, 16, (17, 29))
    rows4 = [bytes(((r[0::2] << 4) | np.append(r[1::2], 0)[: len(r[0::2])]).astype(np.uint8)) for r in idx4]
    write_bmp(add("bmp_p4", "bmp"), 29, 17, 4, rows4, palette=pal16)
    pal_short = pal16[:9]  # indices 9..15 fall back to Pillow's grey ramp
    write_bmp(add("bmp_p4_short", "bmp"), 29, 17, 4, rows4, palette=pal_short, colors_used=9)
    pal256 = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(256)]
    idx8 = rng.integers(0, 256, (17, 29))
    write_bmp(add("bmp_core_p8", "bmp"), 29, 17, 8, [bytes(r.astype(np.uint8)) for r in idx8],
              palette=pal256, header=12, pal_pad=3)
    write_bmp(add("bmp_rle8", "bmp"), 29, 17, 8, None, palette=pal256, compression=1,
              pixel_data=rle8_encode((idx8 // 32 * 32).astype(np.uint8).tolist()))
    write_bmp(add("bmp_rle4", "bmp"), 29, 17, 4, None, palette=pal16, compression=2,
              pixel_data=rle4_encode(idx4.tolist()))
    # Pillow's RLE decoder quirks: absolute runs (odd lengths, file-position padding), a delta
    # escape (Pillow drops two bytes before reading right/up), runs past the row end
    rle8 = bytes([0, 3, 11, 12, 13, 0, 5, 7, 0, 0,
                  0, 2, 99, 99, 2, 1, 4, 9, 0, 0,
                  9, 20, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0,
                  8, 30, 8, 31, 8, 32, 0, 1])
    write_bmp(add("bmp_rle8_quirks", "bmp"), 8, 6, 8, None, palette=pal256, compression=1,
              pixel_data=rle8)
    rle4 = bytes([0, 6, 0x12, 0x34, 0x56, 0, 1, 0x70, 0, 0,  # even absolute run, padded
                  0, 5, 0x9A, 0xBC, 4, 0xDE, 0, 0,  # odd run: Pillow reads 2 bytes; clipped run
                  0, 2, 0xFF, 0xFF, 3, 0, 9, 0x12, 0, 0,  # delta, run past the row end
                  7, 0x34, 0, 0, 3, 0x56, 0, 0, 0, 1])
    write_bmp(add("bmp_rle4_quirks", "bmp"), 7, 5, 4, None, palette=pal16, compression=2,
              pixel_data=rle4)
    bw = [(0, 0, 0), (255, 255, 255)]
    write_bmp(add("bmp_bw8_quirk", "bmp"), 29, 17, 8, [bytes(r.astype(np.uint8)) for r in idx8],
              palette=bw, colors_used=2)
    write_bmp(add("bmp_zero_offset", "bmp"), 29, 17, 24, rows24, zero_offset=True)
    return items


def main():
    warnings.simplefilter("ignore")
    out = sys.argv[1]
    quick = "--quick" in sys.argv[2:]
    os.makedirs(out, exist_ok=True)
    items = build(out, quick)
    man = []
    for name, fname in items:
        im = Image.open(os.path.join(out, fname)).convert("RGB")
        w, h = im.size
        with open(os.path.join(out, name + ".rgb"), "wb") as f:
            f.write(im.tobytes())
        man.append(f"D {name} {fname} {w} {h}")
        targets = [(224, 224), (448, 448)]
        if name in ("jpeg_420", "png_rgb", "png_1x1", "jpeg_13x997", "bmp_p4"):
            targets += [(7, 5), (1, 1), (300, 17), (641, 479)]
        for tw, th in targets:
            r = im.resize((tw, th), Image.BICUBIC)
            with open(os.path.join(out, f"{name}.{tw}x{th}.rgb"), "wb") as f:
                f.write(r.tobytes())
            man.append(f"R {name} {tw} {th}")
        if name in ("jpeg_420", "png_rgba", "jpeg_big", "webp_lossy", "png_1x1"):
            import torch
            for s in (224, 448):
                r = np.asarray(im.resize((s, s), Image.BICUBIC), dtype=np.uint8).copy()
                t = torch.from_numpy(r).permute(2, 0, 1).contiguous().to(dtype=torch.float32).div(255)
                mean = torch.as_tensor(MEAN, dtype=torch.float32).view(-1, 1, 1)
                std = torch.as_tensor(STD, dtype=torch.float32).view(-1, 1, 1)
                t.sub_(mean).div_(std)
                np.save(os.path.join(out, f"{name}.{s}.npy"), t.numpy().astype("<f4"))
                man.append(f"T {name} {s}")
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.write("\n".join(man) + "\n")

    # Pillow's verdict on truncated files.
    trunc = []
    n_cuts = 12 if quick else 40
    for name in ("jpeg_2x3", "jpeg_progressive", "jpeg_cmyk", "png_rgb", "png_interlaced",
                 "png_palette_short", "webp_lossy", "webp_lossless", "bmp_rgb24", "bmp_rle8",
                 "bmp_p4"):
        fname = dict(items)[name]
        data = open(os.path.join(out, fname), "rb").read()
        cuts = sorted(set([0, 1, 2, 7, 20, len(data) - 1, len(data) - 2] +
                          [int(len(data) * k / n_cuts) for k in range(1, n_cuts)]))
        for n in cuts:
            if n < 0 or n >= len(data):
                continue
            try:
                im = Image.open(io.BytesIO(data[:n])).convert("RGB")
                trunc.append(f"{name} {fname} {n} 1 {weighted_hash(im.tobytes()):016x}")
            except Exception:
                trunc.append(f"{name} {fname} {n} 0 0")
    with open(os.path.join(out, "trunc.txt"), "w") as f:
        f.write("\n".join(trunc) + "\n")


if __name__ == "__main__":
    main()
