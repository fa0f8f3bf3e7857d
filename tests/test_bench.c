/*
 * test_bench.c - the synthetic model writer (src/synth.c) and the `minigpt bench` command:
 * synthetic files load and run in the engine, are reproducible from their seed, the bench's JSON
 * parses (Python's json module) with every field, and bad options fail with one line. Speed is
 * never checked here: benchmarks are run by hand (docs/PERFORMANCE.md).
 */
#include "test.h"

#include "gguf.h"
#include "minigpt.h"
#include "synth.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *bin_or_null(void) {
    const char *b = getenv("MG_BIN");
    return b && *b && access(b, X_OK) == 0 ? b : NULL;
}

/* Number of lines in a file (-1 if unreadable). */
static int count_lines(const char *path) {
    size_t n;
    char *s = test_read_file(path, &n);
    if (!s) return -1;
    int k = 0;
    for (size_t i = 0; i < n; i++) k += s[i] == '\n';
    free(s);
    return k;
}

/* Weights of EVA ViT-g as BLIP-2 keeps it (39 blocks, ln_vision) at 224 px. */
static uint64_t eva_vit_g_params(void) {
    const uint64_t E = 1408, F = 6144, block = 2 * E + 3 * E * E + 2 * E + E * E + E + 2 * E + F * E + F + E * F + E;
    return E * 3 * 14 * 14 + E + E + 257 * E + 39 * block + 2 * E;
}

/* Weights of the BLIP-2 Q-Former (12 layers of 768, cross-attention to 1408 on even layers). */
static uint64_t qformer_params(void) {
    const uint64_t D = 768, E = 1408, Fq = 3072, self = 4 * (D * D + D) + 2 * D;
    const uint64_t cross = 2 * (D * D + D) + 2 * (E * D + D) + 2 * D, ffn = Fq * D + Fq + D * Fq + D + 2 * D;
    return 32 * D + 2 * D + 12 * (self + ffn) + 6 * cross;
}

TEST(bench_synth_presets) {
    const synth_preset *p = synth_find_preset("minigpt4-7b");
    CHECK(p && p->n_embd == 4096 && p->n_layer == 32 && p->n_head == 32 && p->n_ff == 11008 && p->n_vocab == 32001);
    synth_opts llm = synth_default_opts(MG_TYPE_Q4_0, 1);
    llm.part = SYNTH_LLM_ONLY;
    /* LLaMA-7B has 6.74 B weights with its own 32000-row head; one more row adds 2 x 4096 */
    if (p) {
        CHECK_EQ_INT(synth_n_params(p, &llm), 6738415616ull + 2 * 4096);
        CHECK(p->v_image == 224 && p->v_embd == 1408 && p->v_block == 39 && p->v_head == 16 && p->v_ff == 6144 &&
              p->qf_block == 12 && p->qf_embd == 768 && p->qf_query == 32 && !strcmp(p->arch, "minigpt4"));
        /* whole model: LLM + ViT + Q-Former + mm.proj 768 -> 4096 */
        CHECK_EQ_INT(synth_n_params(p, NULL),
                     6738415616ull + 2 * 4096 + eva_vit_g_params() + qformer_params() + 4096 * 768 + 4096);
    }
    p = synth_find_preset("minigpt4-13b");
    CHECK(p && p->n_embd == 5120 && p->n_layer == 40 && p->n_head == 40 && p->n_ff == 13824);
    if (p) {
        synth_opts so = synth_default_opts(MG_TYPE_F16, 1);
        so.part = SYNTH_VISION_STUB; /* + a 1-layer LLM of width 5120, 260 rows, FFN 256 */
        uint64_t stub = 2 * 260 * 5120 + 4 * 5120 * 5120 + 3 * 5120 * 256 + 3 * 5120;
        CHECK_EQ_INT(synth_n_params(p, &so), eva_vit_g_params() + qformer_params() + 5120 * 768 + 5120 + stub);
    }
    p = synth_find_preset("minigptv2-7b");
    CHECK(p && p->n_vocab == 32000 && p->n_ctx_train == 4096 && p->v_image == 448 && p->qf_block == 0 &&
          p->v_pos_grid == 16 && !strcmp(p->arch, "minigptv2"));
    if (p) {
        CHECK_EQ_INT(synth_n_params(p, &llm), 6738415616ull);
        /* q4_0: 18 bytes per 32 weights, norms (65 x 4096) in f32 */
        uint64_t norms = 65 * 4096;
        CHECK_EQ_INT(synth_data_bytes(p, &llm), (synth_n_params(p, &llm) - norms) / 32 * 18 + norms * 4);
        /* merge4: mm.proj 5632 -> 4096; the stored pos-embed keeps the 16x16 grid */
        CHECK_EQ_INT(synth_n_params(p, NULL), 6738415616ull + eva_vit_g_params() + 4096 * 5632 + 4096);
    }
    CHECK(synth_find_preset("nope") == NULL);
    CHECK(synth_find_preset(NULL) == NULL);
}

TEST(bench_synth_loads_and_runs) {
    const synth_preset *p = synth_find_preset("tiny");
    CHECK(p != NULL);
    if (!p) return;
    const int types[] = {MG_TYPE_F32, MG_TYPE_F16, MG_TYPE_BF16, MG_TYPE_Q8_0, MG_TYPE_Q4_0};
    char path[4096], err[256];
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        snprintf(path, sizeof path, "%s/synth_tiny_%s.gguf", test_data_dir(), mg_type_name(types[k]));
        mg_status st = synth_write_gguf(p, types[k], 7, path, err, sizeof err);
        CHECK_MSG(st == MG_OK, "synth %s: %s", mg_type_name(types[k]), err);
        if (st != MG_OK) continue;
        mg_model *m = NULL;
        mg_model_params mp = mg_model_default_params();
        mp.n_threads = 2;
        st = mg_model_open(&m, path, &mp, err, sizeof err);
        CHECK_MSG(st == MG_OK, "open %s: %s", path, err);
        if (st != MG_OK) continue;
        CHECK_EQ_INT(mg_model_n_layer(m), 2);
        CHECK_EQ_INT(mg_model_n_vocab(m), 320);
        CHECK_EQ_INT(mg_tokenizer_n_vocab(mg_model_tokenizer(m)), 320);
        CHECK(strstr(mg_model_desc(m), mg_type_name(types[k])) != NULL);
        mg_session *s = NULL;
        mg_session_params sp = mg_session_default_params();
        sp.n_ctx = 64;
        if (mg_session_create(&s, m, &sp, err, sizeof err) == MG_OK) {
            int32_t ids[5] = {1, 300, 17, 259, 42};
            CHECK(mg_session_eval_tokens(s, ids, 5) == MG_OK);
            const float *lg = mg_session_logits(s);
            bool finite = true, nonzero = false;
            for (int i = 0; i < 320; i++) {
                finite = finite && isfinite(lg[i]);
                nonzero = nonzero || lg[i] != 0.0f;
            }
            CHECK(finite && nonzero);
        } else {
            CHECK_MSG(false, "session: %s", err);
        }
        mg_session_free(s);
        mg_model_close(m);
    }
}

TEST(bench_synth_reproducible) {
    const synth_preset *p = synth_find_preset("tiny");
    char a[4096], b[4096], err[256];
    snprintf(a, sizeof a, "%s/synth_rep_a.gguf", test_data_dir());
    snprintf(b, sizeof b, "%s/synth_rep_b.gguf", test_data_dir());
    CHECK(synth_write_gguf(p, MG_TYPE_Q4_0, 42, a, err, sizeof err) == MG_OK);
    CHECK(synth_write_gguf(p, MG_TYPE_Q4_0, 42, b, err, sizeof err) == MG_OK);
    size_t na = 0, nb = 0;
    char *da = test_read_file(a, &na), *db = test_read_file(b, &nb);
    CHECK(da && db && na == nb && na > 0 && memcmp(da, db, na) == 0);
    free(db);
    CHECK(synth_write_gguf(p, MG_TYPE_Q4_0, 43, b, err, sizeof err) == MG_OK);
    db = test_read_file(b, &nb);
    CHECK(da && db && na == nb && memcmp(da, db, na) != 0); /* another seed, other weights */
    free(da);
    free(db);
    /* the layout llama.cpp expects: names, keys and the vocabulary */
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, a, err, sizeof err) == MG_OK);
    if (f) {
        CHECK_EQ_INT(gguf_n_tensors(f), 3 + 9 * 2);
        const gguf_tensor *t = gguf_find_tensor(f, "blk.1.ffn_down.weight");
        CHECK(t && t->ne[0] == 128 && t->ne[1] == 64 && t->type == MG_TYPE_Q4_0);
        t = gguf_find_tensor(f, "blk.0.attn_norm.weight");
        CHECK(t && t->n_dims == 1 && t->type == MG_TYPE_F32);
        uint32_t ft = 99, hd = 0;
        CHECK(gguf_get_u32(f, "general.file_type", &ft, err, sizeof err) == MG_OK && ft == 2);
        CHECK(gguf_get_u32(f, "llama.rope.dimension_count", &hd, err, sizeof err) == MG_OK && hd == 16);
        const gguf_kv *kv = gguf_find_kv(f, "tokenizer.ggml.tokens");
        CHECK(kv && kv->n == 320 && gguf_str_eq(kv->strs[13], "<0x0A>") && gguf_str_eq(kv->strs[1], "<s>"));
        gguf_close(f);
    }
    /* a type the writer does not produce */
    CHECK(synth_write_gguf(p, MG_TYPE_Q5_0, 1, b, err, sizeof err) == MG_ERR_UNSUPPORTED && err[0]);
    CHECK(synth_write_gguf(NULL, MG_TYPE_F32, 1, b, err, sizeof err) == MG_ERR_INVALID_ARG);
    unlink(a);
    unlink(b);
}

TEST(bench_json_fields) {
    const char *bin = bin_or_null();
    if (!bin) SKIP("MG_BIN not set to the minigpt binary");
    char out[4096];
    snprintf(out, sizeof out, "%s/bench_tiny.json", test_data_dir());
    CHECK_EQ_INT(test_run("'%s' bench --synthetic tiny --type q8_0 -t 2 -r 3 --warmup 1 --prompt 16,32 "
                          "--depth 0,8 --gen 4 --json > '%s'", bin, out), 0);
    CHECK_EQ_INT(test_run("'%s' -c \"import json,sys; j=json.load(open(sys.argv[1])); "
                          "req=['model','desc','synthetic','synthetic_storage','type','file_bytes','isa','threads',"
                          "'reps','warmup','cpu','image','prefill','decode','peak_rss_mib']; "
                          "miss=[k for k in req if k not in j]; assert not miss, miss; "
                          "assert j['synthetic']=='tiny' and j['type']=='q8_0' and j['threads']==2 and j['reps']==3; "
                          "assert j['isa'] in ('ref','avx2','avx512'), j['isa']; "
                          "assert [p['n_prompt'] for p in j['prefill']]==[16,32]; "
                          "assert [(d['depth'],d['n_gen']) for d in j['decode']]==[(0,4),(8,4)]; "
                          "assert j['image']==[] and j['vision_type']=='q8_0' and not j['vision_only']; "
                          "rs=j['prefill']+j['decode']; "
                          "assert all(len(r['runs_ms'])==3 and 0<r['ms_min']<=r['ms_median']<=max(r['runs_ms']) "
                          "and r['tok_s_best']>=r['tok_s_median']>0 for r in rs), rs; "
                          "assert j['peak_rss_mib']>0 and j['file_bytes']>0\" '%s'",
                          test_python(), out),
                 0);
    /* table mode on a terminal-less stdout still works and names every test */
    snprintf(out, sizeof out, "%s/bench_tiny.txt", test_data_dir());
    CHECK_EQ_INT(test_run("'%s' bench --synthetic tiny -r 1 --warmup 0 --prompt 8 --depth 4 --gen 2 --image 0 > '%s'",
                          bin, out),
                 0);
    char *txt = test_read_file(out, NULL);
    CHECK(txt && strstr(txt, "prefill pp8") && strstr(txt, "decode tg2 @ 4") && strstr(txt, "peak RSS") &&
          !strstr(txt, "image 224"));
    free(txt);
}

TEST(bench_write_gguf) {
    const char *bin = bin_or_null();
    if (!bin) SKIP("MG_BIN not set to the minigpt binary");
    char path[4096], log[4096];
    snprintf(path, sizeof path, "%s/bench_written.gguf", test_data_dir());
    snprintf(log, sizeof log, "%s/bench_written.txt", test_data_dir());
    unlink(path);
    CHECK_EQ_INT(test_run("'%s' bench --synthetic tiny --type bf16 --write-gguf '%s' > '%s'", bin, path, log), 0);
    CHECK(access(path, R_OK) == 0);
    CHECK_EQ_INT(test_run("'%s' info '%s' > '%s'", bin, path, log), 0);
    char *txt = test_read_file(log, NULL);
    CHECK(txt && strstr(txt, "token_embd.weight") && strstr(txt, "bf16"));
    free(txt);
    /* the written file is timed like any model file */
    CHECK_EQ_INT(test_run("'%s' bench -m '%s' -r 1 --warmup 0 --prompt 8 --depth 0 --gen 2 --json > '%s'", bin, path,
                          log),
                 0);
    CHECK_EQ_INT(test_run("'%s' -c \"import json,sys; j=json.load(open(sys.argv[1])); "
                          "assert j['synthetic'] is None and j['model'].endswith('bench_written.gguf')\" '%s'",
                          test_python(), log),
                 0);
    unlink(path);
}

TEST(bench_bad_options) {
    const char *bin = bin_or_null();
    if (!bin) SKIP("MG_BIN not set to the minigpt binary");
    static const struct {
        const char *args;
        int rc;
    } cases[] = {
        {"", 2},
        {"--synthetic nope", 2},
        {"--synthetic tiny --type q5_k", 2},
        {"--synthetic tiny -r 0", 2},
        {"--synthetic tiny -t x", 2},
        {"--synthetic tiny --prompt 12,,3", 2},
        {"--synthetic tiny --prompt -4", 2},
        {"--synthetic tiny --image 100", 2},
        {"--synthetic tiny --bogus 1", 2},
        {"--synthetic tiny --gen", 2},
        {"-m x.gguf --synthetic tiny", 2},
        {"-m x.gguf --type q8_0", 2},
        {"-m x.gguf --write-gguf y.gguf", 2},
        {"--synthetic tiny --vision-only", 2},
        {"--synthetic tiny --vision-type f16", 2},
        {"--synthetic tiny-vl --vision-type q5_0", 2},
        {"--synthetic tiny-vl --vision-only --llm-only", 2},
        {"--synthetic tiny-vl --llm-only --image 28", 2},
        {"--synthetic tiny-vl --vision-only --image 0", 2},
        {"-m x.gguf --vision-type f16", 2},
        {"-m x.gguf --llm-only", 2},
        {"-m /nonexistent/model.gguf", 1},
        {"--synthetic tiny --write-gguf /nonexistent/dir/out.gguf", 1},
        {"--synthetic tiny-vl --image 28,56 --write-gguf y.gguf", 2},
        {"--synthetic tiny-v2 --image 42 --write-gguf y.gguf", 2},
    };
    char err[4096];
    snprintf(err, sizeof err, "%s/bench_err.txt", test_data_dir());
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = test_run("'%s' bench %s > /dev/null 2> '%s'", bin, cases[i].args, err);
        CHECK_MSG(rc == cases[i].rc, "bench %s: exit %d, expected %d", cases[i].args, rc, cases[i].rc);
        int nl = count_lines(err);
        CHECK_MSG(nl == 1, "bench %s: %d lines on stderr, expected 1", cases[i].args, nl);
    }
    CHECK_EQ_INT(test_run("'%s' bench --help > /dev/null", bin), 0);
}

/* The tiny presets with a vision tower load as MiniGPT models and encode an image; the matrix
 * types follow --type (LLM) and --vision-type (vision side) separately. */
TEST(bench_synth_vision_loads) {
    static const struct {
        const char *name, *variant;
        int image_size, n_img_tok, vision_type;
        synth_part part;
    } cases[] = {
        {"tiny-vl", "minigpt4-vicuna", 28, 4, MG_TYPE_F16, SYNTH_FULL},
        {"tiny-v2", "minigptv2", 56, 4, MG_TYPE_Q4_0, SYNTH_FULL},          /* 2x2 pos-embed interpolated */
        {"tiny-v2", "minigptv2", 112, 16, MG_TYPE_Q8_0, SYNTH_VISION_STUB}, /* forced size, stand-in LLM */
    };
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/synth_vision.gguf", test_data_dir());
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const synth_preset *p = synth_find_preset(cases[k].name);
        CHECK(p && synth_has_vision(p));
        if (!p) continue;
        synth_opts so = synth_default_opts(MG_TYPE_Q8_0, 3);
        so.vision_type = cases[k].vision_type;
        so.part = cases[k].part;
        so.image_size = cases[k].part == SYNTH_VISION_STUB ? cases[k].image_size : 0;
        mg_status st = synth_write_gguf_opts(p, &so, path, err, sizeof err);
        CHECK_MSG(st == MG_OK, "synth %s: %s", cases[k].name, err);
        if (st != MG_OK) continue;
        gguf_file *f = NULL;
        CHECK(gguf_open(&f, path, err, sizeof err) == MG_OK);
        if (f) {
            const gguf_tensor *t = gguf_find_tensor(f, "v.blk.1.attn_qkv.weight");
            CHECK(t && t->type == cases[k].vision_type && t->ne[0] == 64 && t->ne[1] == 192);
            t = gguf_find_tensor(f, "v.patch_embd.weight"); /* 588-long rows fit no quant block */
            CHECK(t && t->type == MG_TYPE_F16); /* f16 asked for, or a block type */
            t = gguf_find_tensor(f, "v.blk.0.ln1.bias");
            CHECK(t && t->type == MG_TYPE_F32);
            t = gguf_find_tensor(f, "v.position_embd"); /* the stored grid, not the image's */
            CHECK(t && t->ne[0] == 64 && t->ne[1] == 5 && t->type == MG_TYPE_F32);
            t = gguf_find_tensor(f, "blk.0.attn_q.weight");
            CHECK(t && t->type == MG_TYPE_Q8_0);
            CHECK((gguf_find_tensor(f, "qf.blk.0.cross_k.weight") != NULL) == (p->qf_block > 0));
            CHECK(gguf_find_tensor(f, "qf.blk.1.cross_k.weight") == NULL); /* odd layers: no cross-attention */
            gguf_close(f);
        }
        mg_model *m = NULL;
        mg_model_params mp = mg_model_default_params();
        mp.n_threads = 2;
        st = mg_model_open(&m, path, &mp, err, sizeof err);
        CHECK_MSG(st == MG_OK, "open %s: %s", cases[k].name, err);
        if (st != MG_OK) continue;
        CHECK(mg_model_has_vision(m));
        CHECK(!strcmp(mg_model_variant(m), cases[k].variant));
        CHECK_EQ_INT(mg_model_image_size(m), cases[k].image_size);
        CHECK_EQ_INT(mg_model_n_image_tokens(m), cases[k].n_img_tok);
        CHECK_EQ_INT(mg_model_n_layer(m), cases[k].part == SYNTH_VISION_STUB ? 1 : 2);
        mg_vl_dims d;
        CHECK(mg_vl_stage_dims(m, &d) == MG_OK && d.llm_dim == 64 && d.n_img_tok == cases[k].n_img_tok);
        int S = cases[k].image_size;
        float *px = calloc((size_t)3 * S * S, sizeof *px), *tok = calloc((size_t)d.n_img_tok * 64, sizeof *tok);
        for (int i = 0; px && i < 3 * S * S; i++) px[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
        CHECK(px && tok && mg_vl_encode_stages(m, px, NULL, NULL, tok, err, sizeof err) == MG_OK);
        bool finite = true, nonzero = false;
        for (int i = 0; tok && i < d.n_img_tok * 64; i++) {
            finite = finite && isfinite(tok[i]);
            nonzero = nonzero || tok[i] != 0.0f;
        }
        CHECK(finite && nonzero);
        free(px);
        free(tok);
        mg_model_close(m);
    }
    /* the LLM alone is a plain llama file (what llama.cpp loads) */
    synth_opts so = synth_default_opts(MG_TYPE_F32, 1);
    so.part = SYNTH_LLM_ONLY;
    CHECK(synth_write_gguf_opts(synth_find_preset("tiny-vl"), &so, path, err, sizeof err) == MG_OK);
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, path, err, sizeof err) == MG_OK);
    if (f) {
        CHECK_EQ_INT(gguf_n_tensors(f), 3 + 9 * 2);
        const gguf_kv *kv = gguf_find_kv(f, "general.architecture");
        CHECK(kv && kv->strs && gguf_str_eq(kv->strs[0], "llama"));
        gguf_close(f);
    }
    /* a stand-in LLM needs a vision preset */
    so.part = SYNTH_VISION_STUB;
    CHECK(synth_write_gguf_opts(synth_find_preset("tiny"), &so, path, err, sizeof err) == MG_ERR_INVALID_ARG && err[0]);
    unlink(path);
}

/* bench times the image encode of a vision model: at its own size from the model, at forced sizes
 * from a vision-only file, and says when a size is not possible. */
TEST(bench_json_image) {
    const char *bin = bin_or_null();
    if (!bin) SKIP("MG_BIN not set to the minigpt binary");
    char out[4096], path[4096];
    snprintf(out, sizeof out, "%s/bench_vl.json", test_data_dir());
    CHECK_EQ_INT(test_run("'%s' bench --synthetic tiny-vl --type q8_0 --vision-type f16 -t 2 -r 2 --warmup 0 "
                          "--prompt 8 --depth 0 --gen 2 --image 28,56 --json > '%s'", bin, out), 0);
    CHECK_EQ_INT(test_run("'%s' -c \"import json,sys; j=json.load(open(sys.argv[1])); "
                          "assert j['vision_type']=='f16' and j['type']=='q8_0' and not j['vision_only']; "
                          "im=j['image']; assert [i['size'] for i in im]==[28,56], im; "
                          "assert [i['native'] for i in im]==[True,False], im; "
                          "assert [i['source'] for i in im]==['model','vision-stub'], im; "
                          "assert [i['n_img_tok'] for i in im]==[4,4], im; "
                          "assert all(len(i['runs_ms'])==2 and 0<i['ms_min']<=i['ms_median'] for i in im), im; "
                          "assert 'interpolated' in im[1]['note'], im; "
                          "assert len(j['prefill'])==1 and len(j['decode'])==1 and j['n_layer']==2\" '%s'",
                          test_python(), out),
                 0);
    /* --vision-only: no LLM tests; default size = the preset's; merge4 refuses an odd grid */
    CHECK_EQ_INT(test_run("'%s' bench --synthetic tiny-v2 --vision-only -t 2 -r 1 --warmup 0 --image 56,42 --json "
                          "> '%s'", bin, out), 0);
    CHECK_EQ_INT(test_run("'%s' -c \"import json,sys; j=json.load(open(sys.argv[1])); "
                          "assert j['vision_only'] and j['prefill']==[] and j['decode']==[] and j['n_layer'] is None; "
                          "a,b=j['image']; assert a['size']==56 and a['native'] and a['ms_median']>0, a; "
                          "assert b['ms_median'] is None and b['note'].startswith('not possible'), b\" '%s'",
                          test_python(), out),
                 0);
    /* a model file fixes its size: the other sizes are reported as not possible */
    snprintf(path, sizeof path, "%s/bench_vl.gguf", test_data_dir());
    CHECK_EQ_INT(test_run("'%s' bench --synthetic tiny-vl --write-gguf '%s' > /dev/null", bin, path), 0);
    CHECK_EQ_INT(test_run("'%s' bench -m '%s' --vision-only -r 1 --warmup 0 --image 28,56 > '%s'", bin, path, out), 0);
    char *txt = test_read_file(out, NULL);
    CHECK(txt && strstr(txt, "image 28") && strstr(txt, "image 56: not possible") && !strstr(txt, "prefill"));
    free(txt);
    /* --write-gguf with one --image: the vision side at that size (what the stub timing writes) */
    CHECK_EQ_INT(test_run("'%s' bench --synthetic tiny-vl --vision-only --image 56 --write-gguf '%s' > /dev/null", bin,
                          path),
                 0);
    CHECK_EQ_INT(test_run("'%s' info '%s' > '%s'", bin, path, out), 0);
    txt = test_read_file(out, NULL);
    CHECK(txt && strstr(txt, "minigpt.vision.image_size") && strstr(strstr(txt, "minigpt.vision.image_size"), "56"));
    free(txt);
    unlink(path);
}
