/*
 * synth.c - writes synthetic MiniGPT / LLaMA GGUF files (see synth.h). Each row of each random
 * tensor is drawn from its own generator state (seeded from the file seed, the tensor's name and
 * the row), so the bytes do not depend on how many threads fill the rows, and a tensor's values
 * are the same in every file that holds it. Only one tensor is held in memory at a time.
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

/* EVA ViT-g as BLIP-2 uses it (39 blocks) and the BLIP-2 Q-Former (spec §1). */
#define EVA_VIT_G(S) .v_image = (S), .v_patch = 14, .v_pos_grid = 16, .v_embd = 1408, .v_block = 39, \
                     .v_head = 16, .v_ff = 6144
#define BLIP2_QFORMER .qf_query = 32, .qf_embd = 768, .qf_block = 12, .qf_head = 12, .qf_ff = 3072

static const synth_preset presets[] = {
    {.name = "minigpt4-7b", .about = "MiniGPT-4 (EVA ViT-g 224 + Q-Former; Vicuna v0 7B = LLaMA-7B, vocab 32001)",
     .n_embd = 4096, .n_layer = 32, .n_head = 32, .n_head_kv = 32, .n_ff = 11008, .n_vocab = 32001,
     .n_ctx_train = 2048, .rms_eps = 1e-6f, EVA_VIT_G(224), .arch = "minigpt4", BLIP2_QFORMER},
    {.name = "minigpt4-13b", .about = "MiniGPT-4 (EVA ViT-g 224 + Q-Former; Vicuna v0 13B = LLaMA-13B, vocab 32001)",
     .n_embd = 5120, .n_layer = 40, .n_head = 40, .n_head_kv = 40, .n_ff = 13824, .n_vocab = 32001,
     .n_ctx_train = 2048, .rms_eps = 1e-6f, EVA_VIT_G(224), .arch = "minigpt4", BLIP2_QFORMER},
    {.name = "minigptv2-7b", .about = "MiniGPT-v2 (EVA ViT-g 448 + merge4; Llama-2-7B-chat, vocab 32000)",
     .n_embd = 4096, .n_layer = 32, .n_head = 32, .n_head_kv = 32, .n_ff = 11008, .n_vocab = 32000,
     .n_ctx_train = 4096, .rms_eps = 1e-5f, EVA_VIT_G(448), .arch = "minigptv2"},
    {.name = "tiny", .about = "tests: 2 layers, d=64, no vision", .n_embd = 64, .n_layer = 2, .n_head = 4,
     .n_head_kv = 4, .n_ff = 128, .n_vocab = 320, .n_ctx_train = 2048, .rms_eps = 1e-5f, .hidden = true},
    /* tests: a 2-block ViT at 28 px (2x2 patches) + a 2-layer Q-Former, as MiniGPT-4 */
    {.name = "tiny-vl", .about = "tests: tiny + ViT 28 px + Q-Former", .n_embd = 64, .n_layer = 2, .n_head = 4,
     .n_head_kv = 4, .n_ff = 128, .n_vocab = 320, .n_ctx_train = 2048, .rms_eps = 1e-5f, .hidden = true,
     .arch = "minigpt4", .v_image = 28, .v_patch = 14, .v_pos_grid = 2, .v_embd = 64, .v_block = 2, .v_head = 4,
     .v_ff = 128, .qf_query = 4, .qf_embd = 32, .qf_block = 2, .qf_head = 2, .qf_ff = 64},
    /* tests: MiniGPT-v2 layout at 56 px (4x4 patches) from a stored 2x2 pos-embed grid */
    {.name = "tiny-v2", .about = "tests: tiny + ViT 56 px + merge4", .n_embd = 64, .n_layer = 2, .n_head = 4,
     .n_head_kv = 4, .n_ff = 128, .n_vocab = 320, .n_ctx_train = 2048, .rms_eps = 1e-5f, .hidden = true,
     .arch = "minigptv2", .v_image = 56, .v_patch = 14, .v_pos_grid = 2, .v_embd = 64, .v_block = 2, .v_head = 4,
     .v_ff = 128},
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

synth_opts synth_default_opts(int type, uint64_t seed) {
    synth_opts o = {SYNTH_FULL, type, type, 0, seed};
    return o;
}

bool synth_has_vision(const synth_preset *p) { return p && p->v_block > 0; }

/* ==== Tensor list ==== */

/* How a tensor is stored and filled. */
typedef enum {
    T_MAT,   /* LLM matrix: o->type, random */
    T_VMAT,  /* vision matrix: o->vision_type, random */
    T_PATCH, /* v.patch_embd: o->vision_type, or f16 when that is a block type */
    T_RAND,  /* f32, random (embeddings: class, position, queries) */
    T_ONES,  /* f32 vector of ones (norm weights) */
    T_ZEROS  /* f32 vector of zeros (biases) */
} synth_kind;

typedef struct {
    char name[48];
    int64_t ne0, ne1; /* ne1 = 1 for vectors */
    synth_kind kind;
} synth_tensor;

/* The language model a file holds: the preset's, or the 1-layer stand-in of SYNTH_VISION_STUB. */
typedef struct {
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab;
} llm_shape;

static llm_shape llm_of(const synth_preset *p, const synth_opts *o) {
    llm_shape l = {p->n_embd, p->n_layer, p->n_head, p->n_head_kv, p->n_ff, p->n_vocab};
    if (o->part == SYNTH_VISION_STUB) {
        l.n_layer = 1;
        l.n_ff = 256;
        l.n_vocab = 260; /* <unk>, <s>, </s>, 256 bytes, one piece */
    }
    return l;
}

static bool with_vision(const synth_preset *p, const synth_opts *o) {
    return synth_has_vision(p) && o->part != SYNTH_LLM_ONLY;
}

static int max_tensors(const synth_preset *p) {
    return 3 + 9 * p->n_layer + 6 + 13 * p->v_block + 3 + 26 * p->qf_block + 2;
}

static int type_of(const synth_tensor *t, const synth_opts *o) {
    switch (t->kind) {
    case T_MAT: return o->type;
    case T_VMAT: return o->vision_type;
    case T_PATCH:
        return o->vision_type == MG_TYPE_F32 || o->vision_type == MG_TYPE_BF16 ? o->vision_type : MG_TYPE_F16;
    default: return MG_TYPE_F32;
    }
}

/* Fills t (room for max_tensors(p) entries) in file order; returns the count. */
static int list_tensors(const synth_preset *p, const synth_opts *o, synth_tensor *t) {
    int n = 0;
    const llm_shape l = llm_of(p, o);
    const int64_t d = l.n_embd, hd = l.n_embd / l.n_head, kv = (int64_t)l.n_head_kv * hd;
    char nm[48];
#define ADD(nm_, a, b, k)                                                                          \
    do {                                                                                           \
        snprintf(t[n].name, sizeof t[n].name, "%s", nm_);                                          \
        t[n].ne0 = (a);                                                                            \
        t[n].ne1 = (b);                                                                            \
        t[n].kind = (k);                                                                           \
        n++;                                                                                       \
    } while (0)
#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
    if (with_vision(p, o)) {
        /* EVA ViT-g: patch embedding as a flattened [E, 3*P*P] matrix, pos-embed of the stored grid */
        const int64_t E = p->v_embd, F = p->v_ff, P = p->v_patch, G = p->v_pos_grid;
        ADD("v.patch_embd.weight", 3 * P * P, E, T_PATCH);
        ADD("v.patch_embd.bias", E, 1, T_ZEROS);
        ADD("v.class_embd", E, 1, T_RAND);
        ADD("v.position_embd", E, 1 + G * G, T_RAND);
        for (int il = 0; il < p->v_block; il++) {
            ADD(NAME("v.blk.%d.ln1.weight", il), E, 1, T_ONES);
            ADD(NAME("v.blk.%d.ln1.bias", il), E, 1, T_ZEROS);
            ADD(NAME("v.blk.%d.attn_qkv.weight", il), E, 3 * E, T_VMAT);
            ADD(NAME("v.blk.%d.attn_q.bias", il), E, 1, T_ZEROS);
            ADD(NAME("v.blk.%d.attn_v.bias", il), E, 1, T_ZEROS);
            ADD(NAME("v.blk.%d.attn_out.weight", il), E, E, T_VMAT);
            ADD(NAME("v.blk.%d.attn_out.bias", il), E, 1, T_ZEROS);
            ADD(NAME("v.blk.%d.ln2.weight", il), E, 1, T_ONES);
            ADD(NAME("v.blk.%d.ln2.bias", il), E, 1, T_ZEROS);
            ADD(NAME("v.blk.%d.ffn_up.weight", il), E, F, T_VMAT);
            ADD(NAME("v.blk.%d.ffn_up.bias", il), F, 1, T_ZEROS);
            ADD(NAME("v.blk.%d.ffn_down.weight", il), F, E, T_VMAT);
            ADD(NAME("v.blk.%d.ffn_down.bias", il), E, 1, T_ZEROS);
        }
        ADD("v.post_ln.weight", E, 1, T_ONES);
        ADD("v.post_ln.bias", E, 1, T_ZEROS);
        int64_t proj_in = 4 * E;
        if (p->qf_block > 0) {
            /* BLIP-2 Q-Former: self-attention, cross-attention to the ViT every 2nd layer, query FFN */
            const int64_t D = p->qf_embd, Fq = p->qf_ff;
            static const char *const att[2] = {"attn", "cross"};
            ADD("qf.query_embd", D, p->qf_query, T_RAND);
            ADD("qf.embd_ln.weight", D, 1, T_ONES);
            ADD("qf.embd_ln.bias", D, 1, T_ZEROS);
            for (int il = 0; il < p->qf_block; il++) {
                for (int c = 0; c < (il % 2 == 0 ? 2 : 1); c++) {
                    const int64_t kv_in = c ? E : D;
                    ADD(NAME("qf.blk.%d.%s_q.weight", il, att[c]), D, D, T_VMAT);
                    ADD(NAME("qf.blk.%d.%s_q.bias", il, att[c]), D, 1, T_ZEROS);
                    ADD(NAME("qf.blk.%d.%s_k.weight", il, att[c]), kv_in, D, T_VMAT);
                    ADD(NAME("qf.blk.%d.%s_k.bias", il, att[c]), D, 1, T_ZEROS);
                    ADD(NAME("qf.blk.%d.%s_v.weight", il, att[c]), kv_in, D, T_VMAT);
                    ADD(NAME("qf.blk.%d.%s_v.bias", il, att[c]), D, 1, T_ZEROS);
                    ADD(NAME("qf.blk.%d.%s_out.weight", il, att[c]), D, D, T_VMAT);
                    ADD(NAME("qf.blk.%d.%s_out.bias", il, att[c]), D, 1, T_ZEROS);
                    ADD(NAME("qf.blk.%d.%s_ln.weight", il, att[c]), D, 1, T_ONES);
                    ADD(NAME("qf.blk.%d.%s_ln.bias", il, att[c]), D, 1, T_ZEROS);
                }
                ADD(NAME("qf.blk.%d.ffn_up.weight", il), D, Fq, T_VMAT);
                ADD(NAME("qf.blk.%d.ffn_up.bias", il), Fq, 1, T_ZEROS);
                ADD(NAME("qf.blk.%d.ffn_down.weight", il), Fq, D, T_VMAT);
                ADD(NAME("qf.blk.%d.ffn_down.bias", il), D, 1, T_ZEROS);
                ADD(NAME("qf.blk.%d.ffn_ln.weight", il), D, 1, T_ONES);
                ADD(NAME("qf.blk.%d.ffn_ln.bias", il), D, 1, T_ZEROS);
            }
            proj_in = D;
        }
        ADD("mm.proj.weight", proj_in, d, T_VMAT);
        ADD("mm.proj.bias", d, 1, T_ZEROS);
    }
    ADD("token_embd.weight", d, l.n_vocab, T_MAT);
    for (int il = 0; il < l.n_layer; il++) {
        ADD(NAME("blk.%d.attn_norm.weight", il), d, 1, T_ONES);
        ADD(NAME("blk.%d.attn_q.weight", il), d, d, T_MAT);
        ADD(NAME("blk.%d.attn_k.weight", il), d, kv, T_MAT);
        ADD(NAME("blk.%d.attn_v.weight", il), d, kv, T_MAT);
        ADD(NAME("blk.%d.attn_output.weight", il), d, d, T_MAT);
        ADD(NAME("blk.%d.ffn_norm.weight", il), d, 1, T_ONES);
        ADD(NAME("blk.%d.ffn_gate.weight", il), d, l.n_ff, T_MAT);
        ADD(NAME("blk.%d.ffn_up.weight", il), d, l.n_ff, T_MAT);
        ADD(NAME("blk.%d.ffn_down.weight", il), l.n_ff, d, T_MAT);
    }
    ADD("output_norm.weight", d, 1, T_ONES);
    ADD("output.weight", d, l.n_vocab, T_MAT);
#undef NAME
#undef ADD
    return n;
}

uint64_t synth_n_params(const synth_preset *p, const synth_opts *o) {
    synth_opts def = synth_default_opts(MG_TYPE_F32, 1);
    if (!o) o = &def;
    synth_tensor *t = p ? malloc((size_t)max_tensors(p) * sizeof *t) : NULL;
    if (!t) return 0;
    uint64_t n = 0;
    int nt = list_tensors(p, o, t);
    for (int i = 0; i < nt; i++) n += (uint64_t)t[i].ne0 * (uint64_t)t[i].ne1;
    free(t);
    return n;
}

uint64_t synth_data_bytes(const synth_preset *p, const synth_opts *o) {
    synth_tensor *t = p && o ? malloc((size_t)max_tensors(p) * sizeof *t) : NULL;
    if (!t) return 0;
    uint64_t n = 0;
    int nt = list_tensors(p, o, t);
    for (int i = 0; i < nt; i++) {
        size_t row = mg_row_size(type_of(&t[i], o), t[i].ne0);
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

/* The minigpt.* keys of the vision side (docs/gguf-keys.md). */
static mg_status set_vision_keys(gguf_writer *w, const synth_preset *p, const synth_opts *o) {
    const bool qf = p->qf_block > 0;
    mg_status st;
    if ((st = gguf_writer_set_str(w, "minigpt.projector_type", qf ? "qformer" : "merge4")) ||
        (st = gguf_writer_set_str(w, "minigpt.chat_template",
                                  !strcmp(p->arch, "minigptv2") ? "minigptv2"
                                  : qf                          ? "minigpt4-vicuna"
                                                                : "minigpt4-llama2")) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.image_size", (uint32_t)(o->image_size ? o->image_size : p->v_image))) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.patch_size", (uint32_t)p->v_patch)) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.embedding_length", (uint32_t)p->v_embd)) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.block_count", (uint32_t)p->v_block)) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.head_count", (uint32_t)p->v_head)) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.feed_forward_length", (uint32_t)p->v_ff)) ||
        (st = gguf_writer_set_f32(w, "minigpt.vision.layer_norm_epsilon", 1e-6f)) ||
        (st = gguf_writer_set_f32(w, "minigpt.vision.post_layer_norm_epsilon", 1e-5f)))
        return st;
    if (!qf) return MG_OK;
    if ((st = gguf_writer_set_u32(w, "minigpt.qformer.query_count", (uint32_t)p->qf_query)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.embedding_length", (uint32_t)p->qf_embd)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.block_count", (uint32_t)p->qf_block)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.head_count", (uint32_t)p->qf_head)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.feed_forward_length", (uint32_t)p->qf_ff)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.cross_attention_freq", 2)) ||
        (st = gguf_writer_set_f32(w, "minigpt.qformer.layer_norm_epsilon", 1e-12f)))
        return st;
    return MG_OK;
}

static mg_status set_keys(gguf_writer *w, const synth_preset *p, const synth_opts *o) {
    const llm_shape l = llm_of(p, o);
    const bool vis = with_vision(p, o);
    char name[128];
    snprintf(name, sizeof name, "minigpt synthetic %s %s%s%s%s", p->name, mg_type_name(o->type),
             vis ? " vision " : "", vis ? mg_type_name(o->vision_type) : "",
             o->part == SYNTH_VISION_STUB ? " (stand-in 1-layer LLM)" : "");
    mg_status st;
    if ((st = gguf_writer_set_str(w, "general.architecture", vis ? p->arch : "llama")) ||
        (st = gguf_writer_set_str(w, "general.name", name)) ||
        (st = gguf_writer_set_u32(w, "general.file_type", (uint32_t)file_type_of(o->type))) ||
        (st = gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)l.n_vocab)) ||
        (st = gguf_writer_set_u32(w, "llama.context_length", (uint32_t)p->n_ctx_train)) ||
        (st = gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)l.n_embd)) ||
        (st = gguf_writer_set_u32(w, "llama.block_count", (uint32_t)l.n_layer)) ||
        (st = gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)l.n_ff)) ||
        (st = gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)(l.n_embd / l.n_head))) ||
        (st = gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)l.n_head)) ||
        (st = gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)l.n_head_kv)) ||
        (st = gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", p->rms_eps)) ||
        (st = gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f)))
        return st;
    if (vis && (st = set_vision_keys(w, p, o)) != MG_OK) return st;
    return write_vocab(w, l.n_vocab);
}

static bool writable_type(int type) { return file_type_of(type) >= 0; }

mg_status synth_write_gguf(const synth_preset *p, int type, uint64_t seed, const char *path, char *err,
                           size_t err_len) {
    synth_opts o = synth_default_opts(type, seed);
    return synth_write_gguf_opts(p, &o, path, err, err_len);
}

mg_status synth_write_gguf_opts(const synth_preset *p, const synth_opts *o, const char *path, char *err,
                                size_t err_len) {
    if (!p || !o || !path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "synth: NULL argument");
    if (!writable_type(o->type) || !writable_type(o->vision_type)) {
        int bad = writable_type(o->type) ? o->vision_type : o->type;
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "synth: type %s is not one of f32, f16, bf16, q8_0, q4_0",
                      mg_type_name(bad) ? mg_type_name(bad) : "?");
    }
    if (p->n_vocab < 260)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "synth: preset %s has fewer than 260 rows", p->name);
    if (o->part == SYNTH_VISION_STUB && !synth_has_vision(p))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "synth: preset %s has no vision tower", p->name);
    if (o->image_size != 0 && (o->image_size < 0 || o->image_size > 4096 || !synth_has_vision(p)))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "synth: image size %d does not apply to preset %s",
                      o->image_size, p->name);
    if (synth_data_bytes(p, o) == 0)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "synth: the shapes of %s do not fit %s / %s blocks", p->name,
                      mg_type_name(o->type), mg_type_name(o->vision_type));

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
    nt = list_tensors(p, o, t);
    size_t max_bytes = 0, max_row = 0;
    for (int i = 0; i < nt; i++) {
        int ty = type_of(&t[i], o);
        int64_t ne[2] = {t[i].ne0, t[i].ne1};
        max_bytes = MG_MAX(max_bytes, mg_row_size(ty, t[i].ne0) * (size_t)t[i].ne1);
        max_row = MG_MAX(max_row, (size_t)t[i].ne0);
        if ((st = gguf_writer_add_tensor(w, t[i].name, ty, t[i].ne1 == 1 ? 1 : 2, ne, NULL)) != MG_OK) {
            mg_err(err, err_len, st, "synth: cannot add tensor %s", t[i].name);
            goto done;
        }
    }
    if ((st = set_keys(w, p, o)) != MG_OK) {
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
        if (t[i].kind == T_ONES || t[i].kind == T_ZEROS) {
            float *v = (float *)buf;
            for (int64_t j = 0; j < t[i].ne0; j++) v[j] = t[i].kind == T_ONES ? 1.0f : 0.0f;
        } else {
            /* the seed of a tensor hangs on its name, so the LLM's bytes do not depend on whether a
             * vision side precedes it */
            uint64_t s = o->seed, h = 0xCBF29CE484222325ull;
            for (const char *c = t[i].name; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001B3ull;
            s ^= h * 0x9E3779B97F4A7C15ull;
            int ty = type_of(&t[i], o);
            fill_ctx c = {buf, mg_row_size(ty, t[i].ne0), t[i].ne0, ty, splitmix64(&s), scratch};
            mg_pool_run(pool, t[i].ne1, 16, fill_rows, &c);
        }
        if ((st = gguf_writer_write_tensor_data(w, fp, i, buf, err, err_len)) != MG_OK) goto done;
    }
done:
    st = gguf_file_close_written(fp, path, st, err, err_len);
    if (fp && st != MG_OK) remove(path);
    mg_pool_free(pool);
    for (int i = 0; scratch && i < n_threads; i++) mg_free_aligned(scratch[i]);
    free(scratch);
    mg_free_aligned(buf);
    gguf_writer_free(w);
    free(t);
    return st;
}
