/*
 * synth.c - writes synthetic LLaMA GGUF files (see synth.h). Each row of each matrix is drawn
 * from its own generator state (seeded from the file seed, tensor index and row), so the bytes
 * do not depend on how many threads fill the rows. Only one tensor is held in memory at a time.
 */
#include "synth.h"

#include "gguf.h"
#include "quant.h"
#include "threadpool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const synth_preset presets[] = {
    {"minigpt4-7b", "MiniGPT-4 (Vicuna v0 7B = LLaMA-7B, vocab 32001)", 4096, 32, 32, 32, 11008, 32001, 2048,
     1e-6f, false},
    {"minigpt4-13b", "MiniGPT-4 (Vicuna v0 13B = LLaMA-13B, vocab 32001)", 5120, 40, 40, 40, 13824, 32001, 2048,
     1e-6f, false},
    {"minigptv2-7b", "MiniGPT-v2 (Llama-2-7B-chat, vocab 32000)", 4096, 32, 32, 32, 11008, 32000, 4096, 1e-5f,
     false},
    {"tiny", "tests: 2 layers, d=64", 64, 2, 4, 4, 128, 320, 2048, 1e-5f, true},
};

/* llama.cpp's general.file_type values (enum llama_ftype) for the types we write. */
static int file_type_of(int type) {
    switch (type) {
    case MG_TYPE_F32: return 0;
    case MG_TYPE_F16: return 1;
    case MG_TYPE_Q4_0: return 2;
    case MG_TYPE_Q8_0: return 7;
    case MG_TYPE_BF16: return 32;
    default: return -1;
    }
}

const synth_preset *synth_find_preset(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < MG_ARRAY_LEN(presets); i++)
        if (strcmp(presets[i].name, name) == 0) return &presets[i];
    return NULL;
}

const synth_preset *synth_preset_at(int i) {
    return i >= 0 && (size_t)i < MG_ARRAY_LEN(presets) ? &presets[i] : NULL;
}

/* ==== Tensor list ==== */

typedef struct {
    char name[48];
    int64_t ne0, ne1; /* ne1 = 1 for vectors */
    bool is_norm;     /* f32 vector of ones */
} synth_tensor;

/* Fills t (which has room for 3 + 9 * n_layer entries) in file order; returns the count. */
static int list_tensors(const synth_preset *p, synth_tensor *t) {
    int n = 0;
    const int64_t d = p->n_embd, hd = p->n_embd / p->n_head, kv = (int64_t)p->n_head_kv * hd;
#define ADD(nm, a, b, norm)                                                                        \
    do {                                                                                           \
        snprintf(t[n].name, sizeof t[n].name, "%s", nm);                                           \
        t[n].ne0 = (a);                                                                            \
        t[n].ne1 = (b);                                                                            \
        t[n].is_norm = (norm);                                                                     \
        n++;                                                                                       \
    } while (0)
    ADD("token_embd.weight", d, p->n_vocab, false);
    char nm[48];
    for (int il = 0; il < p->n_layer; il++) {
#define LNAME(s) (snprintf(nm, sizeof nm, "blk.%d.%s.weight", il, s), nm)
        ADD(LNAME("attn_norm"), d, 1, true);
        ADD(LNAME("attn_q"), d, d, false);
        ADD(LNAME("attn_k"), d, kv, false);
        ADD(LNAME("attn_v"), d, kv, false);
        ADD(LNAME("attn_output"), d, d, false);
        ADD(LNAME("ffn_norm"), d, 1, true);
        ADD(LNAME("ffn_gate"), d, p->n_ff, false);
        ADD(LNAME("ffn_up"), d, p->n_ff, false);
        ADD(LNAME("ffn_down"), p->n_ff, d, false);
#undef LNAME
    }
    ADD("output_norm.weight", d, 1, true);
    ADD("output.weight", d, p->n_vocab, false);
#undef ADD
    return n;
}

static int max_tensors(const synth_preset *p) { return 3 + 9 * p->n_layer; }

uint64_t synth_n_params(const synth_preset *p) {
    synth_tensor *t = p ? malloc((size_t)max_tensors(p) * sizeof *t) : NULL;
    if (!t) return 0;
    uint64_t n = 0;
    int nt = list_tensors(p, t);
    for (int i = 0; i < nt; i++) n += (uint64_t)t[i].ne0 * (uint64_t)t[i].ne1;
    free(t);
    return n;
}

uint64_t synth_data_bytes(const synth_preset *p, int type) {
    synth_tensor *t = p ? malloc((size_t)max_tensors(p) * sizeof *t) : NULL;
    if (!t) return 0;
    uint64_t n = 0;
    int nt = list_tensors(p, t);
    for (int i = 0; i < nt; i++) {
        size_t row = mg_row_size(t[i].is_norm ? MG_TYPE_F32 : type, t[i].ne0);
        if (row == 0) {
            n = 0;
            break;
        }
        n += (uint64_t)row * (uint64_t)t[i].ne1;
    }
    free(t);
    return n;
}

/* ==== Random rows ==== */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    uint8_t *data;     /* [ne1, row_bytes] */
    size_t row_bytes;
    int64_t ne0;
    int type;
    uint64_t seed;     /* per tensor */
    float **scratch;   /* [n_threads][ne0] */
} fill_ctx;

/* Uniform in [-a, a) with a = 0.02 * sqrt(3): standard deviation 0.02. */
static void fill_rows(void *vctx, int64_t r0, int64_t r1, int ith) {
    fill_ctx *c = vctx;
    float *buf = c->scratch[ith];
    const float a = 0.034641016f, k = 2.0f * a / 4294967296.0f;
    for (int64_t r = r0; r < r1; r++) {
        uint64_t s = c->seed ^ ((uint64_t)r * 0xD1B54A32D192ED03ull);
        for (int64_t i = 0; i + 1 < c->ne0; i += 2) {
            uint64_t z = splitmix64(&s);
            buf[i] = (float)(uint32_t)z * k - a;
            buf[i + 1] = (float)(uint32_t)(z >> 32) * k - a;
        }
        if (c->ne0 & 1) buf[c->ne0 - 1] = (float)(uint32_t)splitmix64(&s) * k - a;
        void *dst = c->data + (size_t)r * c->row_bytes;
        if (c->type == MG_TYPE_F32) memcpy(dst, buf, (size_t)c->ne0 * sizeof(float));
        else mg_quantize_row(c->type, buf, dst, c->ne0);
    }
}

/* ==== Vocabulary ==== */

/* Sets the tokenizer.ggml.* keys: n pieces (n >= 260), SentencePiece "llama" model. */
static mg_status write_vocab(gguf_writer *w, int n) {
    char **pieces = calloc((size_t)n, sizeof *pieces);
    float *scores = malloc((size_t)n * sizeof *scores);
    int32_t *types = malloc((size_t)n * sizeof *types);
    char *text = malloc((size_t)n * 16);
    mg_status st = MG_ERR_NOMEM;
    if (!pieces || !scores || !types || !text) goto done;
    for (int i = 0; i < n; i++) {
        char *s = text + (size_t)i * 16;
        pieces[i] = s;
        scores[i] = 0.0f;
        if (i == 0) {
            strcpy(s, "<unk>");
            types[i] = 2; /* unknown */
        } else if (i == 1 || i == 2) {
            strcpy(s, i == 1 ? "<s>" : "</s>");
            types[i] = 3; /* control */
        } else if (i < 259) {
            snprintf(s, 16, "<0x%02X>", i - 3);
            types[i] = 6; /* byte */
        } else if (i >= 32000) {
            snprintf(s, 16, "<pad%d>", i - 32000); /* the extra rows of Vicuna v0 */
            types[i] = 4;                          /* user-defined */
        } else {
            /* bijective base-26 word of k, every other one with the SentencePiece space mark */
            int k = (i - 259) / 2 + 1, len = 0;
            char word[12];
            while (k > 0 && len < 11) {
                k--;
                word[len++] = (char)('a' + k % 26);
                k /= 26;
            }
            int o = 0;
            if ((i - 259) % 2 == 0) {
                memcpy(s, "\xe2\x96\x81", 3);
                o = 3;
            }
            for (int j = len - 1; j >= 0; j--) s[o++] = word[j];
            s[o] = 0;
            types[i] = 1; /* normal */
            scores[i] = -(float)(i - 259);
        }
    }
    if ((st = gguf_writer_set_str(w, "tokenizer.ggml.model", "llama")) ||
        (st = gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)pieces, (uint64_t)n)) ||
        (st = gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, (uint64_t)n)) ||
        (st = gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, (uint64_t)n)) ||
        (st = gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
        (st = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2)) ||
        (st = gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0)) ||
        (st = gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true)) ||
        (st = gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", false)))
        goto done;
done:
    free(pieces);
    free(scores);
    free(types);
    free(text);
    return st;
}

/* ==== Writer ==== */

static mg_status set_keys(gguf_writer *w, const synth_preset *p, int type) {
    char name[96];
    snprintf(name, sizeof name, "minigpt synthetic %s %s", p->name, mg_type_name(type));
    mg_status st;
    if ((st = gguf_writer_set_str(w, "general.architecture", "llama")) ||
        (st = gguf_writer_set_str(w, "general.name", name)) ||
        (st = gguf_writer_set_u32(w, "general.file_type", (uint32_t)file_type_of(type))) ||
        (st = gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)p->n_vocab)) ||
        (st = gguf_writer_set_u32(w, "llama.context_length", (uint32_t)p->n_ctx_train)) ||
        (st = gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)p->n_embd)) ||
        (st = gguf_writer_set_u32(w, "llama.block_count", (uint32_t)p->n_layer)) ||
        (st = gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)p->n_ff)) ||
        (st = gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)(p->n_embd / p->n_head))) ||
        (st = gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)p->n_head)) ||
        (st = gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)p->n_head_kv)) ||
        (st = gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", p->rms_eps)) ||
        (st = gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f)))
        return st;
    return write_vocab(w, p->n_vocab);
}

mg_status synth_write_gguf(const synth_preset *p, int type, uint64_t seed, const char *path, char *err,
                           size_t err_len) {
    if (!p || !path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "synth: NULL argument");
    if (file_type_of(type) < 0)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "synth: type %s is not one of f32, f16, bf16, q8_0, q4_0",
                      mg_type_name(type) ? mg_type_name(type) : "?");
    if (p->n_vocab < 260)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "synth: preset %s has fewer than 260 rows", p->name);
    if (synth_data_bytes(p, type) == 0)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "synth: the shapes of %s do not fit %s blocks", p->name,
                      mg_type_name(type));

    int nt_max = max_tensors(p), nt = 0;
    synth_tensor *t = malloc((size_t)nt_max * sizeof *t);
    gguf_writer *w = gguf_writer_create();
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n_threads = (int)(ncpu < 1 ? 1 : ncpu > 16 ? 16 : ncpu);
    float **scratch = calloc((size_t)n_threads, sizeof *scratch);
    mg_pool *pool = NULL;
    uint8_t *buf = NULL;
    FILE *fp = NULL;
    mg_status st = MG_OK;
    if (!t || !w || !scratch) {
        st = mg_err(err, err_len, MG_ERR_NOMEM, "synth: out of memory");
        goto done;
    }
    nt = list_tensors(p, t);
    size_t max_bytes = 0, max_row = 0;
    for (int i = 0; i < nt; i++) {
        int ty = t[i].is_norm ? MG_TYPE_F32 : type;
        int64_t ne[2] = {t[i].ne0, t[i].ne1};
        max_bytes = MG_MAX(max_bytes, mg_row_size(ty, t[i].ne0) * (size_t)t[i].ne1);
        max_row = MG_MAX(max_row, (size_t)t[i].ne0);
        if ((st = gguf_writer_add_tensor(w, t[i].name, ty, t[i].is_norm ? 1 : 2, ne, NULL)) != MG_OK) {
            mg_err(err, err_len, st, "synth: cannot add tensor %s", t[i].name);
            goto done;
        }
    }
    if ((st = set_keys(w, p, type)) != MG_OK) {
        mg_err(err, err_len, st, "synth: cannot set the metadata keys");
        goto done;
    }
    buf = mg_malloc_aligned(max_bytes);
    for (int i = 0; buf && i < n_threads; i++)
        if (!(scratch[i] = mg_malloc_aligned(max_row * sizeof(float)))) break;
    if (!buf || !scratch[n_threads - 1]) {
        st = mg_err(err, err_len, MG_ERR_NOMEM, "synth: out of memory for a %zu-byte tensor", max_bytes);
        goto done;
    }
    if ((st = mg_pool_create(&pool, n_threads)) != MG_OK) {
        mg_err(err, err_len, st, "synth: cannot start %d threads", n_threads);
        goto done;
    }
    if (!(fp = fopen(path, "wb"))) {
        st = mg_err(err, err_len, MG_ERR_IO, "cannot create %s: %s", path, strerror(errno));
        goto done;
    }
    setvbuf(fp, NULL, _IOFBF, 1 << 22);
    if ((st = gguf_writer_write_header(w, fp, err, err_len)) != MG_OK) goto done;
    for (int i = 0; i < nt; i++) {
        if (t[i].is_norm) {
            float *v = (float *)buf;
            for (int64_t j = 0; j < t[i].ne0; j++) v[j] = 1.0f;
        } else {
            uint64_t s = seed ^ ((uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull);
            fill_ctx c = {buf, mg_row_size(type, t[i].ne0), t[i].ne0, type, splitmix64(&s), scratch};
            mg_pool_run(pool, t[i].ne1, 16, fill_rows, &c);
        }
        if ((st = gguf_writer_write_tensor_data(w, fp, i, buf, err, err_len)) != MG_OK) goto done;
    }
done:
    if (fp && fclose(fp) != 0 && st == MG_OK)
        st = mg_err(err, err_len, MG_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    if (fp && st != MG_OK) remove(path);
    mg_pool_free(pool);
    for (int i = 0; scratch && i < n_threads; i++) mg_free_aligned(scratch[i]);
    free(scratch);
    mg_free_aligned(buf);
    gguf_writer_free(w);
    free(t);
    return st;
}
