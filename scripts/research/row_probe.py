#!/usr/bin/python3
"""What the language model of a demo-sized MiniGPT-v2 GGUF can see of an object's colour and shape.

Research tool (not part of the build or the tests). For the one-object scenes of a held-out set
written by `minigpt synth --eval` it runs `minigpt run --dump` on each image and reports:

  * linear probes (ridge, one-vs-rest, 2/3 train, 1/3 test) of colour and shape from the tower
    patch under the object's centre and from the projected image row (4-patch strip) holding it;
  * nearest-class-mean accuracy on the RMS-normalised rows: how *salient* colour and shape are
    in the rows the language model reads (a linear probe can amplify tiny directions; the
    class means of a salient feature lie far apart compared with the spread within a class);
  * with --attn: a float64 NumPy forward of the language model over the caption prompt with the
    true caption teacher-forced, giving the probability of the right colour and shape words and,
    per layer and head, the attention mass on all image rows and on the object's rows at the
    position that predicts the colour word.

Usage: scripts/research/row_probe.py MODEL.gguf EVAL_DIR [--n 600] [--attn 30] [--bin build/minigpt]
Only F32 GGUF files (the trainer's exports) are read.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tests', 'ref'))
from train_ref import read_gguf  # noqa: E402  (the tests' GGUF reader: F32 tensors only)


def ridge_probe(X, labels, lam=1.0):
    X = np.asarray(X, np.float64)
    classes = sorted(set(labels))
    Y = np.array([[l == c for c in classes] for l in labels], np.float64)
    n = len(X) * 2 // 3
    Z = (X - X[:n].mean(0)) / (X[:n].std(0) + 1e-6)
    Z = np.hstack([Z, np.ones((len(Z), 1))])
    W = np.linalg.solve(Z[:n].T @ Z[:n] + lam * np.eye(Z.shape[1]), Z[:n].T @ Y[:n])
    return 100.0 * (np.argmax(Z[n:] @ W, 1) == np.argmax(Y[n:], 1)).mean()


def nearest_mean(X, labels):
    X = np.asarray(X, np.float64)
    X = X / np.sqrt((X * X).mean(1, keepdims=True))
    lab = np.array(labels)
    n = len(X) * 2 // 3
    classes = sorted(set(labels[:n]))  # the classes the training part has
    M = np.array([X[:n][lab[:n] == c].mean(0) for c in classes])
    pred = np.argmin(((X[n:, None, :] - M[None]) ** 2).sum(-1), 1)
    return 100.0 * (np.array(classes)[pred] == lab[n:]).mean()


class Llama:
    def __init__(self, kv, T):
        self.T = T
        self.d = kv['llama.embedding_length']
        self.H = kv['llama.attention.head_count']
        self.Hkv = kv['llama.attention.head_count_kv']
        self.L = kv['llama.block_count']
        self.eps = kv['llama.attention.layer_norm_rms_epsilon']
        self.theta = kv.get('llama.rope.freq_base', 10000.0)
        self.hd = self.d // self.H

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x):  # [n, heads, hd], ggml's normal mode: adjacent pairs
        n, hd = len(x), self.hd
        ang = np.arange(n)[:, None] * self.theta ** (-np.arange(0, hd, 2) / hd)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        y = np.empty_like(x)
        y[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
        y[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
        return y

    def forward(self, X):
        T, n, hd = self.T, len(X), self.hd
        causal = np.triu(np.full((n, n), -np.inf), 1)
        att = []
        for i in range(self.L):
            p = f'blk.{i}.'
            h = self.rms(X, T[p + 'attn_norm.weight'])
            q = self.rope((h @ T[p + 'attn_q.weight'].T).reshape(n, self.H, hd))
            k = self.rope((h @ T[p + 'attn_k.weight'].T).reshape(n, self.Hkv, hd))
            v = (h @ T[p + 'attn_v.weight'].T).reshape(n, self.Hkv, hd)
            rep = self.H // self.Hkv
            k, v = np.repeat(k, rep, 1), np.repeat(v, rep, 1)
            s = np.einsum('qhd,khd->hqk', q, k) / np.sqrt(hd) + causal
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att.append(s)
            X = X + np.einsum('hqk,khd->qhd', s, v).reshape(n, self.d) @ T[p + 'attn_output.weight'].T
            h = self.rms(X, T[p + 'ffn_norm.weight'])
            g, u = h @ T[p + 'ffn_gate.weight'].T, h @ T[p + 'ffn_up.weight'].T
            X = X + (g / (1 + np.exp(-g)) * u) @ T[p + 'ffn_down.weight'].T
        return self.rms(X, T['output_norm.weight']) @ T['output.weight'].T, att


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('model')
    ap.add_argument('eval_dir')
    ap.add_argument('--n', type=int, default=600)
    ap.add_argument('--attn', type=int, default=0, help='images for the attention forward (0: none)')
    ap.add_argument('--bin', default='build/minigpt')
    a = ap.parse_args()
    kv, T = read_gguf(a.model)
    S, P = kv['minigpt.vision.image_size'], kv['minigpt.vision.patch_size']
    G = S // P
    items = [it for it in json.load(open(os.path.join(a.eval_dir, 'identify_gt.json')))['items']
             if len(it['objects']) == 1][:a.n]
    tmp = tempfile.mkdtemp(prefix='row_probe.')  # the dumps, removed at the end
    prompt = '[caption] Provide a concise depiction of this image.'
    V, R, C, Sh = [], [], [], []
    llm = Llama(kv, T) if a.attn else None
    stats = []
    for i, it in enumerate(items):
        d = os.path.join(tmp, str(i))
        os.makedirs(d)
        subprocess.run([a.bin, 'run', '-m', a.model, '--image', os.path.join(a.eval_dir, it['image']), '-p', prompt,
                        '--answer', 'x', '--dump', d, '-t', '1'], check=True, capture_output=True)
        vit, rows = np.load(d + '/vit.npy'), np.load(d + '/image_tokens.npy')
        x, y, w, h = it['box']
        px, py = min(int((x + w / 2) // P), G - 1), min(int((y + h / 2) // P), G - 1)
        V.append(vit[1 + py * G + px])
        R.append(rows[py * (G // 4) + px // 4])
        colour, shape = it['objects'][0]
        C.append(colour)
        Sh.append(shape)
        if llm and i < a.attn:
            emb, ids = np.load(d + '/prompt_embd.npy'), np.load(d + '/prompt_ids.npy')
            art = 'an' if colour[0] in 'aeiou' else 'a'
            out = subprocess.run([a.bin, 'tokenize', '-m', a.model, '-p', f'{art} {colour} {shape}'],
                                 check=True, capture_output=True, text=True).stdout
            ans = [int(t) for t in out.split()]
            X = np.vstack([emb, T['token_embd.weight'][ans]]).astype(np.float64)
            logits, att = llm.forward(X)
            img = np.where(ids < 0)[0]
            obj = sorted({img[0] + yy * (G // 4) + xx // 4 for yy in range(y // P, min((y + h - 1) // P, G - 1) + 1)
                          for xx in range(x // P, min((x + w - 1) // P, G - 1) + 1)})
            cpos = len(emb)  # input: the article; predicts the colour word

            def prob(pos, tok):
                z = np.exp(logits[pos] - logits[pos].max())
                return z[tok] / z.sum()
            stats.append((prob(cpos, ans[1]), prob(cpos + 1, ans[2]),
                          [(l[:, cpos, img].sum(1), l[:, cpos, obj].sum(1)) for l in att]))
    shutil.rmtree(tmp)
    print(f'{a.model}: {len(items)} one-object scenes')
    print(f'  linear probe, tower patch:   colour {ridge_probe(V, C):5.1f}%  shape {ridge_probe(V, Sh):5.1f}%')
    print(f'  linear probe, image row:     colour {ridge_probe(R, C):5.1f}%  shape {ridge_probe(R, Sh):5.1f}%')
    print(f'  nearest class mean, patch:   colour {nearest_mean(V, C):5.1f}%  shape {nearest_mean(V, Sh):5.1f}%')
    print(f'  nearest class mean, row:     colour {nearest_mean(R, C):5.1f}%  shape {nearest_mean(R, Sh):5.1f}%')
    if stats:
        print(f'  caption, teacher-forced ({len(stats)} images): p(colour word) {np.mean([s[0] for s in stats]):.3f}'
              f'  p(shape word) {np.mean([s[1] for s in stats]):.3f}')
        for l in range(llm.L):
            im = np.mean([s[2][l][0] for s in stats], 0)
            ob = np.mean([s[2][l][1] for s in stats], 0)
            print(f'  layer {l}, at the colour word: attention on image rows {np.round(im, 2)}, on the object\'s rows {np.round(ob, 2)}')


if __name__ == '__main__':
    main()
