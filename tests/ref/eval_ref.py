"""eval_ref.py - independent references for the synthetic world and the evaluator (tests/test_world.c,
tests/test_eval.c). Scoring follows the official scripts: Vision-CAIR/MiniGPT-4 eval_scripts/eval_ref.py
with computeIoU from minigpt4/common/eval_utils.py, and vqaEval.py of the VQA API (re-written here from
their rules, not copied). Runs under Debian's /usr/bin/python3 with numpy and PIL.

  eval_ref.py score TASK GT ANSWERS            -> one line of JSON, the summary minigpt eval prints
  eval_ref.py answers TASK GT OUT SEED MODE    -> an answers JSONL (MODE perfect or random)
  eval_ref.py vqa-gt OUT SEED N                -> VQA annotations whose ten answers disagree
  eval_ref.py check-world DIR                  -> checks images, boxes and expressions; JSON report
"""
import json
import random
import re
import sys

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "cyan"]
SHAPES = ["circle", "square", "triangle", "star", "diamond", "hexagon", "pentagon", "cross"]
PLURALS = {s + ("es" if s == "cross" else "s"): s for s in SHAPES}
SIZES = ["small", "medium", "large"]
RGB = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (245, 215, 40),
       "purple": (140, 50, 180), "orange": (245, 135, 20), "white": (250, 250, 250), "black": (15, 15, 15),
       "pink": (245, 130, 190), "brown": (125, 75, 30), "cyan": (40, 200, 220)}


# ---------------------------------------------------------------- official rules

def compute_iou(b1, b2):
    # eval_utils.computeIoU: inclusive corners, +1 on each side length
    x1, y1, x2, y2 = b1
    x3, y3, x4, y4 = b2
    iw = max(0, min(x2, x4) - max(x1, x3) + 1)
    ih = max(0, min(y2, y4) - max(y1, y3) + 1)
    inter = iw * ih
    union = (x2 - x1 + 1) * (y2 - y1 + 1) + (x4 - x3 + 1) * (y4 - y3 + 1) - inter
    return inter / union  # ZeroDivisionError like the original


REFER_RE = r'\{<\d{1,3}><\d{1,3}><\d{1,3}><\d{1,3}>\}'


def score_refer(gt, answers):
    # eval_ref.py: answers kept per img_id when they pass re.match; count over img_ids
    predict = {}
    invalid = 0
    answered = 0
    for item in gt:
        key = str(item.get("id", gt.index(item)))
        if key not in answers:
            continue
        answered += 1
        a = answers[key].replace("<unk>", "").replace(" ", "").strip()
        if re.match(REFER_RE, a):
            predict.setdefault(item["img_id"], []).append(a)
        else:
            invalid += 1
    by_img = {}
    for item in gt:
        by_img[item["img_id"]] = item
    count = 0
    for img_id, item in by_img.items():
        bbox = item["bbox"]
        for out in predict.get(img_id, []):
            try:
                p = [int(n) for n in re.findall(r'\d+', out)]
                p[0] = p[0] / 100.0 * item["width"]
                p[1] = p[1] / 100.0 * item["height"]
                p[2] = p[2] / 100.0 * item["width"]
                p[3] = p[3] / 100.0 * item["height"]
                g = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]
                if compute_iou(p, g) > 0.5:
                    count += 1
            except Exception:
                continue
    n = len(gt)
    s = 100.0 * count / n if n else 0.0
    return summary("refer", n, answered, invalid, s, s, 0, 0, 0)


CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've"}
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
PUNCT = [';', r"/", '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!']
PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA = re.compile(r"(\d)(\,)(\d)")


def punctuation(text):
    out = text
    for p in PUNCT:
        if (p + ' ' in text or ' ' + p in text) or COMMA.search(text) is not None:
            out = out.replace(p, '')
        else:
            out = out.replace(p, ' ')
    return PERIOD.sub("", out, count=32)  # the original passes re.UNICODE (32) as count


def digit_article(text):
    words = []
    for w in text.lower().split():
        w = NUMBERS.get(w, w)
        if w not in ("a", "an", "the"):
            words.append(w)
    return ' '.join(CONTRACTIONS.get(w, w) for w in words)


def vqa_accuracy(gt_answers, answer):
    res = answer.lower().replace('<unk>', '').strip()        # eval_vqa.py
    res = res.replace('\n', ' ').replace('\t', ' ').strip()   # vqaEval.evaluate
    gts = [dict(d) for d in gt_answers]
    for d in gts:
        d['answer'] = d['answer'].replace('\n', ' ').replace('\t', ' ').strip()
    if len(set(d['answer'] for d in gts)) > 1:
        for d in gts:
            d['answer'] = digit_article(punctuation(d['answer']))
        res = digit_article(punctuation(res))
    accs = []
    for d in gts:
        others = [o for o in gts if o != d]
        matching = [o for o in others if o['answer'].lower() == res.lower()]
        accs.append(min(1, float(len(matching)) / 3))
    return sum(accs) / len(accs)


def score_vqa(gt, answers):
    anns = gt["annotations"]
    total = exact = 0.0
    answered = 0
    for a in anns:
        key = str(a["question_id"])
        if key not in answers:
            continue
        answered += 1
        total += vqa_accuracy(a["answers"], answers[key])
        mc = a.get("multiple_choice_answer", a["answers"][0]["answer"])
        exact += answers[key].lower().replace('<unk>', '').strip() == mc.lower()
    n = len(anns)
    return summary("vqa", n, answered, 0, pct(total, n), pct(exact, n), 0, 0, 0)


# ---------------------------------------------------------------- boxes and mentions

BOX = r'\{<(\d+)><(\d+)><(\d+)><(\d+)>\}'


def valid_box(v):
    return all(x <= 100 for x in v) and v[0] <= v[2] and v[1] <= v[3]


def mentions(text):
    out = []
    prev = [None, None, None]  # colour of the previous word, of the one before, previous is a size
    for w in re.findall(r'[A-Za-z]+', text):
        lw = w.lower()
        s = lw if lw in SHAPES else PLURALS.get(lw)
        if s is not None:
            c = prev[0] if prev[0] is not None else (prev[1] if prev[2] else None)
            if c is not None and (c, s) not in out:
                out.append((c, s))
        prev = [lw if lw in COLORS else None, prev[0], lw in SIZES]
    return out


def answer_boxes(text, w, h):
    """(box in pixels, key) of every valid box; key = first mention of the phrase just before it."""
    out = []
    pos = 0
    phrase_at = {}
    for m in re.finditer(r'<p>(.*?)</p>', text):
        j = m.end()
        while j < len(text) and text[j] == ' ':
            j += 1
        while True:
            b = re.compile(BOX).match(text, j)
            if not b:
                break
            phrase_at[b.start()] = m.group(1)
            j = b.end()
            if text.startswith('<delim>', j):
                j += 7
            else:
                break
    for b in re.finditer(BOX, text, pos):
        v = [int(x) for x in b.groups()]
        if not valid_box(v):
            continue
        ph = phrase_at.get(b.start(), "")
        m = mentions(ph)
        key = (m[0] if m else None)
        out.append(([v[0] / 100 * w, v[1] / 100 * h, v[2] / 100 * w, v[3] / 100 * h], key))
    return out


def greedy(pred, gt):
    pairs = []
    for i, (pb, pk) in enumerate(pred):
        for j, (gb, gk) in enumerate(gt):
            if pk != gk:
                continue
            try:
                iou = compute_iou(pb, gb)
            except ZeroDivisionError:
                continue
            if iou > 0.5:
                pairs.append((-iou, i, j))
    pairs.sort()
    up, ug, tp = set(), set(), 0
    for _, i, j in pairs:
        if i not in up and j not in ug:
            up.add(i)
            ug.add(j)
            tp += 1
    return tp


def score_boxes(task, gt, answers):
    tp = fp = fn = 0
    answered = invalid = exact = 0
    for it in gt["items"]:
        if task == "detection":
            g = [([b[0], b[1], b[0] + b[2], b[1] + b[3]], None) for b in it["boxes"]]
        else:
            g = [([b[0], b[1], b[0] + b[2], b[1] + b[3]], (e["color"], e["shape"]))
                 for e in it["entities"] for b in e["boxes"]]
        key = str(it["id"])
        if key not in answers:
            fn += len(g)
            continue
        answered += 1
        p = answer_boxes(answers[key], it["width"], it["height"])
        if task == "detection":
            p = [(b, None) for b, _ in p]
        t = greedy(p, g)
        tp += t
        fp += len(p) - t
        fn += len(g) - t
        invalid += len(p) == 0
        exact += t == len(p) == len(g)
    n = len(gt["items"])
    P, R, F = prf(tp, fp, fn)
    return summary(task, n, answered, invalid, F, pct(exact, n), tp, fp, fn)


def norm_text(s):
    s = s.lower().strip()
    if s.endswith('.'):
        s = s[:-1]
    return s.strip()


def score_mentions(task, gt, answers):
    tp = fp = fn = 0
    answered = invalid = 0
    total = exact = 0.0
    for it in gt["items"]:
        g = [tuple(x) for x in it["objects"]]
        key = str(it["id"])
        if key not in answers:
            fn += len(g)
            continue
        answered += 1
        a = mentions(answers[key])
        t = len([x for x in a if x in g])
        tp += t
        fp += len(a) - t
        fn += len(g) - t
        invalid += len(a) == 0
        if not a and not g:
            f = 1.0
        elif t == 0:
            f = 0.0
        else:
            p, r = t / len(a), t / len(g)
            f = 2 * p * r / (p + r)
        total += f
        exact += norm_text(answers[key]) == norm_text(it.get("answer", ""))
    n = len(gt["items"])
    return summary(task, n, answered, invalid, pct(total, n), pct(exact, n), tp, fp, fn)


def pct(a, b):
    return 100.0 * a / b if b > 0 else 0.0


def prf(tp, fp, fn):
    P = pct(tp, tp + fp)
    R = pct(tp, tp + fn)
    F = 2 * P * R / (P + R) if P + R > 0 else 0.0
    return P, R, F


def summary(task, n, answered, invalid, score, exact, tp, fp, fn):
    P, R, F = prf(tp, fp, fn)
    return {"task": task, "n_items": n, "n_answered": answered, "n_missing": n - answered,
            "n_invalid": invalid, "score": score, "exact_match": exact, "precision": P, "recall": R,
            "f1": F, "tp": tp, "fp": fp, "fn": fn}


def load_answers(path):
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out[str(d["id"])] = d["answer"]
    return out


def score(task, gt_path, ans_path):
    gt = json.load(open(gt_path))
    ans = load_answers(ans_path)
    if task == "refer":
        return score_refer(gt, ans)
    if task == "vqa":
        return score_vqa(gt, ans)
    if task in ("detection", "grounding"):
        return score_boxes(task, gt, ans)
    return score_mentions(task, gt, ans)


# ---------------------------------------------------------------- answer files

def region(b, w, h):
    return "{<%d><%d><%d><%d>}" % (int(b[0] / w * 100), int(b[1] / h * 100),
                                    int((b[0] + b[2]) / w * 100), int((b[1] + b[3]) / h * 100))


def shift(text, rng, amount):
    def f(m):
        return "{" + "".join("<%d>" % max(0, int(v) + rng.randint(-amount, amount)) for v in m.groups()) + "}"
    return re.sub(BOX, f, text)


VQA_WORDS = ["yes", "no", "Yes", "2", "two", "Two.", "a red", "the circle", "red.", "red!", "red,", "3,000",
             "3.5", "dont", "don't", "isnt", "ow's'at", "none", "zero", "ten", "(blue)", "blue-green",
             "blue - green", "a", "an apple", "it's", "x;y", "\tred ", "red\n", "<unk>red", "top left",
             "top-left", "1.", "3 . 5", "what?", "one", "10", "the   big  star", "cat/dog", "he's",
             "youre", "''", "a.b.c", "left", "center"]


def make_answers(task, gt_path, out_path, seed, mode):
    rng = random.Random(seed)
    gt = json.load(open(gt_path))
    lines = []
    if task == "refer":
        items = [(str(it.get("id", i)), region(it["bbox"], it["width"], it["height"]), it)
                 for i, it in enumerate(gt)]
    elif task == "vqa":
        items = [(str(a["question_id"]), a["multiple_choice_answer"], a) for a in gt["annotations"]]
    else:
        items = [(str(it["id"]), it["answer"], it) for it in gt["items"]]
    for key, perfect, it in items:
        idv = int(key) if key.lstrip('-').isdigit() else key
        if mode == "perfect":
            lines.append({"id": idv, "answer": perfect})
            continue
        r = rng.random()
        if r < 0.07:
            continue  # missing
        a = perfect
        if task == "refer":
            k = rng.randrange(9)
            if k == 0:
                a = shift(perfect, rng, 3)
            elif k == 1:
                a = shift(perfect, rng, 15)
            elif k == 2:
                a = " <unk>" + perfect.replace("><", "> <") + " "
            elif k == 3:
                a = "the answer is " + perfect
            elif k == 4:
                a = perfect[:-1]
            elif k == 5:
                a = perfect + "<delim>" + perfect
            elif k == 6:
                a = "{<%d><%d><%d><%d>}" % tuple(rng.randrange(0, 1000) for _ in range(4))
            elif k == 7:
                a = perfect + " extra text"
        elif task == "vqa":
            k = rng.randrange(3)
            if k == 0:
                a = rng.choice(VQA_WORDS)
            elif k == 1:
                a = perfect.upper() if rng.random() < 0.5 else " " + perfect + "."
        elif task in ("detection", "grounding"):
            k = rng.randrange(8)
            if k == 0:
                a = shift(perfect, rng, 4)
            elif k == 1:
                a = shift(perfect, rng, 20)
            elif k == 2:
                a = perfect.split("<delim>")[0]
            elif k == 3:
                a = perfect + " <p>red star</p> {<1><1><20><20>}"
            elif k == 4:
                a = "nothing here {<12><30>}"
            elif k == 5:
                a = re.sub(r'\b(' + '|'.join(COLORS) + r')\b', lambda m: rng.choice(COLORS), perfect, count=1)
        else:
            k = rng.randrange(5)
            if k == 0:
                a = re.sub(r'\b(' + '|'.join(COLORS) + r')\b', lambda m: rng.choice(COLORS), perfect)
            elif k == 1:
                a = "I see " + rng.choice(COLORS) + " " + rng.choice(SIZES) + " " + rng.choice(SHAPES) + "s"
            elif k == 2:
                a = perfect.upper() + "."
            elif k == 3:
                a = "nothing"
        lines.append({"id": idv, "answer": a})
    rng.shuffle(lines)
    with open(out_path, "w") as f:
        for d in lines:
            f.write(json.dumps(d) + "\n")


def make_vqa_gt(out_path, seed, n):
    rng = random.Random(seed)
    anns = []
    for q in range(n):
        pool = rng.sample(VQA_WORDS, rng.randrange(1, 4))
        answers = [{"answer": rng.choice(pool), "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
        if rng.random() < 0.2:  # all equal: no normalisation
            answers = [{"answer": pool[0], "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
        anns.append({"question_id": 1000 + q, "image_id": q, "question_type": "what", "answer_type": "other",
                     "multiple_choice_answer": answers[0]["answer"], "answers": answers})
    json.dump({"annotations": anns}, open(out_path, "w"))


# ---------------------------------------------------------------- world checks

def rel_holds(a, b, rel):
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a, b
    return {"left of": ax1 <= bx0, "right of": ax0 >= bx1, "above": ay1 <= by0, "below": ay0 >= by1}[rel]


def parse_expr(expr):
    """'the [size] [colour] shape [REL the [colour] shape]' -> dict, or None."""
    m = re.fullmatch(r'(?:(small|medium|large) )?(?:(\w+) )?(\w+)(?: (left of|right of|above|below) '
                     r'the (?:(\w+) )?(\w+))?', expr)
    if not m:
        return None
    size, col, shape, rel, lcol, lshape = m.groups()
    if shape not in SHAPES or (col and col not in COLORS) or (lshape and lshape not in SHAPES):
        return None
    return dict(size=size, color=col, shape=shape, rel=rel, lcolor=lcol, lshape=lshape)


def matches(objs, d):
    def fits(o, shape, col, size):
        return o["shape"] == shape and (col is None or o["color"] == col) and (size is None or o["size"] == size)
    lm = None
    if d["rel"]:
        cand = [i for i, o in enumerate(objs) if fits(o, d["lshape"], d["lcolor"], None)]
        if len(cand) != 1:
            return []
        lm = cand[0]
    out = []
    for i, o in enumerate(objs):
        if i == lm or not fits(o, d["shape"], d["color"], d["size"]):
            continue
        if lm is not None and not rel_holds(o["box"], objs[lm]["box"], d["rel"]):
            continue
        out.append(i)
    return out


def check_world(d):
    import numpy as np
    from PIL import Image
    errors = []
    stats = {"images": 0, "objects": 0, "tight_checked": 0, "refer": 0, "identify": 0, "boxes": 0}
    for line in open(d + "/data.jsonl"):
        rec = json.loads(line)
        stats["images"] += 1
        img = np.asarray(Image.open(d + "/" + rec["image"]).convert("RGB")).astype(int)
        H, W = img.shape[:2]
        if (W, H) != (rec["width"], rec["height"]):
            errors.append("%s: size" % rec["image"])
        objs = rec["objects"]
        for i, o in enumerate(objs):
            stats["objects"] += 1
            x0, y0, x1, y1 = o["box"]
            if o["bbox"] != [x0, y0, x1 - x0, y1 - y0] or not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
                errors.append("%s obj %d: bad box" % (rec["image"], i))
                continue
            col = np.array(RGB[o["color"]])
            same = [j for j, p in enumerate(objs) if p["color"] == o["color"]]
            exact = np.all(img == col, axis=2)
            if len(same) == 1:
                ys, xs = np.nonzero(exact)
                if len(xs) == 0 or xs.min() < x0 or xs.max() >= x1 or ys.min() < y0 or ys.max() >= y1:
                    errors.append("%s obj %d: pixels of its colour outside its box" % (rec["image"], i))
            if rec["background"] == "plain":
                # isolated objects: the box is exactly the extent of the non-background pixels around it
                bg = img[0, 0] if not any(p["box"][0] == 0 and p["box"][1] == 0 for p in objs) else None
                others = [p["box"] for j, p in enumerate(objs) if j != i]
                m = 3
                X0, Y0, X1, Y1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
                iso = all(b[2] + m <= X0 or b[0] - m >= X1 or b[3] + m <= Y0 or b[1] - m >= Y1 for b in others)
                if iso and bg is not None:
                    stats["tight_checked"] += 1
                    win = np.any(img[Y0:Y1, X0:X1] != bg, axis=2)
                    ys, xs = np.nonzero(win)
                    got = [xs.min() + X0, ys.min() + Y0, xs.max() + X0 + 1, ys.max() + Y0 + 1] if len(xs) else None
                    if got != [x0, y0, x1, y1]:
                        errors.append("%s obj %d: box %s but drawn extent %s" % (rec["image"], i, [x0, y0, x1, y1], got))
        for ex in rec["examples"]:
            t = ex["task"]
            boxes = [[int(v) for v in b.groups()] for b in re.finditer(BOX, ex["answer"] + ex["instruction"])]
            for v in boxes:
                stats["boxes"] += 1
                # each box must be the region text of some object
                if not any(v == [int(o["box"][0] / W * 100), int(o["box"][1] / H * 100),
                                 int(o["box"][2] / W * 100), int(o["box"][3] / H * 100)] for o in objs):
                    errors.append("%s: box %s matches no object" % (rec["image"], v))
            if t in ("refer", "identify"):
                stats[t] += 1
                expr = ex.get("query")
                if not expr or expr not in ex["instruction" if t == "refer" else "answer"]:
                    errors.append("%s: expression %r not in the example" % (rec["image"], expr))
                    continue
                dd = parse_expr(expr) if expr else None
                if dd is None:
                    errors.append("%s: cannot read expression in %r" % (rec["image"], ex["instruction"]))
                    continue
                hit = matches(objs, dd)
                if hit != [ex["target"]]:
                    errors.append("%s: %r fits objects %s, target %d" % (rec["image"], expr, hit, ex["target"]))
    return {"ok": not errors, "errors": errors[:20], "n_errors": len(errors), **stats}


def main():
    cmd = sys.argv[1]
    if cmd == "score":
        print(json.dumps(score(sys.argv[2], sys.argv[3], sys.argv[4])))
    elif cmd == "answers":
        make_answers(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
    elif cmd == "vqa-gt":
        make_vqa_gt(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "check-world":
        r = check_world(sys.argv[2])
        print(json.dumps(r))
        sys.exit(0 if r["ok"] else 1)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
