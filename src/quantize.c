/*
 * quantize.c - `minigpt quantize`: re-types every tensor of a GGUF file (F32, F16, BF16, Q8_0,
 * Q4_0), copying all metadata, one tensor at a time. Also the per-tensor type rules shared with
 * convert.c (which tensors are never quantized, what output.weight gets); see
 * docs/QUANTIZATION.md.
 */
#include "convert.h"
#include "quant.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define QUANT_CHUNK ((int64_t)1 << 20) /* elements converted per step (fp32 scratch: 4 MiB) */

/* llama.cpp's llama_ftype value for an all-one-type file. */
int conv_file_type(int type) {
    switch (type) {
    case MG_TYPE_F32: return 0;
    case MG_TYPE_F16: return 1;
    case MG_TYPE_Q4_0: return 2;
    case MG_TYPE_Q8_0: return 7;
    case MG_TYPE_BF16: return 32;
    default: return -1;
    }
}

/* The target types the writers produce. */
bool conv_target_ok(int type) { return conv_file_type(type) >= 0; }

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && memcmp(s + a - b, suf, b) == 0;
}

static bool is_float_type(int t) { return t == MG_TYPE_F32 || t == MG_TYPE_F16 || t == MG_TYPE_BF16; }

/* Tensors that are never quantized (norms, biases, embeddings of positions / classes / queries). */
bool conv_is_protected(const char *name, int n_dims) {
    if (n_dims <= 1) return true;
    if (ends_with(name, "_norm.weight") || ends_with(name, ".bias")) return true;
    if (strstr(name, "position_embd") || strstr(name, "pos_embd") || strstr(name, "class_embd") ||
        strstr(name, "query_embd"))
        return true;
    /* LayerNorm weights of the vision side: ln1, ln2, post_ln, embd_ln, attn_ln, ... */
    const char *last = strrchr(name, '.');
    if (last && strcmp(last, ".weight") == 0) {
        const char *p = last;
        while (p > name && p[-1] != '.') p--;
        size_t n = (size_t)(last - p);
        if ((n >= 2 && p[0] == 'l' && p[1] == 'n') || (n >= 3 && memcmp(last - 3, "_ln", 3) == 0)) return true;
    }
    return false;
}

/* Number of dimensions ignoring trailing 1s (ggml_n_dims). */
static int eff_dims(int n_dims, const int64_t *ne) {
    int d = n_dims;
    while (d > 1 && ne[d - 1] == 1) d--;
    return d;
}

/* The type of one tensor for a target (rules in docs/QUANTIZATION.md). */
int conv_pick_type(const char *name, int n_dims, const int64_t *ne, int src_type, int target,
                   bool has_output) {
    if (conv_is_protected(name, eff_dims(n_dims, ne))) return is_float_type(src_type) ? src_type : MG_TYPE_F32;
    int t = target;
    if (t == MG_TYPE_Q4_0 &&
        (strcmp(name, "output.weight") == 0 || (!has_output && strcmp(name, "token_embd.weight") == 0)))
        t = MG_TYPE_Q8_0;
    const mg_type_traits *tr = mg_get_type_traits(t);
    if (tr && tr->blck_size > 1 && ne[0] % tr->blck_size) t = MG_TYPE_F16;
    return t;
}

typedef struct {
    const gguf_tensor *src;
    int type;
    char name[256];
} qplan;

static int match_any(const char *name, const char *const *pats, int n) {
    for (int i = 0; i < n; i++)
        if (pats[i] && fnmatch(pats[i], name, 0) == 0) return i;
    return -1;
}

static void logf_(const conv_quantize_params *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(const conv_quantize_params *p, const char *fmt, ...) {
    if (!p->log) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    p->log(p->user, line);
}

/* Writes tensor data converted from src_type to dst_type, in chunks of fp32. */
static void convert_data(const void *src, int src_type, void *dst, int dst_type, int64_t nel, float *scratch) {
    const mg_type_traits *ts = mg_get_type_traits(src_type), *td = mg_get_type_traits(dst_type);
    for (int64_t i = 0; i < nel; i += QUANT_CHUNK) {
        int64_t n = MG_MIN(QUANT_CHUNK, nel - i);
        /* chunks are a multiple of 32 elements, hence of every block size we handle */
        mg_dequantize_row(src_type, (const uint8_t *)src + (size_t)(i / ts->blck_size) * ts->type_size, scratch, n);
        mg_quantize_row(dst_type, scratch, (uint8_t *)dst + (size_t)(i / td->blck_size) * td->type_size, n);
    }
}

/* Whole-file re-typing, streaming tensor by tensor. */
mg_status conv_quantize_file(const char *in_path, const char *out_path, const conv_quantize_params *p,
                             char *err, size_t err_len) {
    if (!in_path || !out_path || !p) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "quantize: NULL argument");
    if (!conv_target_ok(p->type))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "quantize: unsupported target type %s",
                      mg_type_name(p->type) ? mg_type_name(p->type) : "?");
    for (int i = 0; i < p->n_force; i++)
        if (!conv_target_ok(p->force_type[i]))
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "quantize: unsupported forced type for '%s'",
                          p->force_pat[i]);

    gguf_file *in = NULL;
    gguf_writer *w = NULL;
    qplan *plan = NULL;
    FILE *fp = NULL;
    void *obuf = NULL;
    float *scratch = NULL;
    bool created = false;
    struct stat sa, sb;
    if (stat(in_path, &sa) == 0 && stat(out_path, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "quantize: the output would overwrite the input %s", in_path);
    mg_status st = gguf_open(&in, in_path, err, err_len);
    if (st != MG_OK) return st;

    int64_t nt = gguf_n_tensors(in);
    plan = calloc((size_t)(nt > 0 ? nt : 1), sizeof *plan);
    w = gguf_writer_create();
    if (!plan || !w) {
        st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = gguf_writer_copy_kv(w, in)) != MG_OK ||
        (st = gguf_writer_set_u32(w, "general.quantization_version", 2)) != MG_OK ||
        (st = gguf_writer_set_u32(w, "general.file_type", (uint32_t)conv_file_type(p->type))) != MG_OK) {
        mg_err(err, err_len, st, "cannot copy the metadata of %s", in_path);
        goto done;
    }
    const gguf_kv *al = gguf_find_kv(in, "general.alignment");
    if (al && (st = gguf_writer_set_u32(w, "general.alignment", (uint32_t)gguf_alignment(in))) != MG_OK) goto done;

    bool has_output = gguf_find_tensor(in, "output.weight") != NULL;
    uint64_t total = 0, max_out = 0;
    for (int64_t i = 0; i < nt; i++) {
        const gguf_tensor *t = gguf_tensor_at(in, i);
        qplan *q = &plan[i];
        q->src = t;
        if (t->name.len >= sizeof q->name) {
            st = mg_err(err, err_len, MG_ERR_UNSUPPORTED, "tensor name of %llu bytes is too long",
                        (unsigned long long)t->name.len);
            goto done;
        }
        memcpy(q->name, t->name.ptr, t->name.len);
        q->name[t->name.len] = 0;
        int k;
        if (match_any(q->name, p->keep, p->n_keep) >= 0) {
            q->type = t->type;
        } else if ((k = match_any(q->name, p->force_pat, p->n_force)) >= 0) {
            q->type = p->force_type[k];
            const mg_type_traits *tr = mg_get_type_traits(q->type);
            if (t->ne[0] % tr->blck_size) {
                st = mg_err(err, err_len, MG_ERR_INVALID_ARG,
                            "--force %s=%s: tensor %s has rows of %lld, not a multiple of %lld", p->force_pat[k],
                            tr->name, q->name, (long long)t->ne[0], (long long)tr->blck_size);
                goto done;
            }
        } else {
            q->type = conv_pick_type(q->name, t->n_dims, t->ne, t->type, p->type, has_output);
        }
        const mg_type_traits *ts = mg_get_type_traits(t->type);
        if (q->type != t->type) {
            if (!ts || !ts->supported) {
                st = mg_err(err, err_len, MG_ERR_UNSUPPORTED, "tensor %s has type %s, which cannot be converted",
                            q->name, ts ? ts->name : "unknown");
                goto done;
            }
            if (ts->is_quantized && !p->allow_requantize) {
                st = mg_err(err, err_len, MG_ERR_INVALID_ARG,
                            "tensor %s is already quantized (%s): requantizing loses precision, "
                            "pass --allow-requantize to do it anyway", q->name, ts->name);
                goto done;
            }
        }
        if ((st = gguf_writer_add_tensor(w, q->name, q->type, t->n_dims, t->ne, NULL)) != MG_OK) {
            mg_err(err, err_len, st, "cannot add tensor %s to the output", q->name);
            goto done;
        }
        int64_t nel = 1;
        for (int d = 0; d < t->n_dims; d++) nel *= t->ne[d];
        uint64_t ob = (uint64_t)(nel / mg_get_type_traits(q->type)->blck_size) * mg_get_type_traits(q->type)->type_size;
        total += ob;
        if (q->type != t->type && ob > max_out) max_out = ob;
    }

    if (max_out) {
        obuf = malloc((size_t)max_out);
        scratch = malloc((size_t)QUANT_CHUNK * sizeof(float));
        if (!obuf || !scratch) {
            st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory for a %llu-byte tensor",
                        (unsigned long long)max_out);
            goto done;
        }
    }
    fp = fopen(out_path, "wb");
    if (!fp) {
        st = mg_err(err, err_len, MG_ERR_IO, "cannot create %s: %s", out_path, strerror(errno));
        goto done;
    }
    created = true;
    if ((st = gguf_writer_write_header(w, fp, err, err_len)) != MG_OK) goto done;
    uint64_t done_bytes = 0;
    for (int64_t i = 0; i < nt; i++) {
        const qplan *q = &plan[i];
        const gguf_tensor *t = q->src;
        int64_t nel = 1;
        for (int d = 0; d < t->n_dims; d++) nel *= t->ne[d];
        const void *data = t->data;
        if (q->type != t->type) {
            convert_data(t->data, t->type, obuf, q->type, nel, scratch);
            data = obuf;
        }
        logf_(p, "[%4lld/%4lld] %-40s %-5s -> %s", (long long)i + 1, (long long)nt, q->name,
              mg_type_name(t->type), mg_type_name(q->type));
        if ((st = gguf_writer_write_tensor_data(w, fp, i, data, err, err_len)) != MG_OK) goto done;
        const mg_type_traits *tr = mg_get_type_traits(q->type);
        done_bytes += (uint64_t)(nel / tr->blck_size) * tr->type_size;
        if (p->progress && p->progress(p->user, done_bytes, total, q->name)) {
            st = mg_err(err, err_len, MG_ERR_CANCELLED, "quantize cancelled");
            goto done;
        }
    }
    if (fflush(fp) != 0) st = mg_err(err, err_len, MG_ERR_IO, "cannot write %s: %s", out_path, strerror(errno));

done:
    st = gguf_file_close_written(fp, out_path, st, err, err_len);
    if (st != MG_OK && created) remove(out_path);
    free(obuf);
    free(scratch);
    free(plan);
    gguf_writer_free(w);
    gguf_close(in);
    return st;
}
