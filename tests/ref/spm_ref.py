#!/usr/bin/python3
"""spm_ref.py OUTDIR CASES - the SentencePiece reference (Debian's python3-sentencepiece).

Trains a small BPE model with byte fallback on deterministic generated text (identity
normalisation, so that the model is a LLaMA-style one: dummy prefix, no whitespace cleanup) and
writes OUTDIR/spm_bpe.model, then for every string of CASES (hex lines) one line
"ids<TAB>hex(decode(ids))" to OUTDIR/spm_ids.txt. Run by tests/test_tokenizer.c.
"""
import random
import sys

import sentencepiece as spm

WORDS = """the of and to in is was for on that with as by at from his her it an were are which
this be or have had not but they their one all also has new been first after who its more two
other time would there when into only some out over such about these most like state then may
year under world between while city during made people three used through where later known
tokenizer piece merge score vocabulary language model image token llama vision encoder decoder
running jumped quickly beautiful international understanding representation grabbed
école naïve café über straße 東京 日本語 中文 한국어 русский язык ελληνικά עברית العربية
हिन्दी ไทย 1234 2023 3.14 42 0x1F def return int main printf { } ( ) [ ] ; : , . ! ? " ' -""".split()


def corpus(rng, n):
    lines = []
    for _ in range(n):
        k = rng.randint(1, 14)
        ws = [rng.choice(WORDS) for _ in range(k)]
        sep = rng.choice([" ", " ", " ", "  ", "\t", ", "])
        line = sep.join(ws)
        if rng.random() < 0.1:
            line = " " * rng.randint(1, 4) + line
        if rng.random() < 0.05:
            line += " <sep> " + rng.choice(WORDS)
        lines.append(line)
    return lines


def _varint(b, p):
    r = shift = 0
    while True:
        c = b[p]
        p += 1
        r |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return r, p


def _enc_varint(n):
    out = bytearray()
    while True:
        c = n & 0x7F
        n >>= 7
        if n:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def _fields(b):
    """Top-level (field, wire type, raw bytes of the whole field) of a protobuf message."""
    p = 0
    while p < len(b):
        start = p
        key, p = _varint(b, p)
        wt = key & 7
        if wt == 0:
            _, p = _varint(b, p)
        elif wt == 2:
            n, p = _varint(b, p)
            p += n
        elif wt == 5:
            p += 4
        elif wt == 1:
            p += 8
        else:
            raise ValueError("wire type %d" % wt)
        yield key >> 3, wt, b[start:p]


def mark_unused(model, every):
    """Copy of a serialized ModelProto where every n-th multi-character normal piece is UNUSED."""
    out = bytearray()
    k = 0
    for f, wt, raw in _fields(model):
        if f == 1 and wt == 2:
            _, p = _varint(raw, 0)
            n, p = _varint(raw, p)
            body = raw[p:p + n]
            piece, ptype = b"", 1
            kept = bytearray()
            for pf, pwt, praw in _fields(body):
                if pf == 3:
                    ptype = _varint(praw, 1)[0]
                    continue
                if pf == 1:
                    ln, q = _varint(praw, 1)
                    piece = praw[q:q + ln]
                kept += praw
            if ptype == 1 and len(piece.decode("utf-8")) >= 2:
                k += 1
                if k % every == 0:
                    ptype = 5
            kept += b"\x18" + _enc_varint(ptype)
            out += b"\x0a" + _enc_varint(len(kept)) + kept
        else:
            out += raw
    return bytes(out)


def main():
    out, cases_path = sys.argv[1], sys.argv[2]
    rng = random.Random(20240611)
    lines = corpus(rng, 20000)
    prefix = out + "/spm_bpe"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=prefix, model_type="bpe", vocab_size=1200,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, character_coverage=0.999, user_defined_symbols=["<sep>"],
        allow_whitespace_only_pieces=True, split_digits=False, num_threads=1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    with open(cases_path, "r", encoding="ascii") as f:
        cases = [bytes.fromhex(line.rstrip("\n")).decode("utf-8") for line in f]
    with open(out + "/spm_ids.txt", "w", encoding="ascii") as f:
        for s in cases:
            ids = sp.encode(s)
            dec = sp.decode(ids)
            f.write(" ".join(str(i) for i in ids) + "\t" + dec.encode("utf-8").hex() + "\n")
    # Same model with some merged pieces marked UNUSED: SentencePiece splits them back.
    with open(prefix + ".model", "rb") as f:
        unused = mark_unused(f.read(), 5)
    with open(out + "/spm_unused.model", "wb") as f:
        f.write(unused)
    sp2 = spm.SentencePieceProcessor()
    sp2.LoadFromSerializedProto(unused)
    n_unused = sum(1 for i in range(sp2.get_piece_size()) if sp2.is_unused(i))
    with open(out + "/spm_unused_ids.txt", "w", encoding="ascii") as f:
        for s in cases:
            ids = sp2.encode(s)
            f.write(" ".join(str(i) for i in ids) + "\t" + sp2.decode(ids).encode("utf-8").hex() + "\n")
    print("spm_ref: %d pieces, %d strings; %d pieces unused in spm_unused.model" %
          (sp.get_piece_size(), len(cases), n_unused))


if __name__ == "__main__":
    main()
