"""
sampler_ref.py - the distribution transformers (4.30) samples from with do_sample=True, for
tests/test_sampler.c: RepetitionPenaltyLogitsProcessor -> TemperatureLogitsWarper ->
TopKLogitsWarper -> TopPLogitsWarper -> softmax, each written here from its documented rule
in PyTorch (min_tokens_to_keep = 1). Greedy (temperature <= 0): one-hot argmax of the penalised
logits.

usage: sampler_ref.py CASES.txt   (one case a line: LOGITS.f32 HISTORY.i32 TEMP TOP_K TOP_P PENALTY OUT.f32)
"""
import sys

import numpy as np
import torch


def one_case(args):
    logits = torch.from_numpy(np.fromfile(args[0], dtype="<f4").copy())[None, :]
    hist = torch.from_numpy(np.fromfile(args[1], dtype="<i4").astype(np.int64))[None, :]
    temp, top_k, top_p, penalty = float(args[2]), int(args[3]), float(args[4]), float(args[5])
    s = logits.clone()
    if hist.numel() and penalty != 1.0:
        g = torch.gather(s, 1, hist)
        g = torch.where(g < 0, g * penalty, g / penalty)
        s.scatter_(1, hist, g)
    if temp <= 0:
        p = torch.zeros_like(s)
        p[0, int(torch.argmax(s))] = 1.0
    else:
        s = s / temp
        if top_k > 0:
            k = min(top_k, s.shape[-1])
            kth = torch.topk(s, k)[0][..., -1, None]
            s = s.masked_fill(s < kth, -float("inf"))
        if top_p < 1.0:
            srt, idx = torch.sort(s, descending=False)
            cum = srt.softmax(dim=-1).cumsum(dim=-1)
            rm = cum <= (1 - top_p)
            rm[..., -1:] = 0
            s = s.masked_fill(rm.scatter(1, idx, rm), -float("inf"))
        p = torch.softmax(s, dim=-1)
    p[0].numpy().astype("<f4").tofile(args[6])


def main():
    for line in open(sys.argv[1]):
        if line.strip():
            one_case(line.split())


if __name__ == "__main__":
    main()
