/*
 * test_train.c - the trainer (src/train_ops.c, src/train.c): every op's forward and backward
 * against PyTorch autograd (tests/ref/train_ref.py) and against central finite differences in C;
 * the whole tiny model's loss and every parameter gradient against a PyTorch re-implementation;
 * AdamW against torch.optim.AdamW; the schedule and clipping; a 200-step overfit; bit-identical
 * resume from a checkpoint; the "proj" mode leaving other parameters untouched; a checkpoint
 * opening in the inference engine; and LoRA adapters on q / v (gradients against PyTorch and
 * finite differences, the lora / proj+lora modes, resume, init and arguments, and the merged
 * export giving the engine the trainer's logits).
 */
#include "test.h"

#include "synth.h"
#include "train.h"
#include "train_ops.h"
#include "trainloop.h"
#include "vision.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== helpers ==== */

static float *load_npy(const char *dir, const char *name, int64_t *n_out) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    int64_t shape[4];
    int nd;
    float *a = test_read_npy_f32(path, shape, &nd);
    if (a && n_out) {
        int64_t n = 1;
        for (int i = 0; i < nd; i++) n *= shape[i];
        *n_out = n;
    }
    if (!a) printf("    cannot read %s\n", path);
    return a;
}

/* max |a - b| / max |b| (absolute when b is all zero). */
static double rel_err(const float *a, const float *b, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= num)) num = e; /* NaN propagates */
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0.0 ? num / den : num;
}

static const char *ref_script(void) { return "tests/ref/train_ref.py"; }

/* Runs the reference once per process for a command; false (and a skip reason) when unavailable. */
static bool run_ref(const char *cmd, const char *dir) {
    int rc = test_run("%s %s %s %s", test_python(), ref_script(), cmd, dir);
    if (rc != 0) printf("    %s %s %s failed (rc %d)\n", test_python(), ref_script(), cmd, rc);
    return rc == 0;
}

static const char *ops_dir(void) {
    static char dir[4096];
    static int state; /* 0 = not run, 1 = ok, -1 = failed */
    if (!state) {
        snprintf(dir, sizeof dir, "%s/train_ops", test_data_dir());
        test_run("mkdir -p %s", dir);
        state = run_ref("ops", dir) ? 1 : -1;
    }
    return state > 0 ? dir : NULL;
}

/* ==== the op table shared by the torch and finite-difference tests ==== */

enum { OP_LINEAR, OP_LAYERNORM, OP_RMSNORM, OP_GELU, OP_SILU, OP_SWIGLU, OP_SOFTMAX, OP_ATTN_LLM, OP_ATTN_VIT,
       OP_QKV, OP_PATCH, OP_CLSPOS, OP_MERGE4, OP_EMBED, OP_LORA, OP_COUNT };

typedef struct {
    const char *name;
    int n_in;
    const char *in[4];
    int64_t in_n[4];
    bool has_grad[4]; /* false: the input is data (no gradient) */
    int64_t out_n;
} op_desc;

static const op_desc OPS[OP_COUNT] = {
    {"linear", 3, {"x", "W", "b"}, {45, 63, 7}, {1, 1, 1}, 35},
    {"layernorm", 3, {"x", "w", "b"}, {48, 12, 12}, {1, 1, 1}, 48},
    {"rmsnorm", 2, {"x", "w"}, {48, 12}, {1, 1}, 48},
    {"gelu", 1, {"x"}, {33}, {1}, 33},
    {"silu", 1, {"x"}, {33}, {1}, 33},
    {"swiglu", 2, {"g", "u"}, {33, 33}, {1, 1}, 33},
    {"softmax", 1, {"x"}, {36}, {1}, 36},
    {"attn_llm", 3, {"q", "k", "v"}, {192, 96, 96}, {1, 1, 1}, 192},
    {"attn_vit", 3, {"q", "k", "v"}, {60, 60, 60}, {1, 1, 1}, 60},
    {"qkv", 4, {"x", "W", "qb", "vb"}, {30, 108, 6, 6}, {1, 1, 1, 1}, 90},
    {"patch", 3, {"img", "W", "b"}, {3 * 28 * 28, 5 * 588, 5}, {0, 1, 1}, 20},
    {"clspos", 3, {"patch", "cls", "pos"}, {24, 3, 27}, {1, 1, 1}, 27},
    {"merge4", 1, {"x"}, {27}, {1}, 24},
    {"embed", 1, {"table"}, {24}, {1}, 20},
    {"lora", 4, {"x", "W", "A", "B"}, {45, 63, 27, 21}, {1, 1, 1, 1}, 35},
};

static const int32_t EMBED_IDS[5] = {3, 0, 3, 5, 1};

/* Scratch for the ops (sized for the largest shapes above). */
typedef struct {
    float a[8192], b[8192], c[8192], d[8192];
} op_scratch;

static void attn_dims(int op, tr_attn_dims *d, float *cs, float *sn) {
    memset(d, 0, sizeof *d);
    if (op == OP_ATTN_LLM) {
        d->T = 6; d->n_head = 4; d->n_head_kv = 2; d->head_dim = 8; d->causal = true;
        tr_rope_tables(cs, sn, 6, 8, 100.0f);
        d->rope_cos = cs;
        d->rope_sin = sn;
    } else {
        d->T = 5; d->n_head = 2; d->n_head_kv = 2; d->head_dim = 6;
    }
}

static void op_forward(int op, float *const *in, float *y, op_scratch *s) {
    switch (op) {
    case OP_LINEAR: tr_linear_fwd(NULL, y, in[0], in[1], in[2], 5, 7, 9); break;
    case OP_LAYERNORM: tr_layernorm_fwd(NULL, y, s->a, s->b, in[0], in[1], in[2], 4, 12, 1e-6f); break;
    case OP_RMSNORM: tr_rmsnorm_fwd(y, s->a, in[0], in[1], 4, 12, 1e-5f); break;
    case OP_GELU: tr_gelu_fwd(y, in[0], 33); break;
    case OP_SILU: tr_silu_fwd(y, in[0], 33); break;
    case OP_SWIGLU: tr_swiglu_fwd(y, in[0], in[1], 33); break;
    case OP_SOFTMAX: tr_softmax_fwd(y, in[0], 4, 9); break;
    case OP_ATTN_LLM:
    case OP_ATTN_VIT: {
        tr_attn_dims d;
        float cs[64], sn[64];
        attn_dims(op, &d, cs, sn);
        tr_attn_fwd(NULL, &d, y, s->a, s->b, s->c, in[0], in[1], in[2]);
        break;
    }
    case OP_QKV: /* three row blocks of W, k without bias, interleaved into y[5, 18] */
        for (int p = 0; p < 3; p++) {
            tr_linear_fwd(NULL, s->a, in[0], in[1] + p * 36, p == 0 ? in[2] : p == 2 ? in[3] : NULL, 5, 6, 6);
            for (int r = 0; r < 5; r++) memcpy(y + r * 18 + p * 6, s->a + r * 6, 6 * sizeof(float));
        }
        break;
    case OP_PATCH:
        tr_patchify(s->a, in[0], 28, 14);
        tr_linear_fwd(NULL, y, s->a, in[1], in[2], 4, 5, 588);
        break;
    case OP_CLSPOS: tr_cls_pos_fwd(y, in[0], in[1], in[2], 8, 3); break;
    case OP_MERGE4: tr_merge4_fwd(y, in[0], 8, 3); break;
    case OP_EMBED: tr_embed_fwd(y, in[0], EMBED_IDS, 5, 4); break;
    case OP_LORA: /* x[5, 9] W[7, 9]^T + 1.5 (x A[3, 9]^T) B[7, 3]^T; s->b keeps x A^T */
        tr_linear_fwd(NULL, y, in[0], in[1], NULL, 5, 7, 9);
        tr_lora_fwd(NULL, y, s->a, s->b, in[0], in[2], in[3], 5, 7, 9, 3, 1.5f);
        break;
    }
}

/* Gradients of sum(y * dy) into din (accumulated; caller zeroes). Re-runs the forward for caches. */
static void op_backward(int op, float *const *in, const float *dy, float **din, op_scratch *s) {
    float y[8192];
    op_forward(op, in, y, s);
    switch (op) {
    case OP_LINEAR: tr_linear_bwd(NULL, din[0], din[1], din[2], dy, in[0], in[1], 5, 7, 9); break;
    case OP_LAYERNORM: tr_layernorm_bwd(NULL, din[0], din[1], din[2], dy, in[0], s->a, s->b, in[1], 4, 12); break;
    case OP_RMSNORM: tr_rmsnorm_bwd(din[0], din[1], dy, in[0], s->a, in[1], 4, 12); break;
    case OP_GELU: tr_gelu_bwd(din[0], dy, in[0], 33); break;
    case OP_SILU: tr_silu_bwd(din[0], dy, in[0], 33); break;
    case OP_SWIGLU: tr_swiglu_bwd(din[0], din[1], dy, in[0], in[1], 33); break;
    case OP_SOFTMAX: tr_softmax_bwd(din[0], dy, y, 4, 9); break;
    case OP_ATTN_LLM:
    case OP_ATTN_VIT: {
        tr_attn_dims d;
        float cs[64], sn[64];
        attn_dims(op, &d, cs, sn);
        tr_attn_bwd(NULL, &d, din[0], din[1], din[2], dy, s->a, s->b, in[2], s->c, s->d);
        break;
    }
    case OP_QKV:
        for (int p = 0; p < 3; p++) {
            for (int r = 0; r < 5; r++) memcpy(s->b + r * 6, dy + r * 18 + p * 6, 6 * sizeof(float));
            tr_linear_bwd(NULL, din[0], din[1] + p * 36, p == 0 ? din[2] : p == 2 ? din[3] : NULL, s->b, in[0],
                          in[1] + p * 36, 5, 6, 6);
        }
        break;
    case OP_PATCH:
        tr_patchify(s->a, in[0], 28, 14);
        tr_linear_bwd(NULL, NULL, din[1], din[2], dy, s->a, in[1], 4, 5, 588);
        break;
    case OP_CLSPOS: tr_cls_pos_bwd(din[0], din[1], din[2], dy, 8, 3); break;
    case OP_MERGE4: tr_merge4_bwd(din[0], dy, 8, 3); break;
    case OP_EMBED: tr_embed_bwd(din[0], dy, EMBED_IDS, 5, 4); break;
    case OP_LORA:
        tr_linear_bwd(NULL, din[0], din[1], NULL, dy, in[0], in[1], 5, 7, 9);
        tr_lora_bwd(NULL, din[0], din[2], din[3], dy, in[0], s->b, in[2], in[3], s->c, s->d, 5, 7, 9, 3, 1.5f);
        break;
    }
}

/* ==== ops vs PyTorch ==== */

TEST(train_ops_torch) {
    const char *dir = ops_dir();
    if (!dir) SKIP("PyTorch reference unavailable");
    static op_scratch s;
    for (int op = 0; op < OP_COUNT; op++) {
        const op_desc *o = &OPS[op];
        char nm[128];
        float *in[4] = {0}, *din[4] = {0}, *ref_din[4] = {0};
        int64_t n;
        bool ok = true;
        for (int i = 0; i < o->n_in; i++) {
            snprintf(nm, sizeof nm, "%s_%s", o->name, o->in[i]);
            in[i] = load_npy(dir, nm, &n);
            ok = ok && in[i] && n == o->in_n[i];
            snprintf(nm, sizeof nm, "%s_d%s", o->name, o->in[i]);
            ref_din[i] = load_npy(dir, nm, &n);
            din[i] = calloc((size_t)o->in_n[i], sizeof(float));
        }
        snprintf(nm, sizeof nm, "%s_y", o->name);
        float *ref_y = load_npy(dir, nm, &n);
        ok = ok && ref_y && n == o->out_n;
        snprintf(nm, sizeof nm, "%s_dy", o->name);
        float *dy = load_npy(dir, nm, &n);
        CHECK_MSG(ok && dy, "op %s: reference data", o->name);
        if (ok && dy) {
            float y[8192];
            op_forward(op, in, y, &s);
            double e = rel_err(y, ref_y, o->out_n);
            CHECK_MSG(e <= 1e-4, "op %s forward rel err %.3g", o->name, e);
            op_backward(op, in, dy, din, &s);
            for (int i = 0; i < o->n_in; i++) {
                if (!o->has_grad[i]) continue;
                e = rel_err(din[i], ref_din[i], o->in_n[i]);
                CHECK_MSG(e <= 1e-4, "op %s d%s rel err %.3g", o->name, o->in[i], e);
            }
        }
        for (int i = 0; i < 4; i++) {
            free(in[i]);
            free(din[i]);
            free(ref_din[i]);
        }
        free(ref_y);
        free(dy);
    }
}

TEST(train_ce_torch) {
    const char *dir = ops_dir();
    if (!dir) SKIP("PyTorch reference unavailable");
    int64_t n;
    float *x = load_npy(dir, "ce_x", &n), *tg = load_npy(dir, "ce_targets", NULL), *mk = load_npy(dir, "ce_mask", NULL);
    float *loss = load_npy(dir, "ce_loss", NULL), *dx_ref = load_npy(dir, "ce_dx", NULL);
    CHECK(x && tg && mk && loss && dx_ref && n == 35);
    if (x && tg && mk && loss && dx_ref) {
        int32_t t[5];
        uint8_t m[5];
        for (int i = 0; i < 5; i++) {
            t[i] = (int32_t)tg[i];
            m[i] = mk[i] > 0;
        }
        float dx[35] = {0};
        float l = tr_cross_entropy(dx, x, t, m, 5, 7, 1.0f);
        CHECK_CLOSE(l, loss[0], 1e-5 * fabs(loss[0]));
        double e = rel_err(dx, dx_ref, 35);
        CHECK_MSG(e <= 1e-5, "ce grad rel err %.3g", e);
    }
    free(x); free(tg); free(mk); free(loss); free(dx_ref);
}

/* ==== ops vs finite differences ==== */

/* sum(y * r) in double for the current inputs. */
static double op_objective(int op, float *const *in, const float *r, op_scratch *s) {
    float y[8192];
    op_forward(op, in, y, s);
    double acc = 0.0;
    for (int64_t i = 0; i < OPS[op].out_n; i++) acc += (double)y[i] * r[i];
    return acc;
}

TEST(train_ops_fd) {
    static op_scratch s;
    uint64_t rng = 42;
    for (int op = 0; op < OP_COUNT; op++) {
        const op_desc *o = &OPS[op];
        float *in[4] = {0}, *din[4] = {0};
        for (int i = 0; i < o->n_in; i++) {
            in[i] = malloc((size_t)o->in_n[i] * sizeof(float));
            din[i] = calloc((size_t)o->in_n[i], sizeof(float));
            for (int64_t j = 0; j < o->in_n[i]; j++) in[i][j] = test_rng_float(&rng) * (op == OP_PATCH ? 0.5f : 1.5f);
        }
        float r[8192];
        for (int64_t j = 0; j < o->out_n; j++) r[j] = test_rng_float(&rng);
        op_backward(op, in, r, din, &s);
        double worst = 0.0;
        for (int i = 0; i < o->n_in; i++) {
            if (!o->has_grad[i]) continue;
            /* every coordinate of small inputs, a strided subset of large ones */
            const int64_t stride = o->in_n[i] > 200 ? o->in_n[i] / 97 : 1;
            for (int64_t j = 0; j < o->in_n[i]; j += stride) {
                const float x0 = in[i][j], h = 1e-2f * fmaxf(1.0f, fabsf(x0));
                in[i][j] = x0 + h;
                const double fp = op_objective(op, in, r, &s);
                in[i][j] = x0 - h;
                const double fm = op_objective(op, in, r, &s);
                in[i][j] = x0;
                const double fd = (fp - fm) / (2.0 * ((double)(x0 + h) - (double)x0));
                const double err = fabs(fd - din[i][j]) / fmax(1.0, fabs(fd));
                worst = fmax(worst, err);
            }
        }
        CHECK_MSG(worst <= 5e-4 && worst > 0.0, "op %s: finite-difference err %.3g", o->name, worst);
        printf("    %-10s fd err %.2g\n", o->name, worst);
        for (int i = 0; i < 4; i++) {
            free(in[i]);
            free(din[i]);
        }
    }
    /* masked cross-entropy: loss in double vs its gradient */
    float x[35], dx[35] = {0};
    int32_t t[5] = {1, 4, 0, 6, 2};
    uint8_t m[5] = {1, 0, 1, 1, 1};
    for (int i = 0; i < 35; i++) x[i] = test_rng_float(&rng) * 2.0f;
    tr_cross_entropy(dx, x, t, m, 5, 7, 1.0f);
    double worst = 0.0;
    for (int i = 0; i < 35; i++) {
        const float x0 = x[i], h = 1e-2f;
        x[i] = x0 + h;
        const double fp = tr_cross_entropy(NULL, x, t, m, 5, 7, 1.0f);
        x[i] = x0 - h;
        const double fm = tr_cross_entropy(NULL, x, t, m, 5, 7, 1.0f);
        x[i] = x0;
        worst = fmax(worst, fabs((fp - fm) / (2.0 * h) - dx[i]));
    }
    CHECK_MSG(worst <= 1e-3, "cross-entropy finite-difference err %.3g", worst);
}

/* Binary cross-entropy with logits: the closed form in double, its gradient against central
 * differences, stability at large |z|, and scale. */
TEST(train_bce_logits) {
    float z[9] = {-3.0f, -0.5f, 0.0f, 0.25f, 1.5f, 4.0f, -40.0f, 40.0f, 0.7f};
    float t[9] = {0.0f, 1.0f, 0.5f, 0.0f, 1.0f, 0.25f, 0.0f, 1.0f, 0.9f};
    float dz[9];
    const float l = tr_bce_logits(dz, z, t, 9, 1.0f);
    double want = 0.0;
    for (int i = 0; i < 9; i++) {
        const double p = 1.0 / (1.0 + exp(-(double)z[i]));
        /* direct form where it is representable; the saturated entries contribute about 0 */
        const double li = fabs(z[i]) > 30 ? 0.0 : -(t[i] * log(p) + (1.0 - t[i]) * log(1.0 - p));
        want += li;
        CHECK(fabs(dz[i] - (p - t[i]) / 9.0) < 1e-6);
    }
    want /= 9.0;
    CHECK_MSG(fabs(l - want) < 1e-5, "bce %.7f, closed form %.7f", l, want);
    CHECK(isfinite(l));
    double worst = 0.0;
    for (int i = 0; i < 9; i++) {
        if (fabs(z[i]) > 30) continue;
        const float z0 = z[i], h = 1e-2f;
        z[i] = z0 + h;
        const double fp = tr_bce_logits(NULL, z, t, 9, 1.0f);
        z[i] = z0 - h;
        const double fm = tr_bce_logits(NULL, z, t, 9, 1.0f);
        z[i] = z0;
        worst = fmax(worst, fabs((fp - fm) / (2.0 * h) - dz[i]));
    }
    CHECK_MSG(worst <= 1e-4, "bce finite-difference err %.3g", worst);
    float dz2[9];
    tr_bce_logits(dz2, z, t, 9, 2.5f);
    for (int i = 0; i < 9; i++) CHECK(fabs(dz2[i] - 2.5f * dz[i]) < 1e-6);
    CHECK(tr_bce_logits(dz2, z, t, 0, 1.0f) == 0.0f);
}

/* ==== whole model ==== */

/* A tiny model with every parameter random (norm weights near 1, biases nonzero); with lora_rank
 * > 0 it has LoRA adapters (alpha 2 x rank) as tr_model_create starts them (B = 0). */
static tr_model *make_model_lora(uint64_t seed, int n_threads, int lora_rank) {
    tr_config c = tr_config_tiny();
    c.lora_rank = lora_rank;
    c.lora_alpha = 2.0f * (float)lora_rank;
    tr_model *m = NULL;
    char err[256];
    if (tr_model_create(&m, &c, seed, n_threads, err, sizeof err) != MG_OK) {
        printf("    %s\n", err);
        return NULL;
    }
    uint64_t s = seed ^ 0xabcdef;
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        float *p = m->params + t->off;
        if (t->decay) continue;
        bool norm_w = (strstr(t->name, "norm") || strstr(t->name, "ln")) && !strstr(t->name, "bias");
        for (int64_t j = 0; j < t->n; j++)
            p[j] = norm_w ? 1.0f + 0.2f * test_rng_float(&s) : 0.1f * test_rng_float(&s);
    }
    return m;
}

static tr_model *make_model(uint64_t seed, int n_threads) { return make_model_lora(seed, n_threads, 0); }

/* Every LoRA B of m drawn from (-amp, amp) (they start at 0), so the adapters change the output. */
static void lora_fill_b(tr_model *m, float amp, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        if (t->group != TR_GROUP_LORA || t->name[strlen(t->name) - 1] != 'b') continue;
        for (int64_t j = 0; j < t->n; j++) m->params[t->off + j] = amp * test_rng_float(&s);
    }
}

typedef struct {
    float image[3 * 56 * 56];
    int32_t ids[16];
    uint8_t mask[16];
    tr_example ex;
} example_buf;

static void make_example(example_buf *b, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < 3 * 56 * 56; i++) b->image[i] = test_rng_float(&s);
    for (int j = 0; j < 16; j++) {
        b->ids[j] = (int32_t)(test_rng_next(&s) % 320);
        b->mask[j] = j >= 6; /* the "answer" */
    }
    b->ids[0] = 1;
    b->ex = (tr_example){.image = b->image, .ids = b->ids, .mask = b->mask, .n_text = 16, .img_pos = 3};
}

static bool write_npy(const char *dir, const char *name, const float *a, int64_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    char hdr[128];
    int hl = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld,), }",
                      (long long)n);
    int total = 10 + hl + 1, pad = (64 - total % 64) % 64;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    pre[8] = (unsigned char)((hl + pad + 1) & 0xff);
    pre[9] = (unsigned char)((hl + pad + 1) >> 8);
    fwrite(pre, 1, 10, f);
    fwrite(hdr, 1, (size_t)hl, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    fwrite(a, sizeof(float), (size_t)n, f);
    return fclose(f) == 0;
}

/* Loss and every parameter gradient of m (all its groups learning) against the PyTorch model of
 * tests/ref/train_ref.py, in folder `sub` of the test data; frees m. */
static void check_model_torch(tr_model *m, const char *sub) {
    char dir[4096], ckpt[4200], err[256];
    snprintf(dir, sizeof dir, "%s/%s", test_data_dir(), sub);
    test_run("mkdir -p %s", dir);
    CHECK(m != NULL);
    if (!m) return;
    static example_buf b;
    make_example(&b, 99);
    snprintf(ckpt, sizeof ckpt, "%s/model.gguf", dir);
    CHECK(tr_save(m, ckpt, NULL, err, sizeof err) == MG_OK);
    float ids[16], mask[16], pos = 3;
    for (int j = 0; j < 16; j++) {
        ids[j] = (float)b.ids[j];
        mask[j] = b.mask[j];
    }
    CHECK(write_npy(dir, "ex_image", b.image, 3 * 56 * 56) && write_npy(dir, "ex_ids", ids, 16) &&
          write_npy(dir, "ex_mask", mask, 16) && write_npy(dir, "ex_pos", &pos, 1));
    tr_zero_grad(m);
    float loss = 0;
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
    int rc = test_run("%s %s model %s %s", test_python(), ref_script(), ckpt, dir);
    if (rc != 0) {
        tr_model_free(m);
        SKIP("PyTorch reference unavailable (rc %d)", rc);
    }
    float *ref_loss = load_npy(dir, "model_loss", NULL);
    CHECK(ref_loss != NULL);
    if (ref_loss) CHECK_CLOSE(loss, ref_loss[0], 1e-5 * fabs(ref_loss[0]));
    printf("    loss C %.7f torch %.7f\n", loss, ref_loss ? ref_loss[0] : 0.0f);
    double worst = 0.0;
    const char *worst_name = "";
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        char nm[96];
        snprintf(nm, sizeof nm, "grad_%s", t->name);
        int64_t n = 0;
        float *g = load_npy(dir, nm, &n);
        CHECK_MSG(g && n == t->n, "reference gradient of %s", t->name);
        if (g && n == t->n) {
            double e = rel_err(m->grads + t->off, g, t->n);
            CHECK_MSG(e <= 1e-4, "gradient of %s: rel err %.3g", t->name, e);
            if (e > worst) {
                worst = e;
                worst_name = t->name;
            }
        }
        free(g);
    }
    printf("    worst gradient rel err %.3g %s\n", worst, worst_name);
    free(ref_loss);
    tr_model_free(m);
}

TEST(train_model_torch) { check_model_torch(make_model(7, 2), "train_model"); }

/* The same with LoRA adapters (rank 4, alpha 8: scale 2) whose B is not zero: the loss and the
 * gradients of every tensor, adapters included, against PyTorch autograd. */
TEST(train_lora_model_torch) {
    tr_model *m = make_model_lora(7, 2, 4);
    if (m) {
        lora_fill_b(m, 0.2f, 5);
        m->train_mask |= TR_GROUP_LORA;
    }
    check_model_torch(m, "train_lora_model");
}

/* ==== optimiser ==== */

TEST(train_adamw_torch) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/train_adamw", test_data_dir());
    test_run("mkdir -p %s", dir);
    if (!run_ref("adamw", dir)) SKIP("PyTorch reference unavailable");
    float *W = load_npy(dir, "adam_W0", NULL), *bb = load_npy(dir, "adam_b0", NULL);
    float *W3 = load_npy(dir, "adam_W3", NULL), *b3 = load_npy(dir, "adam_b3", NULL);
    CHECK(W && bb && W3 && b3);
    if (W && bb && W3 && b3) {
        float mW[30] = {0}, vW[30] = {0}, mb[5] = {0}, vb[5] = {0};
        for (int s = 0; s < 3; s++) {
            char nm[32];
            snprintf(nm, sizeof nm, "adam_gW%d", s);
            float *gW = load_npy(dir, nm, NULL);
            snprintf(nm, sizeof nm, "adam_gb%d", s);
            float *gb = load_npy(dir, nm, NULL);
            CHECK(gW && gb);
            if (gW && gb) {
                tr_adamw_update(W, gW, mW, vW, 30, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, s + 1);
                tr_adamw_update(bb, gb, mb, vb, 5, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, s + 1);
            }
            free(gW);
            free(gb);
        }
        double e = 0.0;
        for (int i = 0; i < 30; i++) e = fmax(e, fabs((double)W[i] - W3[i]));
        for (int i = 0; i < 5; i++) e = fmax(e, fabs((double)bb[i] - b3[i]));
        CHECK_MSG(e <= 1e-6, "AdamW vs torch: max abs err %.3g", e);
    }
    free(W); free(bb); free(W3); free(b3);
}

TEST(train_schedule_clip) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/train_sched", test_data_dir());
    test_run("mkdir -p %s", dir);
    if (!run_ref("sched", dir)) SKIP("PyTorch reference unavailable");
    float *v = load_npy(dir, "sched", NULL);
    CHECK(v != NULL);
    tr_opt o = tr_opt_default();
    o.lr = 1e-3f;
    o.lr_min = 1e-4f;
    o.warmup = 10;
    o.total = 100;
    double e = 0.0;
    for (int s = 0; v && s < 120; s++) e = fmax(e, fabs(tr_lr_at(&o, s) - v[s]));
    CHECK_MSG(e <= 1e-9, "schedule max abs err %.3g", e);
    free(v);
    /* clipping on a model whose trained gradients are two tensors of the reference */
    tr_model *m = make_model(3, 1);
    float *g1 = load_npy(dir, "clip_g1", NULL), *g2 = load_npy(dir, "clip_g2", NULL);
    float *nr = load_npy(dir, "clip_norm", NULL), *c1 = load_npy(dir, "clip_c1", NULL), *c2 = load_npy(dir, "clip_c2", NULL);
    CHECK(m && g1 && g2 && nr && c1 && c2);
    if (m && g1 && g2 && nr && c1 && c2) {
        tr_zero_grad(m);
        m->train_mask = TR_GROUP_PROJ;
        const tr_tensor *pw = &m->tensors[tr_find_tensor(m, "mm.proj.weight")];
        const tr_tensor *pb = &m->tensors[tr_find_tensor(m, "mm.proj.bias")];
        memcpy(m->grads + pb->off, g1, 7 * sizeof(float));
        memcpy(m->grads + pw->off, g2, 12 * sizeof(float));
        const tr_tensor *te = &m->tensors[tr_find_tensor(m, "token_embd.weight")];
        m->grads[te->off] = 100.0f; /* a frozen group: not part of the norm, left alone */
        double n = tr_clip_grad(m, 1.5f);
        CHECK_CLOSE(n, nr[0], 1e-6 * nr[0]);
        CHECK(rel_err(m->grads + pb->off, c1, 7) <= 1e-6);
        CHECK(rel_err(m->grads + pw->off, c2, 12) <= 1e-6);
        /* below the bound nothing changes */
        float before = m->grads[pw->off];
        tr_clip_grad(m, 100.0f);
        CHECK(m->grads[pw->off] == before);
        CHECK(m->grads[te->off] == 100.0f);
    }
    free(g1); free(g2); free(nr); free(c1); free(c2);
    tr_model_free(m);
}

/* ==== training behaviour ==== */

static float train_steps(tr_model *m, const tr_example *ex, const tr_opt *o, int n) {
    float loss = NAN;
    char err[256];
    for (int i = 0; i < n; i++) {
        tr_zero_grad(m);
        if (tr_forward_backward(m, ex, true, 1.0f, &loss, err, sizeof err) != MG_OK) {
            printf("    %s\n", err);
            return NAN;
        }
        tr_step(m, o, NULL, NULL);
    }
    return loss;
}

TEST(train_overfit) {
    tr_config c = tr_config_tiny();
    tr_model *m = NULL;
    char err[256];
    CHECK(tr_model_create(&m, &c, 11, 2, err, sizeof err) == MG_OK);
    if (!m) return;
    static example_buf b;
    make_example(&b, 5);
    tr_opt o = tr_opt_default();
    o.lr = 3e-3f;
    o.total = 200;
    float l0 = 0;
    CHECK(tr_forward_backward(m, &b.ex, false, 1.0f, &l0, err, sizeof err) == MG_OK);
    const int steps = test_quick() ? 60 : 200;
    float l1 = train_steps(m, &b.ex, &o, steps);
    CHECK(tr_forward_backward(m, &b.ex, false, 1.0f, &l1, err, sizeof err) == MG_OK);
    printf("    loss %.4f -> %.4f after %d steps\n", l0, l1, steps);
    CHECK(l0 > 5.0f); /* ~ log(320) */
    CHECK_MSG(l1 < (test_quick() ? 1.0f : 0.05f), "final loss %.4f", l1);
    tr_model_free(m);
}

TEST(train_resume_bit_identical) {
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/train_resume.gguf", test_data_dir());
    static example_buf b;
    make_example(&b, 8);
    tr_opt o = tr_opt_default();
    o.total = 20;
    o.warmup = 3;
    tr_model *a = make_model(21, 2);
    CHECK(a != NULL);
    if (!a) return;
    train_steps(a, &b.ex, &o, 4);
    CHECK(tr_save(a, path, NULL, err, sizeof err) == MG_OK);
    train_steps(a, &b.ex, &o, 3);
    tr_model *r = NULL;
    CHECK(tr_load(&r, path, 2, err, sizeof err) == MG_OK);
    if (r) {
        CHECK_EQ_INT(r->step, 4);
        CHECK_EQ_INT(r->n_params, a->n_params);
        train_steps(r, &b.ex, &o, 3);
        CHECK_EQ_INT(r->step, 7);
        CHECK(memcmp(r->params, a->params, (size_t)a->n_params * sizeof(float)) == 0);
        CHECK(memcmp(r->adam_m, a->adam_m, (size_t)a->n_params * sizeof(float)) == 0);
        CHECK(memcmp(r->adam_v, a->adam_v, (size_t)a->n_params * sizeof(float)) == 0);
    }
    tr_model_free(r);
    tr_model_free(a);
}

/* Three steps in one training mode: every tensor of the learning groups changes, every other one
 * stays bit-identical, and the gradient of tensor `probe` is not zero and equals that of a full
 * backward (every group learning). lora_rank > 0: a model with adapters (B = 0 at the start). */
static void check_train_mode(const char *mode, int group, const char *probe, int seed, int lora_rank) {
    char err[256];
    static example_buf b;
    make_example(&b, 12);
    tr_model *m = make_model_lora(seed, 2, lora_rank);
    CHECK(m != NULL);
    if (!m) return;
    CHECK(tr_parse_mode(mode, &m->train_mask, err, sizeof err) == MG_OK);
    CHECK_EQ_INT(m->train_mask, group);
    float *before = malloc((size_t)m->n_params * sizeof(float));
    memcpy(before, m->params, (size_t)m->n_params * sizeof(float));
    tr_opt o = tr_opt_default();
    train_steps(m, &b.ex, &o, 3);
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        bool same = memcmp(before + t->off, m->params + t->off, (size_t)t->n * sizeof(float)) == 0;
        if (t->group & group) CHECK_MSG(!same, "%s: %s must learn", mode, t->name);
        else CHECK_MSG(same, "%s: %s must stay bit-identical", mode, t->name);
    }
    tr_model *f = make_model_lora(seed, 2, lora_rank);
    if (f) {
        float l;
        f->train_mask = TR_GROUP_VISION | TR_GROUP_PROJ | TR_GROUP_LLM | (lora_rank > 0 ? TR_GROUP_LORA : 0);
        memcpy(f->params, m->params, (size_t)m->n_params * sizeof(float));
        tr_zero_grad(m);
        tr_zero_grad(f);
        CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &l, err, sizeof err) == MG_OK);
        CHECK(tr_forward_backward(f, &b.ex, true, 1.0f, &l, err, sizeof err) == MG_OK);
        const tr_tensor *pt = &m->tensors[tr_find_tensor(m, probe)];
        CHECK(memcmp(m->grads + pt->off, f->grads + pt->off, (size_t)pt->n * sizeof(float)) == 0);
        int64_t nz = 0;
        for (int64_t j = 0; j < pt->n; j++) nz += m->grads[pt->off + j] != 0.0f;
        CHECK_MSG(nz > 0, "%s: the gradient of %s is zero", mode, probe);
    }
    tr_model_free(f);
    free(before);
    tr_model_free(m);
}

/* --train proj: MiniGPT-4's recipe, only the projection learns. */
TEST(train_proj_mode) {
    char err[256];
    int mask = 0;
    CHECK(tr_parse_mode("bogus", &mask, err, sizeof err) == MG_ERR_INVALID_ARG);
    check_train_mode("proj", TR_GROUP_PROJ, "mm.proj.weight", 31, 0);
}

/* --train llm: only the language model learns; the projection (frozen at its start, it keeps the
 * tower's colour directions in the image rows) and the tower stay as they are. */
TEST(train_llm_mode) { check_train_mode("llm", TR_GROUP_LLM, "blk.0.attn_q.weight", 33, 0); }

/* --train lora: only the adapters learn (A from the second step on, once B is not zero), the base
 * weights, projection and tower stay bit-identical. */
TEST(train_lora_mode) { check_train_mode("lora", TR_GROUP_LORA, "lora.blk.0.attn_q.a", 35, 4); }

/* --train proj+lora (MiniGPT-v2's recipe): the projection and the adapters learn; its gradient
 * reaches the image rows through every layer's adapters. */
TEST(train_proj_lora_mode) {
    check_train_mode("proj+lora", TR_GROUP_PROJ | TR_GROUP_LORA, "mm.proj.weight", 37, 3);
}

TEST(train_bad_example) {
    char err[256];
    tr_model *m = make_model(1, 1);
    CHECK(m != NULL);
    if (!m) return;
    static example_buf b;
    make_example(&b, 1);
    float l;
    b.ids[4] = 320;
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &l, err, sizeof err) == MG_ERR_INVALID_ARG);
    b.ids[4] = 5;
    b.ex.img_pos = 17;
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &l, err, sizeof err) == MG_ERR_INVALID_ARG);
    tr_config c = tr_config_tiny();
    c.image_size = 42; /* 3x3 patches: not a multiple of 4 */
    tr_model *bad = NULL;
    CHECK(tr_model_create(&bad, &c, 1, 1, err, sizeof err) == MG_ERR_INVALID_ARG && bad == NULL);
    tr_model_free(m);
}

/* Writes the tiny synthetic model (for its tokenizer) to DATA/train_tok.gguf and opens it;
 * NULL after a failed CHECK. */
static gguf_file *open_tiny_tokenizer(void) {
    char syn[4096], err[256];
    snprintf(syn, sizeof syn, "%s/train_tok.gguf", test_data_dir());
    const synth_preset *sp = synth_find_preset("tiny");
    CHECK(sp != NULL);
    if (!sp || synth_write_gguf(sp, MG_TYPE_F32, 1, syn, err, sizeof err) != MG_OK) {
        CHECK_MSG(0, "synth: %s", err);
        return NULL;
    }
    gguf_file *tokf = NULL;
    CHECK_MSG(gguf_open(&tokf, syn, err, sizeof err) == MG_OK, "%s", err);
    return tokf;
}

/* A checkpoint runs in the engine: its vision tower gives the trainer's image rows and its
 * language model the trainer's last-row logits (so names, layouts and RoPE agree). */
TEST(train_ckpt_runs_in_engine) {
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/train_engine.gguf", test_data_dir());
    gguf_file *tokf = open_tiny_tokenizer();
    tr_model *m = make_model(41, 2);
    CHECK(m != NULL);
    if (!m || !tokf) {
        gguf_close(tokf);
        tr_model_free(m);
        return;
    }
    static example_buf b;
    make_example(&b, 77);
    float loss;
    CHECK(tr_forward_backward(m, &b.ex, false, 1.0f, &loss, err, sizeof err) == MG_OK);
    CHECK(tr_save(m, path, tokf, err, sizeof err) == MG_OK);
    gguf_close(tokf);
    int L = 0;
    const float *rows = tr_last_rows(m, &L), *logits = tr_last_logits(m);
    const int d = m->cfg.n_embd, V = m->cfg.n_vocab, n_img = 4;
    CHECK(rows && logits && L == 20);

    /* vision tower of the engine on the same image */
    gguf_file *f = NULL;
    mg_vision *v = NULL;
    CHECK(gguf_open(&f, path, err, sizeof err) == MG_OK);
    if (f && vision_load(&v, f, err, sizeof err) == MG_OK) {
        float img_rows[4 * 64];
        mg_kernels_init();
        mg_kernel_opts ko = {true};
        CHECK(vision_encode(v, NULL, &ko, b.image, img_rows, err, sizeof err) == MG_OK);
        double e = rel_err(img_rows, rows + 3 * d, (int64_t)n_img * d);
        printf("    engine image rows vs trainer: rel err %.3g\n", e);
        CHECK_MSG(e <= 1e-4, "image rows rel err %.3g", e);
    } else {
        CHECK_MSG(0, "vision_load: %s", err);
    }
    vision_free(v);
    gguf_close(f);

    /* language model of the engine on the trainer's input rows */
    mg_model *em = NULL;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 1;
    mp.use_ref = 1;
    CHECK(mg_model_open(&em, path, &mp, err, sizeof err) == MG_OK);
    if (em) {
        mg_session *s = NULL;
        mg_session_params spp = mg_session_default_params();
        spp.n_ctx = 64;
        CHECK(mg_session_create(&s, em, &spp, err, sizeof err) == MG_OK);
        if (s && rows) {
            CHECK(mg_session_eval_embd(s, rows, L) == MG_OK);
            const float *el = mg_session_logits(s);
            double e = el ? rel_err(el, logits + (int64_t)(L - 1) * V, V) : 1.0;
            printf("    engine last-row logits vs trainer: rel err %.3g\n", e);
            CHECK_MSG(e <= 1e-4, "logits rel err %.3g", e);
        }
        mg_session_free(s);
    } else {
        printf("    mg_model_open: %s\n", err);
    }
    mg_model_close(em);
    tr_model_free(m);
}

/* Central differences of loss + aux_weight * aux loss + mask_weight * mask loss (the weights and
 * targets of ex; m->grads must hold that objective's gradient) at 4 random entries of each named
 * tensor; checks each and returns the worst relative error. ex->aux_loss / mask_loss are reset. */
static double heads_fd(tr_model *m, tr_example *ex, const char *const *names, size_t n_names, uint64_t *s,
                       int *checked) {
    char err[256];
    double worst = 0;
    for (size_t k = 0; k < n_names; k++) {
        int ti = tr_find_tensor(m, names[k]);
        CHECK(ti >= 0);
        if (ti < 0) continue;
        const tr_tensor *t = &m->tensors[ti];
        for (int rep = 0; rep < 4; rep++) {
            int64_t j = t->off + (int64_t)(test_rng_next(s) % (uint64_t)t->n);
            const float keep = m->params[j], h = 1e-2f;
            float l[2], a[2] = {0, 0}, mk[2] = {0, 0};
            for (int side = 0; side < 2; side++) {
                m->params[j] = keep + (side ? -h : h);
                ex->aux_loss = &a[side];
                ex->mask_loss = &mk[side];
                tr_forward_backward(m, ex, false, 1.0f, &l[side], err, sizeof err);
            }
            m->params[j] = keep;
            const double wa = ex->aux_weight, wm = ex->mask_weight;
            const double fd = ((l[0] + wa * a[0] + wm * mk[0]) - (l[1] + wa * a[1] + wm * mk[1])) / (2.0 * h),
                         g = m->grads[j];
            const double e = fabs(fd - g) / (2e-3 + fabs(fd));
            if (e > worst) worst = e;
            CHECK_MSG(e < 3e-2, "%s[%lld]: analytic %.6g, differences %.6g", names[k], (long long)(j - t->off), g, fd);
            (*checked)++;
        }
    }
    ex->aux_loss = ex->mask_loss = NULL;
    return worst;
}

/* A one-thread model of config c (init seed `seed`) with every parameter moved by up to 0.05
 * (from the generator *s, which the caller goes on using), so that no gradient is trivially 0. */
static tr_model *perturbed_model(const tr_config *c, uint64_t seed, uint64_t *s) {
    tr_model *m = NULL;
    char err[256];
    CHECK_MSG(tr_model_create(&m, c, seed, 1, err, sizeof err) == MG_OK, "%s", err);
    if (m)
        for (int64_t i = 0; i < m->n_params; i++) m->params[i] += 0.05f * test_rng_float(s);
    return m;
}

/* The auxiliary patch head: loss = text CE + w * patch CE; every gradient it touches (head,
 * ln_vision, the tower, the patch embedding) against central differences of that objective. */
TEST(train_aux_head_fd) {
    tr_config c = tr_config_tiny();
    c.aux_classes = 7;
    uint64_t s = 77;
    char err[256];
    tr_model *m = perturbed_model(&c, 31, &s);
    if (!m) return;
    static example_buf b;
    make_example(&b, 5);
    int32_t labels[16];
    for (int i = 0; i < 16; i++) labels[i] = i == 3 ? -1 : (int32_t)(test_rng_next(&s) % 7); /* -1: ignored */
    float aux = -1.0f;
    b.ex.patch_labels = labels;
    b.ex.aux_weight = 0.7f;
    b.ex.aux_loss = &aux;
    tr_zero_grad(m);
    float loss = 0;
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
    CHECK(aux > 0.5f && aux < 5.0f); /* about log 7 for a fresh head */
    const char *names[] = {"aux.patch_cls.weight", "aux.patch_cls.bias", "v.post_ln.weight", "v.blk.1.ffn_up.weight",
                           "v.blk.0.attn_qkv.weight", "v.patch_embd.weight"};
    int checked = 0;
    const double worst = heads_fd(m, &b.ex, names, sizeof names / sizeof names[0], &s, &checked);
    printf("    %d gradients, worst relative error %.2e\n", checked, worst);
    /* weight 0 leaves the gradients of a plain example (and reports an aux loss of 0) */
    b.ex.aux_loss = &aux;
    tr_zero_grad(m);
    b.ex.aux_weight = 0.0f;
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
    CHECK(aux == 0.0f);
    float *g0 = malloc((size_t)m->n_params * sizeof(float));
    if (g0) {
        memcpy(g0, m->grads, (size_t)m->n_params * sizeof(float));
        tr_zero_grad(m);
        b.ex.patch_labels = NULL;
        CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
        CHECK(memcmp(g0, m->grads, (size_t)m->n_params * sizeof(float)) == 0);
        /* a frozen tower (projection + language model learn): the head changes no gradient, so
         * the trainer makes no labels then */
        m->train_mask = TR_GROUP_PROJ | TR_GROUP_LLM;
        tr_zero_grad(m);
        CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
        memcpy(g0, m->grads, (size_t)m->n_params * sizeof(float));
        b.ex.patch_labels = labels;
        b.ex.aux_weight = 0.7f;
        tr_zero_grad(m);
        CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
        CHECK(aux > 0.0f);
        CHECK(memcmp(g0, m->grads, (size_t)m->n_params * sizeof(float)) == 0);
        free(g0);
    }
    tr_model_free(m);
}

/* --train vision-aux (TR_AUX_ONLY): a training step runs the tower and the heads only. Its loss is
 * the weighted auxiliary loss, its gradients are the auxiliary part of a full step's (full step
 * with the head minus full step without, on every vision tensor), the language model and the
 * projection get none, and a step without labels is refused. */
TEST(train_aux_only_step) {
    tr_config c = tr_config_tiny();
    c.aux_classes = 7;
    uint64_t s = 78;
    char err[256];
    tr_model *m = perturbed_model(&c, 32, &s);
    if (!m) return;
    static example_buf b;
    make_example(&b, 6);
    int32_t labels[16];
    for (int i = 0; i < 16; i++) labels[i] = i == 5 ? -1 : (int32_t)(test_rng_next(&s) % 7);
    float aux = -1.0f, loss = 0.0f;
    const size_t nb = (size_t)m->n_params * sizeof(float);
    float *with = malloc(nb), *without = malloc(nb);
    CHECK(with && without);
    if (!with || !without) {
        free(with);
        free(without);
        tr_model_free(m);
        return;
    }
    b.ex.patch_labels = labels;
    b.ex.aux_weight = 0.7f;
    b.ex.aux_loss = &aux;
    tr_zero_grad(m);
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
    memcpy(with, m->grads, nb);
    const float aux_full = aux;
    b.ex.aux_weight = 0.0f;
    tr_zero_grad(m);
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
    memcpy(without, m->grads, nb);

    int mask = 0;
    CHECK(tr_parse_mode("vision-aux", &mask, err, sizeof err) == MG_OK);
    CHECK_EQ_INT(mask, TR_GROUP_VISION | TR_AUX_ONLY);
    m->train_mask = mask;
    b.ex.aux_weight = 0.7f;
    tr_zero_grad(m);
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
    CHECK_MSG(fabsf(aux - aux_full) <= 1e-6f * aux_full, "aux loss %.8g vs full step %.8g", aux, aux_full);
    CHECK_MSG(fabsf(loss - 0.7f * aux) <= 1e-6f * loss, "loss %.8g, 0.7 x aux %.8g", loss, 0.7f * aux);
    double worst = 0, gmax = 0;
    int n_vision = 0, bad_other = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        for (int64_t j = t->off; j < t->off + t->n; j++) {
            if (t->group != TR_GROUP_VISION) {
                bad_other += m->grads[j] != 0.0f;
                continue;
            }
            const double ref = (double)with[j] - (double)without[j];
            const double e = fabs((double)m->grads[j] - ref);
            if (e > worst) worst = e;
            if (fabs(ref) > gmax) gmax = fabs(ref);
            n_vision++;
        }
    }
    printf("    %d vision gradients: worst |aux-only - (with - without)| %.2e (largest %.2e)\n", n_vision, worst,
           gmax);
    CHECK(gmax > 1e-4);
    CHECK_MSG(worst <= 1e-5 * gmax + 1e-7, "worst %.3g against largest %.3g", worst, gmax);
    CHECK_EQ_INT(bad_other, 0);
    /* an evaluation forward still runs the language model */
    float eval_loss = 0.0f;
    CHECK(tr_forward_backward(m, &b.ex, false, 1.0f, &eval_loss, err, sizeof err) == MG_OK);
    CHECK(eval_loss > 1.0f);
    /* nothing to learn from: refused */
    b.ex.patch_labels = NULL;
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "vision-aux") != NULL);
    CHECK(tr_parse_mode("vision", &mask, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "vision-aux") != NULL);
    free(with);
    free(without);
    tr_model_free(m);
}

/* The auxiliary mask head beside the patch head: loss = text CE + 0.7 patch CE + 0.4 mask BCE;
 * every gradient it touches (both heads, ln_vision, the tower, the patch embedding) against
 * central differences of that objective. */
TEST(train_mask_head_fd) {
    tr_config c = tr_config_tiny();
    c.aux_classes = 7;
    c.aux_mask = c.patch_size * c.patch_size;
    uint64_t s = 91;
    char err[256];
    tr_model *m = perturbed_model(&c, 37, &s);
    if (!m) return;
    static example_buf b;
    make_example(&b, 5);
    const int Np = 16, Q = c.aux_mask;
    int32_t labels[16];
    static float masks[16 * 14 * 14];
    for (int i = 0; i < Np; i++) labels[i] = (int32_t)(test_rng_next(&s) % 7);
    for (int i = 0; i < Np * Q; i++) masks[i] = (float)(test_rng_next(&s) % 5) / 4.0f; /* 0, .25, .. 1 */
    float aux = -1.0f, mk = -1.0f;
    b.ex.patch_labels = labels;
    b.ex.aux_weight = 0.7f;
    b.ex.aux_loss = &aux;
    b.ex.patch_masks = masks;
    b.ex.mask_weight = 0.4f;
    b.ex.mask_loss = &mk;
    tr_zero_grad(m);
    float loss = 0;
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
    CHECK(aux > 0.5f && aux < 5.0f);
    CHECK(mk > 0.3f && mk < 2.0f); /* about log 2 for a fresh head */
    const char *names[] = {"aux.patch_mask.weight", "aux.patch_mask.bias", "aux.patch_cls.weight",
                           "v.post_ln.bias", "v.blk.1.attn_out.weight", "v.patch_embd.weight"};
    int checked = 0;
    const double worst = heads_fd(m, &b.ex, names, sizeof names / sizeof names[0], &s, &checked);
    printf("    %d gradients, worst relative error %.2e\n", checked, worst);
    /* a model config whose mask head is not patch_size^2 wide is refused */
    tr_config bad = c;
    bad.aux_mask = 5;
    tr_model *m2 = NULL;
    CHECK(tr_model_create(&m2, &bad, 1, 1, err, sizeof err) == MG_ERR_INVALID_ARG);
    tr_model_free(m2);
    tr_model_free(m);
}

/* LayerNorm forward and backward on a pool: rows split over the threads, four rows' sums
 * interleaved, dw/db by columns. Every output must be the bits of a plain one-row-at-a-time loop
 * (the per-row double sums in element order, dw/db summed over rows in order), for 1, 2 and 3
 * threads, and row counts that leave groups of four short (the trainer's bits must not depend on
 * how the rows are cut). */
static void ln_plain(float *out, float *mean, float *rstd, float *dx, float *dw, float *db, const float *x,
                     const float *w, const float *b, const float *dout, int64_t M, int64_t C, float eps) {
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * C;
        double s = 0.0, v = 0.0;
        for (int64_t i = 0; i < C; i++) s += xm[i];
        const double mu = s / (double)C;
        for (int64_t i = 0; i < C; i++) v += (xm[i] - mu) * (xm[i] - mu);
        const double r = 1.0 / sqrt(v / (double)C + (double)eps);
        mean[m] = (float)mu;
        rstd[m] = (float)r;
        for (int64_t i = 0; i < C; i++) out[m * C + i] = (float)((xm[i] - mu) * r) * w[i] + b[i];
    }
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * C, *dm = dout + m * C;
        const float mu = mean[m], r = rstd[m];
        double sg = 0.0, sgx = 0.0;
        for (int64_t i = 0; i < C; i++) {
            const float xh = (xm[i] - mu) * r, g = dm[i] * w[i];
            sg += g;
            sgx += (double)g * xh;
            dw[i] += dm[i] * xh;
            db[i] += dm[i];
        }
        const float mg = (float)(sg / (double)C), mgx = (float)(sgx / (double)C);
        for (int64_t i = 0; i < C; i++) {
            const float xh = (xm[i] - mu) * r;
            dx[m * C + i] += r * (dm[i] * w[i] - mg - xh * mgx);
        }
    }
}

TEST(train_layernorm_pool_bits) {
    static const int64_t Ms[] = {1, 3, 4, 7, 145};
    const int64_t C = 37;
    for (size_t t = 0; t < sizeof Ms / sizeof Ms[0]; t++) {
        const int64_t M = Ms[t];
        const size_t n = (size_t)(M * C);
        float *x = malloc(n * 4), *dout = malloc(n * 4), *w = malloc((size_t)C * 4), *b = malloc((size_t)C * 4);
        float *o[2], *mean[2], *rstd[2], *dx[2], *dw[2], *db[2];
        for (int k = 0; k < 2; k++) {
            o[k] = malloc(n * 4);
            dx[k] = malloc(n * 4);
            mean[k] = malloc((size_t)M * 4);
            rstd[k] = malloc((size_t)M * 4);
            dw[k] = malloc((size_t)C * 4);
            db[k] = malloc((size_t)C * 4);
        }
        uint64_t r = 77 + (uint64_t)M;
        for (size_t i = 0; i < n; i++) {
            x[i] = 3.0f * (0.5f * test_rng_float(&r)) + 0.7f;
            dout[i] = 0.5f * test_rng_float(&r);
        }
        for (int64_t i = 0; i < C; i++) w[i] = 1.0f + 0.5f * test_rng_float(&r), b[i] = 0.5f * test_rng_float(&r);
        for (int nt = 1; nt <= 3; nt++) {
            for (int k = 0; k < 2; k++) {
                for (size_t i = 0; i < n; i++) dx[k][i] = 0.125f; /* backward accumulates */
                for (int64_t i = 0; i < C; i++) dw[k][i] = -0.25f, db[k][i] = 0.5f;
            }
            ln_plain(o[0], mean[0], rstd[0], dx[0], dw[0], db[0], x, w, b, dout, M, C, 1e-6f);
            mg_pool *p = NULL;
            CHECK(mg_pool_create(&p, nt) == MG_OK);
            tr_layernorm_fwd(p, o[1], mean[1], rstd[1], x, w, b, M, C, 1e-6f);
            tr_layernorm_bwd(p, dx[1], dw[1], db[1], dout, x, mean[1], rstd[1], w, M, C);
            mg_pool_free(p);
            CHECK_MSG(memcmp(o[0], o[1], n * 4) == 0 && memcmp(mean[0], mean[1], (size_t)M * 4) == 0 &&
                          memcmp(rstd[0], rstd[1], (size_t)M * 4) == 0,
                      "forward M=%lld, %d threads: not the plain loop's bits", (long long)M, nt);
            CHECK_MSG(memcmp(dx[0], dx[1], n * 4) == 0, "dx M=%lld, %d threads", (long long)M, nt);
            CHECK_MSG(memcmp(dw[0], dw[1], (size_t)C * 4) == 0 && memcmp(db[0], db[1], (size_t)C * 4) == 0,
                      "dw/db M=%lld, %d threads", (long long)M, nt);
        }
        free(x);
        free(dout);
        free(w);
        free(b);
        for (int k = 0; k < 2; k++) {
            free(o[k]);
            free(dx[k]);
            free(mean[k]);
            free(rstd[k]);
            free(dw[k]);
            free(db[k]);
        }
    }
}

/* A batch in parallel gives the loss of each example and, summed, the serial gradients. */
TEST(train_batch_parallel) {
    tr_model *a = make_model(3, 2), *b1 = make_model(3, 1);
    CHECK(a && b1);
    if (!a || !b1) {
        tr_model_free(a);
        tr_model_free(b1);
        return;
    }
    static example_buf e[5];
    tr_example ex[5];
    for (int i = 0; i < 5; i++) {
        make_example(&e[i], 40 + (uint64_t)i);
        ex[i] = e[i].ex;
    }
    char err[256];
    float la[5], lb[5];
    tr_zero_grad(a);
    tr_zero_grad(b1);
    CHECK(tr_forward_backward_batch(a, ex, 5, true, 0.2f, la, err, sizeof err) == MG_OK);
    CHECK(tr_forward_backward_batch(b1, ex, 5, true, 0.2f, lb, err, sizeof err) == MG_OK);
    double worst = 0, gmax = 0;
    for (int i = 0; i < 5; i++) CHECK_CLOSE(la[i], lb[i], 1e-5f * fabsf(lb[i]));
    for (int64_t i = 0; i < a->n_params; i++) {
        worst = fmax(worst, fabs((double)a->grads[i] - b1->grads[i]));
        gmax = fmax(gmax, fabs((double)b1->grads[i]));
    }
    printf("    max |grad 2 threads - 1 thread| %.2e (max |grad| %.2e)\n", worst, gmax);
    CHECK(gmax > 0 && worst <= 1e-5 * gmax);
    /* a bad example fails the batch with its message */
    e[2].ids[4] = 100000;
    ex[2] = e[2].ex;
    CHECK(tr_forward_backward_batch(a, ex, 5, true, 0.2f, la, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "vocabulary") != NULL);
    tr_model_free(a);
    tr_model_free(b1);
}

/* tr_example.image_key: with the tower frozen, a run of examples with one key on a replica
 * computes the tower once (tr_tower_runs) and every loss and gradient keeps its bits, also when
 * the examples grow longer (the first keyed example reserves the whole context, so no later one
 * moves the features); a learning tower never shares. */
static bool keyed_batch(int threads, int mask, bool keyed, float *loss, float **grads, int64_t *runs, int64_t *np) {
    tr_model *m = make_model(11, threads);
    if (!m) return false;
    m->train_mask = mask;
    static example_buf e[6];
    static const int n_text[6] = {10, 16, 12, 16, 16, 14}, img[6] = {0, 0, 0, 1, 1, 1};
    tr_example ex[6];
    for (int i = 0; i < 6; i++) make_example(&e[i], 60 + (uint64_t)i);
    for (int i = 0; i < 6; i++) {
        if (i != 0 && i != 3) memcpy(e[i].image, e[img[i] ? 3 : 0].image, sizeof e[i].image);
        ex[i] = e[i].ex;
        ex[i].n_text = n_text[i];
        ex[i].image_key = keyed ? 100 + (uint64_t)img[i] : 0;
    }
    char err[256];
    tr_zero_grad(m);
    bool ok = tr_forward_backward_batch(m, ex, 6, true, 0.25f, loss, err, sizeof err) == MG_OK;
    if (!ok) printf("    %s\n", err);
    *runs = tr_tower_runs(m);
    *np = m->n_params;
    *grads = malloc((size_t)m->n_params * sizeof(float));
    if (*grads) memcpy(*grads, m->grads, (size_t)m->n_params * sizeof(float));
    tr_model_free(m);
    return ok && *grads;
}

TEST(train_shared_image_tower) {
    const int frozen = TR_GROUP_PROJ | TR_GROUP_LLM, all = frozen | TR_GROUP_VISION;
    for (int threads = 1; threads <= 2; threads++)
        for (int learn = 0; learn < 2; learn++) {
            float la[6], lb[6], *ga = NULL, *gb = NULL;
            int64_t ra = 0, rb = 0, na = 0, nb = 0;
            const int mask = learn ? all : frozen;
            CHECK(keyed_batch(threads, mask, true, la, &ga, &ra, &na));
            CHECK(keyed_batch(threads, mask, false, lb, &gb, &rb, &nb));
            if (ga && gb && na == nb) {
                CHECK(memcmp(la, lb, sizeof la) == 0);
                CHECK(memcmp(ga, gb, (size_t)na * sizeof(float)) == 0);
                double gmax = 0;
                for (int64_t i = 0; i < na; i++) gmax = fmax(gmax, fabs((double)gb[i]));
                CHECK(gmax > 0);
            }
            printf("    %d thread(s), tower %s: %lld tower runs keyed, %lld without keys\n", threads,
                   learn ? "learning" : "frozen", (long long)ra, (long long)rb);
            CHECK_EQ_INT((int)rb, 6);
            /* frozen: image 0 on examples 0-2, image 1 on 3-5 (2 threads: parts 0-2 and 3-5) */
            if (!learn) CHECK_EQ_INT((int)ra, 2);
            if (learn) CHECK_EQ_INT((int)ra, 6);
            free(ga);
            free(gb);
        }
}

/* --pos-sincos: the ViT position embedding starts as 2D sine-cosine (x in the first half of the
 * channels, y in the second, CLS row 0); other tensors keep the seed's values; 0 leaves it random. */
TEST(train_pos_sincos_init) {
    tr_config c = tr_config_tiny();
    char err[256];
    tr_model *a = NULL, *b = NULL;
    CHECK(tr_model_create(&a, &c, 5, 1, err, sizeof err) == MG_OK);
    c.pos_sincos = 0.5f;
    CHECK(tr_model_create(&b, &c, 5, 1, err, sizeof err) == MG_OK);
    if (!a || !b) {
        tr_model_free(a);
        tr_model_free(b);
        return;
    }
    const int ip = tr_find_tensor(b, "v.position_embd");
    CHECK(ip >= 0);
    const int G = c.image_size / c.patch_size, E = c.v_embd, Q = E / 4;
    const float *pa = a->params + a->tensors[ip].off, *pb = b->params + b->tensors[ip].off;
    int nonzero_random = 0;
    for (int e = 0; e < E; e++) {
        CHECK(pb[e] == 0.0f);
        nonzero_random += pa[E + e] != 0.0f;
    }
    CHECK(nonzero_random > E / 2); /* the default stays random */
    double worst = 0;
    for (int g = 0; g < G * G; g++) {
        const int gy = g / G, gx = g % G;
        for (int k = 0; k < Q; k++) {
            const double f = pow(0.01, (double)k / (Q - 1)) * 3.14159265358979;
            const float *r = pb + (size_t)(g + 1) * E;
            worst = fmax(worst, fabs(r[k] - 0.5 * sin(gx * f)));
            worst = fmax(worst, fabs(r[Q + k] - 0.5 * cos(gx * f)));
            worst = fmax(worst, fabs(r[2 * Q + k] - 0.5 * sin(gy * f)));
            worst = fmax(worst, fabs(r[3 * Q + k] - 0.5 * cos(gy * f)));
        }
    }
    CHECK_MSG(worst < 1e-6, "sin-cos rows off by %g", worst);
    /* rows of different patches differ (the point of it) */
    CHECK(memcmp(pb + E, pb + 2 * (size_t)E, sizeof(float) * (size_t)E) != 0);
    for (int i = 0; i < a->n_tensors; i++)
        if (i != ip) CHECK(!memcmp(a->params + a->tensors[i].off, b->params + b->tensors[i].off, sizeof(float) * (size_t)a->tensors[i].n));
    tr_model_free(a);
    tr_model_free(b);
}

/* tr_step splits each tensor's AdamW over the pool's threads: one, two or three threads give the
 * same bits (the update is elementwise), and every trained parameter moves. */
TEST(train_step_threads_same_bits) {
    tr_model *m[3] = {make_model(41, 1), make_model(41, 2), make_model(41, 3)};
    CHECK(m[0] && m[1] && m[2]);
    if (m[0] && m[1] && m[2]) {
        const int64_t n = m[0]->n_params;
        float *before = malloc((size_t)n * sizeof(float));
        memcpy(before, m[0]->params, (size_t)n * sizeof(float));
        tr_opt o = tr_opt_default();
        o.lr = 1e-2f;
        o.warmup = 0;
        o.total = 10;
        for (int k = 0; k < 3; k++) {
            uint64_t s = 77;
            m[k]->train_mask = TR_GROUP_VISION | TR_GROUP_PROJ | TR_GROUP_LLM;
            for (int step = 0; step < 3; step++) {
                for (int64_t i = 0; i < n; i++) m[k]->grads[i] = test_rng_float(&s) * 1e-2f;
                tr_step(m[k], &o, NULL, NULL);
            }
        }
        CHECK(memcmp(m[0]->params, m[1]->params, (size_t)n * sizeof(float)) == 0);
        CHECK(memcmp(m[0]->params, m[2]->params, (size_t)n * sizeof(float)) == 0);
        CHECK(memcmp(m[0]->adam_v, m[2]->adam_v, (size_t)n * sizeof(float)) == 0);
        int64_t moved = 0;
        for (int64_t i = 0; i < n; i++) moved += m[2]->params[i] != before[i];
        CHECK_MSG(moved == n, "%lld of %lld parameters moved", (long long)moved, (long long)n);
        free(before);
    }
    for (int k = 0; k < 3; k++) tr_model_free(m[k]);
}

/* The split head (TR_AUX_SPLIT_CLASSES): two softmaxes over one linear layer, shape on the first
 * TR_AUX_SPLIT_FIRST columns and colour on the rest, targets decoded from joint labels. Its loss
 * is the sum of the two cross-entropies recomputed here in double from the head's logits, and
 * its gradients match finite differences down into the tower. */
TEST(train_aux_split_head_fd) {
    tr_config c = tr_config_tiny();
    c.aux_classes = TR_AUX_SPLIT_CLASSES;
    uint64_t s = 91;
    char err[256];
    tr_model *m = perturbed_model(&c, 37, &s);
    if (!m) return;
    static example_buf b;
    make_example(&b, 5);
    const int F = TR_AUX_SPLIT_FIRST, C = TR_AUX_SPLIT_CLASSES, S1 = F - 1, n_joint = 1 + S1 * (C - F - 1);
    int32_t labels[16];
    for (int i = 0; i < 16; i++) labels[i] = (int32_t)(test_rng_next(&s) % (uint64_t)n_joint);
    labels[2] = -1;      /* ignored */
    labels[5] = n_joint; /* past the joint labels: ignored */
    labels[7] = 0;       /* background: both targets 0 */
    labels[9] = n_joint - 1;
    float aux = -1.0f, loss = 0;
    b.ex.patch_labels = labels;
    b.ex.aux_weight = 0.6f;
    b.ex.aux_loss = &aux;
    tr_zero_grad(m);
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
    const float *lg = tr_last_aux_logits(m);
    CHECK(lg != NULL);
    if (lg) {
        double want = 0;
        int n = 0;
        for (int i = 0; i < 16; i++) {
            const int32_t t = labels[i];
            if (t < 0 || t >= n_joint) continue;
            const int ts = t ? 1 + (t - 1) % S1 : 0, tc = t ? 1 + (t - 1) / S1 : 0;
            const float *l = lg + (size_t)i * C;
            double zs = 0, zc = 0;
            for (int k = 0; k < F; k++) zs += exp((double)l[k]);
            for (int k = F; k < C; k++) zc += exp((double)l[k]);
            want += log(zs) - l[ts] + log(zc) - l[F + tc];
            n++;
        }
        want /= n;
        CHECK_EQ_INT(n, 14);
        CHECK_MSG(fabs(aux - want) < 1e-5 * fabs(want), "split loss %.7f, by hand %.7f", aux, want);
        CHECK(aux > 2.0f && aux < 8.0f); /* about log 9 + log 12 for a fresh head */
    }
    const char *names[] = {"aux.patch_cls.weight", "aux.patch_cls.bias", "v.post_ln.weight", "v.blk.1.ffn_up.weight",
                           "v.patch_embd.weight"};
    int checked = 0;
    const double worst = heads_fd(m, &b.ex, names, sizeof names / sizeof names[0], &s, &checked);
    printf("    %d gradients, worst relative error %.2e\n", checked, worst);
    tr_model_free(m);
}

/* tr_cross_entropy_ld over a column group of wider rows = tr_cross_entropy over that group copied
 * out (loss and gradient), and leaves the other columns' gradients alone. */
TEST(train_ce_strided_group) {
    enum { M = 5, LD = 11, G0 = 4, V = 6 };
    uint64_t s = 5;
    float logits[M * LD], sub[M * V], d1[M * LD], d2[M * V];
    for (int i = 0; i < M * LD; i++) logits[i] = 3.0f * test_rng_float(&s);
    for (int m = 0; m < M; m++) memcpy(sub + m * V, logits + m * LD + G0, V * sizeof(float));
    int32_t tg[M] = {0, 5, 2, 3, 1};
    uint8_t mask[M] = {1, 1, 0, 1, 1};
    for (int i = 0; i < M * LD; i++) d1[i] = i % LD >= G0 && i % LD < G0 + V ? 0.0f : 0.25f; /* others: a marker */
    memset(d2, 0, sizeof d2);
    const float a = tr_cross_entropy_ld(d1 + G0, logits + G0, LD, tg, mask, M, V, 0.5f);
    const float b = tr_cross_entropy(d2, sub, tg, mask, M, V, 0.5f);
    CHECK(a == b && a > 0.0f);
    int same = 0, untouched = 0;
    for (int m = 0; m < M; m++)
        for (int j = 0; j < LD; j++) {
            const float g = d1[m * LD + j];
            if (j >= G0 && j < G0 + V) same += g == d2[m * V + j - G0];
            else untouched += g == 0.25f;
        }
    CHECK_EQ_INT(same, M * V);
    CHECK_EQ_INT(untouched, M * (LD - V));
}

/* ==== LoRA ==== */

/* A tiny model with LoRA adapters of rank 4, alpha 8 (scale 2), every parameter moved by up to
 * 0.05 and every B drawn from (-0.2, 0.2), so the adapters carry a good share of q and v; one
 * thread; every group learns. */
static tr_model *lora_fd_model(uint64_t seed, uint64_t *s) {
    tr_config c = tr_config_tiny();
    c.lora_rank = 4;
    c.lora_alpha = 8.0f;
    tr_model *m = perturbed_model(&c, seed, s);
    if (m) {
        lora_fill_b(m, 0.2f, *s);
        m->train_mask = TR_GROUP_VISION | TR_GROUP_PROJ | TR_GROUP_LLM | TR_GROUP_LORA;
    }
    return m;
}

/* The LoRA path against central differences of the loss: the adapters' own gradients (A and B
 * of q and v in both layers), and gradients that reach earlier tensors through the adapters'
 * d(input) (layer 0's attention norm, the projection, the token embedding). */
TEST(train_lora_fd) {
    uint64_t s = 123;
    char err[256];
    tr_model *m = lora_fd_model(41, &s);
    CHECK(m != NULL);
    if (!m) return;
    static example_buf b;
    make_example(&b, 17);
    tr_zero_grad(m);
    float loss = 0;
    CHECK(tr_forward_backward(m, &b.ex, true, 1.0f, &loss, err, sizeof err) == MG_OK);
    const char *names[] = {"lora.blk.0.attn_q.a", "lora.blk.0.attn_q.b", "lora.blk.0.attn_v.a", "lora.blk.0.attn_v.b",
                           "lora.blk.1.attn_q.a", "lora.blk.1.attn_q.b", "lora.blk.1.attn_v.a", "lora.blk.1.attn_v.b",
                           "blk.0.attn_norm.weight", "mm.proj.weight", "token_embd.weight"};
    int checked = 0;
    const double worst = heads_fd(m, &b.ex, names, sizeof names / sizeof names[0], &s, &checked);
    printf("    %d gradients, worst relative error %.2e\n", checked, worst);
    /* the adapters matter here: without them the loss moves well beyond the differences' noise */
    float l_without = 0;
    tr_model *z = NULL;
    if (tr_lora_merge(&m, err, sizeof err) == MG_OK) { /* merged: the same function */
        float l_merged = 0;
        CHECK(tr_forward_backward(m, &b.ex, false, 1.0f, &l_merged, err, sizeof err) == MG_OK);
        CHECK_MSG(fabsf(l_merged - loss) <= 1e-5f * loss, "merged loss %.7f, with adapters %.7f", l_merged, loss);
    } else CHECK_MSG(0, "tr_lora_merge: %s", err);
    uint64_t s2 = 123;
    tr_config c = tr_config_tiny();
    z = perturbed_model(&c, 41, &s2); /* the same base weights, no adapters */
    if (z) {
        CHECK(tr_forward_backward(z, &b.ex, false, 1.0f, &l_without, err, sizeof err) == MG_OK);
        printf("    loss with adapters %.5f, without %.5f\n", loss, l_without);
        CHECK(fabsf(l_without - loss) > 1e-2f);
    }
    tr_model_free(z);
    tr_model_free(m);
}

/* Last-row logits [V] of the engine on input rows [L, d] of model file path; false on failure. */
static bool engine_last_logits(const char *path, const float *rows, int L, float *out, int V) {
    char err[256];
    mg_model *em = NULL;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 1;
    mp.use_ref = 1;
    bool ok = false;
    if (mg_model_open(&em, path, &mp, err, sizeof err) != MG_OK) {
        printf("    mg_model_open: %s\n", err);
        return false;
    }
    mg_session *s = NULL;
    mg_session_params spp = mg_session_default_params();
    spp.n_ctx = 64;
    if (mg_session_create(&s, em, &spp, err, sizeof err) == MG_OK && mg_session_eval_embd(s, rows, L) == MG_OK &&
        mg_session_logits(s)) {
        memcpy(out, mg_session_logits(s), (size_t)V * sizeof(float));
        ok = true;
    }
    mg_session_free(s);
    mg_model_close(em);
    return ok;
}

/* Export merges the adapters: a checkpoint with adapters (B not zero) exported by tl_export runs in
 * the engine's own inference path with the trainer's last-row logits (the q rows in llama.cpp's
 * permuted layout get B A added as they are); the export has no lora.* tensors, only attn_q / attn_v
 * changed (and equal to tr_lora_merge's), and the engine refuses the checkpoint itself. */
TEST(train_lora_merge_engine) {
    char ck[4096], out[4096], err[256];
    snprintf(ck, sizeof ck, "%s/train_lora.ckpt", test_data_dir());
    snprintf(out, sizeof out, "%s/train_lora.gguf", test_data_dir());
    gguf_file *tokf = open_tiny_tokenizer();
    tr_model *m = make_model_lora(43, 2, 4);
    CHECK(m != NULL);
    if (!m || !tokf) {
        gguf_close(tokf);
        tr_model_free(m);
        return;
    }
    lora_fill_b(m, 0.2f, 9);
    static example_buf b;
    make_example(&b, 78);
    float loss;
    CHECK(tr_forward_backward(m, &b.ex, false, 1.0f, &loss, err, sizeof err) == MG_OK);
    CHECK(tr_save(m, ck, tokf, err, sizeof err) == MG_OK);
    gguf_close(tokf);
    CHECK_MSG(tl_export(ck, out, err, sizeof err) == MG_OK, "tl_export: %s", err);
    int L = 0;
    const int d = m->cfg.n_embd, V = m->cfg.n_vocab;
    float *rows = malloc(sizeof(float) * (size_t)(20 * d)), *want = malloc(sizeof(float) * (size_t)V),
          *got = malloc(sizeof(float) * (size_t)V), *plain = malloc(sizeof(float) * (size_t)V);
    const float *r0 = tr_last_rows(m, &L);
    CHECK(rows && want && got && plain && r0 && L == 20);
    if (!rows || !want || !got || !plain || !r0 || L != 20) goto out;
    memcpy(rows, r0, sizeof(float) * (size_t)(L * d));
    memcpy(want, tr_last_logits(m) + (size_t)(L - 1) * V, sizeof(float) * (size_t)V);
    CHECK(engine_last_logits(out, rows, L, got, V));
    double e = rel_err(got, want, V);
    printf("    engine (merged export) last-row logits vs trainer with adapters: rel err %.3g\n", e);
    CHECK_MSG(e <= 1e-5, "logits rel err %.3g", e);
    /* the adapters matter: the trainer without them is far from those logits */
    tr_model *z = make_model_lora(43, 2, 4); /* the same weights, B = 0 */
    if (z) {
        float lz;
        CHECK(tr_forward_backward(z, &b.ex, false, 1.0f, &lz, err, sizeof err) == MG_OK);
        memcpy(plain, tr_last_logits(z) + (size_t)(L - 1) * V, sizeof(float) * (size_t)V);
        const double ez = rel_err(plain, want, V);
        printf("    trainer without the adapters: rel err %.3g\n", ez);
        CHECK(ez > 1e-2);
    }
    tr_model_free(z);
    /* the file: no adapters, q / v merged (the bits of tr_lora_merge), the rest as in the checkpoint */
    gguf_file *fo = NULL, *fc = NULL;
    CHECK(gguf_open(&fo, out, err, sizeof err) == MG_OK && gguf_open(&fc, ck, err, sizeof err) == MG_OK);
    CHECK(tr_lora_merge(&m, err, sizeof err) == MG_OK && m->cfg.lora_rank == 0);
    if (fo && fc) {
        int n_lora = 0, n_changed = 0, n_same_as_merge = 0;
        for (int64_t i = 0; i < gguf_n_tensors(fo); i++)
            n_lora += strncmp(gguf_tensor_at(fo, i)->name.ptr, "lora.", 5) == 0;
        for (int i = 0; i < m->n_tensors; i++) {
            const tr_tensor *t = &m->tensors[i];
            const gguf_tensor *a = gguf_find_tensor(fo, t->name), *c0 = gguf_find_tensor(fc, t->name);
            CHECK_MSG(a && c0 && a->nbytes == (uint64_t)t->n * 4, "%s in the export", t->name);
            if (!a || !c0 || a->nbytes != (uint64_t)t->n * 4) continue;
            const bool changed = memcmp(a->data, c0->data, a->nbytes) != 0;
            const bool qv = strstr(t->name, "attn_q.weight") || strstr(t->name, "attn_v.weight");
            n_changed += changed;
            CHECK_MSG(changed == qv, "%s: %s", t->name, changed ? "changed" : "unchanged");
            n_same_as_merge += memcmp(a->data, m->params + t->off, a->nbytes) == 0;
        }
        CHECK_EQ_INT(n_lora, 0);
        CHECK_EQ_INT(n_changed, 2 * m->cfg.n_layer);
        CHECK_EQ_INT(n_same_as_merge, m->n_tensors);
    }
    gguf_close(fo);
    gguf_close(fc);
    /* the checkpoint itself is refused by the engine (its attn_q / attn_v alone are not the model) */
    mg_model *em = NULL;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 1;
    CHECK(mg_model_open(&em, ck, &mp, err, sizeof err) == MG_ERR_UNSUPPORTED && em == NULL);
    CHECK(strstr(err, "LoRA") != NULL);
out:
    free(rows);
    free(want);
    free(got);
    free(plain);
    tr_model_free(m);
}

/* A checkpoint with adapters: tr_load gives back their rank, alpha, the train mask and every bit;
 * 4 steps, save, 3 more = load + 3 (proj+lora, bit-identical parameters and moments). */
TEST(train_lora_resume_bit_identical) {
    char path[4096], plain[4096], err[256];
    snprintf(path, sizeof path, "%s/train_lora_resume.gguf", test_data_dir());
    snprintf(plain, sizeof plain, "%s/train_lora_plain.gguf", test_data_dir());
    static example_buf b;
    make_example(&b, 8);
    tr_opt o = tr_opt_default();
    o.total = 20;
    o.warmup = 3;
    tr_config c = tr_config_tiny();
    c.lora_rank = 5;
    c.lora_alpha = 7.5f;
    tr_model *a = NULL;
    CHECK(tr_model_create(&a, &c, 21, 2, err, sizeof err) == MG_OK);
    if (!a) return;
    CHECK(tr_parse_mode("proj+lora", &a->train_mask, err, sizeof err) == MG_OK);
    train_steps(a, &b.ex, &o, 4);
    CHECK(tr_save(a, path, NULL, err, sizeof err) == MG_OK);
    train_steps(a, &b.ex, &o, 3);
    tr_model *r = NULL;
    CHECK(tr_load(&r, path, 2, err, sizeof err) == MG_OK);
    if (r) {
        CHECK_EQ_INT(r->cfg.lora_rank, 5);
        CHECK(r->cfg.lora_alpha == 7.5f);
        CHECK_EQ_INT(r->train_mask, TR_GROUP_PROJ | TR_GROUP_LORA);
        CHECK_EQ_INT(r->step, 4);
        CHECK_EQ_INT(r->n_params, a->n_params);
        CHECK(tr_find_tensor(r, "lora.blk.1.attn_v.b") >= 0);
        train_steps(r, &b.ex, &o, 3);
        CHECK_EQ_INT(r->step, 7);
        CHECK(memcmp(r->params, a->params, (size_t)a->n_params * sizeof(float)) == 0);
        CHECK(memcmp(r->adam_m, a->adam_m, (size_t)a->n_params * sizeof(float)) == 0);
        CHECK(memcmp(r->adam_v, a->adam_v, (size_t)a->n_params * sizeof(float)) == 0);
    }
    /* the adapters learned (B moved off 0); a file without adapters has no train.lora_alpha */
    const int ib = tr_find_tensor(a, "lora.blk.0.attn_q.b");
    int64_t nz = 0;
    for (int64_t j = 0; ib >= 0 && j < a->tensors[ib].n; j++) nz += a->params[a->tensors[ib].off + j] != 0.0f;
    CHECK(nz > 0);
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, path, err, sizeof err) == MG_OK);
    if (f) CHECK(gguf_find_kv(f, "train.lora_alpha") != NULL);
    gguf_close(f);
    tr_model *p = make_model(21, 1);
    CHECK(p && tr_save(p, plain, NULL, err, sizeof err) == MG_OK);
    f = NULL;
    CHECK(gguf_open(&f, plain, err, sizeof err) == MG_OK);
    if (f) CHECK(gguf_find_kv(f, "train.lora_alpha") == NULL);
    gguf_close(f);
    tr_model_free(p);
    tr_model_free(r);
    tr_model_free(a);
}

/* A model created with adapters has the base weights of the same seed without them, A uniform in
 * [-1/sqrt(d), 1/sqrt(d)) and B = 0 (the same output); tr_lora_attach gives a model without
 * adapters the same ones. Bad ranks, alphas and modes are refused with a clear message. */
TEST(train_lora_init_and_args) {
    char err[256];
    tr_config c = tr_config_tiny();
    tr_model *base = NULL, *lm = NULL;
    CHECK(tr_model_create(&base, &c, 9, 1, err, sizeof err) == MG_OK);
    c.lora_rank = 8;
    c.lora_alpha = 16.0f;
    CHECK(tr_model_create(&lm, &c, 9, 1, err, sizeof err) == MG_OK);
    if (!base || !lm) {
        tr_model_free(base);
        tr_model_free(lm);
        return;
    }
    CHECK_EQ_INT(lm->n_tensors, base->n_tensors + 4 * c.n_layer);
    CHECK(memcmp(base->params, lm->params, (size_t)base->n_params * sizeof(float)) == 0); /* adapters come last */
    const double bound = 1.0 / sqrt((double)c.n_embd);
    double amax = 0;
    int64_t bnz = 0;
    for (int i = base->n_tensors; i < lm->n_tensors; i++) {
        const tr_tensor *t = &lm->tensors[i];
        CHECK(t->group == TR_GROUP_LORA && t->decay && t->n_dims == 2 && strncmp(t->name, "lora.blk.", 9) == 0);
        const bool is_a = t->name[strlen(t->name) - 1] == 'a';
        CHECK_EQ_INT(t->ne[is_a ? 1 : 0], 8);
        for (int64_t j = 0; j < t->n; j++) {
            const float v = lm->params[t->off + j];
            if (is_a) amax = fmax(amax, fabs(v));
            else bnz += v != 0.0f;
        }
    }
    CHECK(amax > 0.9 * bound && amax < bound);
    CHECK_EQ_INT(bnz, 0);
    static example_buf b;
    make_example(&b, 3);
    float l0 = 0, l1 = 0;
    CHECK(tr_forward_backward(base, &b.ex, false, 1.0f, &l0, err, sizeof err) == MG_OK);
    CHECK(tr_forward_backward(lm, &b.ex, false, 1.0f, &l1, err, sizeof err) == MG_OK);
    CHECK(l0 == l1);
    CHECK(tr_lora_attach(&base, 8, 16.0f, 9, err, sizeof err) == MG_OK);
    CHECK(base->n_params == lm->n_params &&
          memcmp(base->params, lm->params, (size_t)lm->n_params * sizeof(float)) == 0);
    /* a second set is refused, and the model is left as it was */
    tr_model *keep = base;
    CHECK(tr_lora_attach(&base, 4, 8.0f, 9, err, sizeof err) == MG_ERR_INVALID_ARG && base == keep);
    CHECK(strstr(err, "already") != NULL);
    tr_model_free(base);
    tr_model_free(lm);
    /* ranks: 0 is "none" for a config, a negative rank or one past the smaller side is refused */
    const int kvd = c.n_head_kv * (c.n_embd / c.n_head); /* 32 < n_embd 64 */
    const int bad_rank[] = {-1, kvd + 1, 100000};
    for (size_t i = 0; i < sizeof bad_rank / sizeof bad_rank[0]; i++) {
        tr_model *x = NULL;
        c.lora_rank = bad_rank[i];
        CHECK(tr_model_create(&x, &c, 1, 1, err, sizeof err) == MG_ERR_INVALID_ARG && x == NULL);
        CHECK_MSG(strstr(err, "LoRA rank") != NULL, "rank %d: %s", bad_rank[i], err);
    }
    c.lora_rank = kvd;
    tr_model *x = NULL;
    CHECK(tr_model_create(&x, &c, 1, 1, err, sizeof err) == MG_OK);
    tr_model_free(x);
    x = NULL;
    c.lora_alpha = 0.0f;
    CHECK(tr_model_create(&x, &c, 1, 1, err, sizeof err) == MG_ERR_INVALID_ARG && x == NULL);
    CHECK(strstr(err, "alpha") != NULL);
    tr_model *y = make_model(2, 1);
    if (y) {
        CHECK(tr_lora_attach(&y, 0, 16.0f, 1, err, sizeof err) == MG_ERR_INVALID_ARG);
        CHECK(tr_lora_attach(&y, kvd + 1, 16.0f, 1, err, sizeof err) == MG_ERR_INVALID_ARG);
        CHECK(y->cfg.lora_rank == 0);
        /* a LoRA mode on a model without adapters cannot step */
        float l;
        y->train_mask = TR_GROUP_LORA;
        CHECK(tr_forward_backward(y, &b.ex, true, 1.0f, &l, err, sizeof err) == MG_ERR_INVALID_ARG);
        CHECK(strstr(err, "adapters") != NULL);
        CHECK(tr_forward_backward(y, &b.ex, false, 1.0f, &l, err, sizeof err) == MG_OK); /* evaluation is fine */
    }
    tr_model_free(y);
    /* modes */
    int mask = 0;
    CHECK(tr_parse_mode("lora", &mask, err, sizeof err) == MG_OK && mask == TR_GROUP_LORA);
    CHECK(tr_parse_mode("proj+lora", &mask, err, sizeof err) == MG_OK && mask == (TR_GROUP_PROJ | TR_GROUP_LORA));
    CHECK(tr_parse_mode("llm+lora", &mask, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "unknown training mode 'llm+lora'") && strstr(err, "proj+lora"));
}
