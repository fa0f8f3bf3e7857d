# Research tool (not used by the build or the tests): how fast does the demo model's vision tower
# learn object shape from the auxiliary patch loss, and what changes that? A PyTorch replica of
# the tower (96 px, patch 8, width 128, 4 pre-LN blocks, q/v bias, exact GELU, sine-cosine
# position table, ln_vision, a linear patch head) trained on scenes of our own world, rendered by
# src/world.c through a small shared library:
#
#   gcc -O2 -fPIC -shared -std=c11 -D_GNU_SOURCE -Iinclude -Isrc scripts/research/world_shim.c \
#       src/world.c src/util.c -lm -o scripts/research/libpw.so
#   python3 scripts/research/shape_torch.py --make-data /tmp/d --ntrain 150000 --procs 16
#   python3 scripts/research/shape_torch.py --data /tmp/d --labels shape --all-patches --lr 1e-3 --steps 10000
#
# It prints the share of held-out object patches whose shape the head names (the trainer's
# "patch shape"). Session 8 ran it on a lent GPU machine; the results are in docs/DEMO_MODEL.md.
import argparse, ctypes, json, math, os, time
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = ["circle", "square", "triangle", "star", "diamond", "hexagon", "pentagon", "cross"]


def gen_range(args):
    spec, seed, start, n, size, patch, held = args
    lib = ctypes.CDLL(os.path.join(HERE, "libpw.so"))
    G = size // patch
    rgb = np.zeros((n, size, size, 3), np.uint8)
    lab = np.zeros((n, G * G), np.int32)
    objs = np.zeros((n, 6, 7), np.int32)
    nobj = np.zeros(n, np.int32)
    for i in range(n):
        k = lib.pw_gen(ctypes.c_ulonglong(seed), ctypes.c_ulonglong(start + i), size, patch, spec.encode(), int(held),
                       rgb[i].ctypes.data_as(ctypes.c_void_p), lab[i].ctypes.data_as(ctypes.c_void_p),
                       objs[i].ctypes.data_as(ctypes.c_void_p))
        if k < 0:
            raise RuntimeError("pw_gen failed")
        nobj[i] = k
    return rgb, lab, objs, nobj


def gen(spec, seed, n, size=96, patch=8, held=False, procs=16):
    import multiprocessing as mp
    chunk = (n + procs - 1) // procs
    jobs = [(spec, seed, s, min(chunk, n - s), size, patch, held) for s in range(0, n, chunk)]
    with mp.Pool(procs) as p:
        parts = p.map(gen_range, jobs)
    return [np.concatenate([q[j] for q in parts]) for j in range(4)]


class Block(nn.Module):
    def __init__(s, E, H, Fd):
        super().__init__()
        s.H = H
        s.ln1 = nn.LayerNorm(E, eps=1e-6); s.ln2 = nn.LayerNorm(E, eps=1e-6)
        s.q = nn.Linear(E, E); s.k = nn.Linear(E, E, bias=False); s.v = nn.Linear(E, E)
        s.o = nn.Linear(E, E); s.up = nn.Linear(E, Fd); s.down = nn.Linear(Fd, E)

    def forward(s, x):
        B, T, E = x.shape
        h = s.ln1(x)
        q, k, v = [t.view(B, T, s.H, E // s.H).transpose(1, 2) for t in (s.q(h), s.k(h), s.v(h))]
        if hasattr(F, "scaled_dot_product_attention"):
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(E // s.H), -1) @ v
        a = a.transpose(1, 2).reshape(B, T, E)
        x = x + s.o(a)
        return x + s.down(F.gelu(s.up(s.ln2(x))))


class ViT(nn.Module):
    def __init__(s, size=96, patch=8, E=128, L=4, H=4, Fd=384, C=89, pos_amp=1.0):
        super().__init__()
        s.patch = patch; G = size // patch
        s.pe = nn.Linear(3 * patch * patch, E)
        s.cls = nn.Parameter(torch.randn(1, 1, E) * 0.02)
        pos = torch.zeros(1 + G * G, E)
        Q = E // 4
        for g in range(G * G):
            gy, gx = divmod(g, G)
            for k in range(Q):
                f = (1 / 100.0) ** (k / max(Q - 1, 1)) * math.pi
                pos[g + 1, k] = pos_amp * math.sin(gx * f); pos[g + 1, Q + k] = pos_amp * math.cos(gx * f)
                pos[g + 1, 2 * Q + k] = pos_amp * math.sin(gy * f); pos[g + 1, 3 * Q + k] = pos_amp * math.cos(gy * f)
        s.pos = nn.Parameter(pos)
        s.blocks = nn.ModuleList([Block(E, H, Fd) for _ in range(L)])
        s.post = nn.LayerNorm(E, eps=1e-5)
        s.head = nn.Linear(E, C)
        for n_, p in s.named_parameters():
            if n_.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif n_.endswith("bias"):
                nn.init.zeros_(p)

    def forward(s, img):  # img [B, 3, S, S] normalised
        B = img.shape[0]; P = s.patch
        x = img.unfold(2, P, P).unfold(3, P, P)  # B,3,G,G,P,P
        x = x.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, 3 * P * P)
        x = s.pe(x)
        x = torch.cat([s.cls.expand(B, -1, -1), x], 1) + s.pos
        for b in s.blocks:
            x = b(x)
        x = s.post(x)
        return s.head(x[:, 1:]), x[:, 0]


MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="x")
    ap.add_argument("--spec", default="objects=1,bg=plain,shapes=circle+square+triangle+star+diamond+cross,sizes=medium+large")
    ap.add_argument("--eval-spec", default=None)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-min", type=float, default=1e-4)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--labels", default="joint", choices=["joint", "shape"])
    ap.add_argument("--all-patches", action="store_true")
    ap.add_argument("--pos-amp", type=float, default=1.0)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--E", type=int, default=128)
    ap.add_argument("--L", type=int, default=4)
    ap.add_argument("--Fd", type=int, default=384)
    ap.add_argument("--ntrain", type=int, default=100000)
    ap.add_argument("--neval", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=1e9)
    ap.add_argument("--out", default=None)
    ap.add_argument("--data", default=None, help="folder with train.npz/eval.npz (made with --make-data)")
    ap.add_argument("--make-data", default=None)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    if a.data and a.patch == 8:  # the files hold labels of 8-px patches; other sizes are drawn anew
        keys = ("rgb", "lab", "objs", "nobj")
        z = np.load(os.path.join(a.data, "train.npz")); tr = [z[k][:a.ntrain] for k in keys]
        z = np.load(os.path.join(a.data, "eval.npz")); ev = [z[k][:a.neval] for k in keys]
    else:
        tr = gen(a.spec, a.seed, a.ntrain, a.size, a.patch, False, a.procs)
        ev = gen(a.eval_spec or a.spec, 1, a.neval, a.size, a.patch, True, a.procs)
    if a.make_data:
        os.makedirs(a.make_data, exist_ok=True)
        np.savez(os.path.join(a.make_data, "train.npz"), rgb=tr[0], lab=tr[1], objs=tr[2], nobj=tr[3])
        np.savez(os.path.join(a.make_data, "eval.npz"), rgb=ev[0], lab=ev[1], objs=ev[2], nobj=ev[3])
        print("data written", flush=True)
        return
    print(f"[{a.name}] data {time.time() - t0:.1f}s", flush=True)
    C = 89 if a.labels == "joint" else 9

    def prep(d):
        rgb, lab, objs, nobj = d
        x = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous().to(dev)
        lab = torch.from_numpy(lab).long().to(dev)
        # world label: 0 bg, 1 + color*8 + shape
        shape = torch.where(lab > 0, (lab - 1) % 8, -1)
        color = torch.where(lab > 0, (lab - 1) // 8, -1)
        return x, lab, shape, color

    X, LAB, SH, CO = prep(tr)
    EX, ELAB, ESH, ECO = prep(ev)
    mean, std = MEAN.to(dev), STD.to(dev)
    m = ViT(a.size, a.patch, a.E, a.L, 4, a.Fd, C, a.pos_amp).to(dev)
    decay = [p for n_, p in m.named_parameters() if p.dim() == 2 and n_ != "pos"]
    nodecay = [p for n_, p in m.named_parameters() if not (p.dim() == 2 and n_ != "pos")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.999), eps=1e-8)

    def lr_at(t):
        if t < a.warmup:
            return a.lr * (t + 1) / a.warmup
        p = (t - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr_min + 0.5 * (a.lr - a.lr_min) * (1 + math.cos(math.pi * min(p, 1.0)))

    def target(lab, sh):
        if a.labels == "joint":
            t = lab.clone()
        else:
            t = torch.where(lab > 0, sh + 1, 0)
        if not a.all_patches:
            t = torch.where(lab > 0, t, -100)
        return t

    def evaluate():
        m.eval()
        ok = n = okc = 0
        with torch.no_grad():
            for i in range(0, EX.shape[0], 500):
                x = (EX[i:i + 500].float() / 255 - mean) / std
                lg, _ = m(x)
                pr = lg.argmax(-1)
                obj = ELAB[i:i + 500] > 0
                if a.labels == "joint":
                    psh = torch.where(pr > 0, (pr - 1) % 8, -1); pco = torch.where(pr > 0, (pr - 1) // 8, -1)
                    okc += ((pco == ECO[i:i + 500]) & obj).sum().item()
                else:
                    psh = pr - 1
                ok += ((psh == ESH[i:i + 500]) & obj).sum().item()
                n += obj.sum().item()
        m.train()
        return ok / max(n, 1), okc / max(n, 1)

    hist = []
    t1 = time.time()
    g = torch.Generator(device=dev); g.manual_seed(a.seed)
    for step in range(a.steps):
        idx = torch.randint(0, X.shape[0], (a.batch,), device=dev, generator=g)
        x = (X[idx].float() / 255 - mean) / std
        lg, _ = m(x)
        loss = F.cross_entropy(lg.reshape(-1, C), target(LAB[idx], SH[idx]).reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step)
        opt.step()
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            s_acc, c_acc = evaluate()
            el = time.time() - t1
            hist.append({"step": step + 1, "loss": loss.item(), "shape": s_acc, "color": c_acc, "t": el})
            print(f"[{a.name}] step {step + 1} loss {loss.item():.3f} patch shape {100 * s_acc:.1f}% colour {100 * c_acc:.1f}% ({el:.0f}s)", flush=True)
            if el > a.time_limit:
                break
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "hist": hist}, f)


if __name__ == "__main__":
    main()
