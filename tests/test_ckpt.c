/*
 * test_ckpt.c - checkpoint reading (zip.c, pickle.c, torchload.c, safetensors.c, ckpt.c)
 * against files written by PyTorch (tests/ref/make_ckpt.py, run at test time): every tensor
 * compared byte for byte and as float32 with PyTorch's own dump; malicious pickles refused
 * (while torch.load is shown to run them); truncated and corrupted files rejected without a
 * crash; hand-made malformed pickles, zips, safetensors headers and indexes.
 */
#include "ckpt.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ==== Reference data ==== */

static const char *ref_dir(void) {
    static char dir[4096];
    static int state; /* 0 not yet, 1 ok, -1 failed */
    if (!state) {
        snprintf(dir, sizeof dir, "%s/ckpt", test_data_dir());
        int rc = test_run("'%s' tests/ref/make_ckpt.py '%s'", test_python(), dir);
        state = rc == 0 ? 1 : -1;
    }
    return state == 1 ? dir : NULL;
}

static void *read_rel(const char *rel, size_t *size) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", ref_dir(), rel);
    return test_read_file(path, size);
}

/* Opens ref_dir()/rel and compares every tensor with the manifest; returns tensors matched. */
static int check_case(const char *rel, const char *manifest_rel) {
    char path[8192], err[256] = "";
    snprintf(path, sizeof path, "%s/%s", ref_dir(), rel);
    ckpt_file *f = NULL;
    mg_status st = ckpt_open(&f, path, err, sizeof err);
    CHECK_MSG(st == MG_OK, "%s: %s", rel, err);
    if (st != MG_OK) return 0;
    size_t msize;
    char *man = read_rel(manifest_rel, &msize);
    CHECK(man != NULL);
    int n_lines = 0, matched = 0;
    char *save = NULL;
    for (char *line = man ? strtok_r(man, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
        char *name = line, *dtype = strchr(name, '\t');
        if (!dtype) break;
        *dtype++ = 0;
        char *shape = strchr(dtype, '\t'), *stem = shape ? strchr(shape + 1, '\t') : NULL;
        CHECK(stem != NULL);
        if (!stem) break;
        *shape++ = 0;
        *stem++ = 0;
        n_lines++;
        const ckpt_tensor *t = ckpt_find(f, name);
        CHECK_MSG(t != NULL, "%s: tensor '%s' missing", rel, name);
        if (!t) continue;
        CHECK_MSG(strcmp(t->name, name) == 0, "%s: found '%s' for '%s'", rel, t->name, name);
        CHECK_MSG(strcmp(ckpt_type_name(t->type), dtype) == 0, "%s: '%s' dtype %s vs %s", rel, name,
                  ckpt_type_name(t->type), dtype);
        int nd = 0;
        int64_t shp[CKPT_MAX_DIMS], numel = 1;
        for (char *p = shape; *p && nd < CKPT_MAX_DIMS;) {
            shp[nd] = strtoll(p, &p, 10);
            numel *= shp[nd++];
            if (*p == ',') p++;
        }
        bool shape_ok = t->n_dims == nd && t->n_elements == numel;
        for (int i = 0; shape_ok && i < nd; i++) shape_ok = t->shape[i] == shp[i];
        CHECK_MSG(shape_ok, "%s: '%s' shape mismatch (%d dims)", rel, name, t->n_dims);
        if (!shape_ok) continue;
        char rp[256];
        snprintf(rp, sizeof rp, "%s.raw", stem);
        size_t raw_size;
        void *want = read_rel(rp, &raw_size);
        size_t bytes = (size_t)t->n_elements * ckpt_type_size(t->type);
        void *got = malloc(bytes + 1);
        st = ckpt_read_raw(f, t, got, bytes, err, sizeof err);
        CHECK_MSG(st == MG_OK, "%s: read '%s': %s", rel, name, err);
        CHECK_MSG(want && raw_size == bytes && memcmp(got, want, bytes) == 0, "%s: '%s' raw bytes differ", rel, name);
        snprintf(rp, sizeof rp, "%s/%s.npy", ref_dir(), stem);
        int64_t nshape[4];
        int nnd;
        float *wantf = test_read_npy_f32(rp, nshape, &nnd);
        float *gotf = malloc((size_t)t->n_elements * sizeof(float) + 1);
        st = ckpt_read_f32(f, t, gotf, t->n_elements, err, sizeof err);
        CHECK_MSG(st == MG_OK, "%s: read_f32 '%s': %s", rel, name, err);
        bool same = wantf && memcmp(gotf, wantf, (size_t)t->n_elements * sizeof(float)) == 0;
        CHECK_MSG(same, "%s: '%s' float32 values differ from PyTorch's", rel, name);
        matched += same && st == MG_OK;
        free(want);
        free(got);
        free(wantf);
        free(gotf);
    }
    CHECK_MSG(ckpt_n_tensors(f) == n_lines, "%s: %lld tensors, manifest has %d", rel,
              (long long)ckpt_n_tensors(f), n_lines);
    free(man);
    ckpt_close(f);
    return matched;
}

/* Runs check_case on the cases.txt lines whose checkpoint path starts with prefix. */
static void check_cases(const char *prefix) {
    if (!ref_dir()) {
        CHECK_MSG(0, "tests/ref/make_ckpt.py failed (python: %s)", test_python());
        return;
    }
    size_t n;
    char *cases = read_rel("cases.txt", &n), *save = NULL;
    CHECK(cases != NULL);
    int n_cases = 0;
    for (char *line = cases ? strtok_r(cases, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
        char ck[512], man[512];
        if (sscanf(line, "%511s %511s", ck, man) != 2 || strncmp(ck, prefix, strlen(prefix)) != 0) continue;
        int matched = check_case(ck, man);
        printf("    %s: %d tensors match PyTorch\n", ck, matched);
        CHECK(matched > 0);
        n_cases++;
    }
    CHECK_MSG(n_cases > 0, "no reference case starts with '%s'", prefix);
    free(cases);
}

TEST(ckpt_torch_zip) { check_cases("zip_"); }
TEST(ckpt_torch_legacy) { check_cases("legacy_"); }
TEST(ckpt_safetensors) { check_cases("model.safetensors"); }
TEST(ckpt_sharded_index) {
    check_cases("st_sharded");
    check_cases("bin_sharded");
}
TEST(ckpt_zip64) { check_cases("zip64"); }

TEST(ckpt_find_wrapped) {
    if (!ref_dir()) SKIP("reference generation failed");
    char path[8192], err[256] = "";
    snprintf(path, sizeof path, "%s/zip_wrapped.pth", ref_dir());
    ckpt_file *f;
    CHECK(ckpt_open(&f, path, err, sizeof err) == MG_OK);
    if (!f) return;
    CHECK(strcmp(ckpt_format(f), "torch zip") == 0);
    const ckpt_tensor *t = ckpt_find(f, "llama_proj.weight");
    CHECK(t && strcmp(t->name, "model.llama_proj.weight") == 0);
    CHECK(t && t->n_dims == 2 && t->shape[0] == 6 && t->shape[1] == 8);
    t = ckpt_find(f, "model.layers.0.self_attn.q_proj.weight"); /* HF name inside a "model" wrapper */
    CHECK(t && strcmp(t->name, "model.model.layers.0.self_attn.q_proj.weight") == 0);
    CHECK(ckpt_find(f, "visual_encoder.blocks.0.attn.qkv.weight") != NULL);
    CHECK(ckpt_find(f, "optimizer.state.0.exp_avg") != NULL);
    CHECK(ckpt_find(f, "extra.param") != NULL); /* an nn.Parameter (_rebuild_parameter) */
    CHECK(ckpt_find(f, "llama_proj") == NULL);
    CHECK(ckpt_find(f, "epoch") == NULL);
    CHECK(ckpt_tensor_at(f, -1) == NULL && ckpt_tensor_at(f, ckpt_n_tensors(f)) == NULL);
    /* Wrong sizes are refused, not written past. */
    float one;
    CHECK(ckpt_read_f32(f, t, &one, 1, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(ckpt_read_raw(f, t, &one, sizeof one, err, sizeof err) == MG_ERR_INVALID_ARG);
    ckpt_close(f);
    ckpt_close(NULL);
}

TEST(ckpt_refuses_malicious_pickles) {
    if (!ref_dir()) SKIP("reference generation failed");
    char cdir[4096], marker[4200];
    snprintf(cdir, sizeof cdir, "%s/c_side", ref_dir());
    mkdir(cdir, 0755);
    snprintf(marker, sizeof marker, "%s/PWNED", cdir);
    unlink(marker);
    setenv("MG_PWNED_DIR", cdir, 1);
    size_t n;
    char *list = read_rel("evil.txt", &n), *save = NULL;
    CHECK(list != NULL);
    int n_files = 0;
    for (char *line = list ? strtok_r(list, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
        char file[256], global[256], path[8192], proof[8192], err[512] = "";
        if (sscanf(line, "%255s %255s", file, global) != 2) continue;
        n_files++;
        snprintf(path, sizeof path, "%s/%s", ref_dir(), file);
        snprintf(proof, sizeof proof, "%s/proof/%s/PWNED", ref_dir(), file);
        CHECK_MSG(access(proof, F_OK) == 0, "%s: torch.load did not run the payload: not a live test file", file);
        ckpt_file *f = NULL;
        mg_status st = ckpt_open(&f, path, err, sizeof err);
        printf("    %s: %s\n", file, err);
        CHECK_MSG(st == MG_ERR_UNSUPPORTED && f == NULL, "%s: not refused (%d)", file, st);
        char quoted[300];
        snprintf(quoted, sizeof quoted, "'%s'", global);
        CHECK_MSG(strstr(err, "refused global") && strstr(err, quoted), "%s: error does not name %s: %s", file,
                  global, err);
        CHECK_MSG(access(marker, F_OK) != 0, "%s: the payload ran!", file);
        ckpt_close(f);
    }
    CHECK_EQ_INT(n_files, 5);
    free(list);
}

/* Opens a malloc'd copy of exactly n bytes (so ASan sees any overread) and reads every tensor. */
static mg_status open_and_read(const uint8_t *data, size_t n, char *err, size_t err_len) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, data, n);
    ckpt_file *f;
    mg_status st = ckpt_open_memory(&f, copy, n, err, err_len);
    for (int64_t i = 0; st == MG_OK && i < ckpt_n_tensors(f); i++) {
        const ckpt_tensor *t = ckpt_tensor_at(f, i);
        float *buf = malloc((size_t)t->n_elements * sizeof(float) + 1);
        st = ckpt_read_f32(f, t, buf, t->n_elements, err, err_len);
        free(buf);
    }
    if (f) ckpt_close(f);
    free(copy);
    return st;
}

static const char *const sample_files[] = {"zip_plain.pth", "zip_wrapped.pth", "legacy_plain.pth", "legacy_wrapped.pth",
                                           "zip_deflate.pth", "zip64.pth", "model.safetensors"};

TEST(ckpt_truncated_files) {
    if (!ref_dir()) SKIP("reference generation failed");
    int n_tried = 0;
    for (size_t k = 0; k < MG_ARRAY_LEN(sample_files); k++) {
        size_t n;
        uint8_t *d = read_rel(sample_files[k], &n);
        CHECK(d != NULL);
        if (!d) continue;
        char err[256];
        CHECK_MSG(open_and_read(d, n, err, sizeof err) == MG_OK, "%s: %s", sample_files[k], err);
        size_t step = test_quick() ? 5 : 1, bad = 0;
        for (size_t cut = 0; cut < n; cut += cut < 600 ? step : step * 7, n_tried++) {
            err[0] = 0;
            mg_status st = open_and_read(d, cut, err, sizeof err);
            if (st == MG_OK || !err[0]) {
                if (bad++ < 3) printf("    %s cut at %zu: accepted\n", sample_files[k], cut);
            }
        }
        CHECK_MSG(bad == 0, "%s: %zu truncations accepted", sample_files[k], bad);
        free(d);
    }
    printf("    %d truncated files refused\n", n_tried);
}

TEST(ckpt_corrupted_files) {
    if (!ref_dir()) SKIP("reference generation failed");
    uint64_t rng = 1234;
    int rounds = test_quick() ? 60 : 400, n_ok = 0, n_err = 0;
    for (size_t k = 0; k < MG_ARRAY_LEN(sample_files); k++) {
        size_t n;
        uint8_t *d = read_rel(sample_files[k], &n);
        CHECK(d != NULL);
        if (!d) continue;
        for (int r = 0; r < rounds; r++) {
            uint8_t *m = malloc(n);
            memcpy(m, d, n);
            int flips = 1 + (int)(test_rng_next(&rng) % 8);
            /* Mostly hit the metadata (pickle, headers, directory) where parsing happens. */
            for (int i = 0; i < flips; i++) {
                size_t pos = test_rng_next(&rng) % n;
                if (r % 2) pos = (test_rng_next(&rng) % 2) ? pos % MG_MIN(n, (size_t)1024) : n - 1 - pos % MG_MIN(n, (size_t)600);
                m[pos] = (uint8_t)test_rng_next(&rng);
            }
            char err[256] = "";
            mg_status st = open_and_read(m, n, err, sizeof err);
            if (st == MG_OK) n_ok++;
            else n_err++;
            CHECK_MSG(st == MG_OK || (st < 0 && st >= MG_ERR_INTERNAL && err[0]), "%s: bad status %d", sample_files[k], st);
            free(m);
        }
        free(d);
    }
    printf("    corrupted files: %d read, %d refused\n", n_ok, n_err);
    CHECK(n_err > 0);
}

/* ==== Hand-made pickles ==== */

static mg_status load_bytes(const char *bytes, size_t n, pk_obj **root, char *err, size_t err_len, pk_ctx **ctx) {
    *ctx = pk_new();
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, bytes, n);
    size_t used = 0;
    mg_status st = pk_load(*ctx, copy, n, &used, root, err, err_len);
    free(copy);
    return st;
}

#define PK(s) s, sizeof(s) - 1

TEST(ckpt_pickle_basics) {
    char err[256] = "";
    pk_ctx *ctx;
    pk_obj *root;
    /* {'a': [1, -2, 3.5, None, True], 'b': ('x', 300), 'c': <memo of the list>} protocol 2 */
    static const char p1[] = "\x80\x02}q\x00(X\x01\x00\x00\x00" "a]q\x01(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88"
                             "eX\x01\x00\x00\x00" "bX\x01\x00\x00\x00xM,\x01\x86X\x01\x00\x00\x00" "ch\x01u.";
    CHECK(load_bytes(PK(p1), &root, err, sizeof err, &ctx) == MG_OK);
    CHECK_MSG(root && root->kind == PK_DICT && root->u.seq.n == 6, "%s", err);
    if (root && root->kind == PK_DICT && root->u.seq.n == 6) {
        pk_obj *l = root->u.seq.items[1];
        CHECK(l->kind == PK_LIST && l->u.seq.n == 5);
        CHECK(l->u.seq.items[0]->u.i == 1 && l->u.seq.items[1]->u.i == -2);
        CHECK(l->u.seq.items[2]->kind == PK_FLOAT && l->u.seq.items[2]->u.f == 3.5);
        CHECK(l->u.seq.items[3]->kind == PK_NONE && l->u.seq.items[4]->kind == PK_BOOL);
        pk_obj *t = root->u.seq.items[3];
        CHECK(t->kind == PK_TUPLE && t->u.seq.n == 2 && t->u.seq.items[1]->u.i == 300);
        CHECK(root->u.seq.items[5] == l); /* BINGET gives the same object */
    }
    pk_free(ctx);
    /* LONG1: -1 and 2^40; protocol 4 with FRAME, SHORT_BINUNICODE and MEMOIZE */
    static const char p2[] = "\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00(\x8a\x01\xff\x8a\x06\x00\x00\x00\x00\x00\x01"
                             "\x8c\x02hi\x94h\x00t.";
    CHECK(load_bytes(PK(p2), &root, err, sizeof err, &ctx) == MG_OK);
    CHECK_MSG(root && root->kind == PK_TUPLE && root->u.seq.n == 4, "%s", err);
    if (root && root->kind == PK_TUPLE && root->u.seq.n == 4) {
        CHECK(root->u.seq.items[0]->u.i == -1);
        CHECK(root->u.seq.items[1]->u.i == (int64_t)1 << 40);
        CHECK(strcmp(root->u.seq.items[2]->u.str.s, "hi") == 0 && root->u.seq.items[3] == root->u.seq.items[2]);
    }
    pk_free(ctx);
}

TEST(ckpt_pickle_refusals) {
    static const struct { const char *bytes; size_t n; mg_status st; const char *msg; } cases[] = {
        {PK("\x80\x02(cos\nsystem\nX\x02\x00\x00\x00lst."), MG_ERR_UNSUPPORTED, "'os.system'"},
        {PK("\x80\x04\x8c\x05posix\x8c\x06system\x93."), MG_ERR_UNSUPPORTED, "'posix.system'"},
        {PK("\x80\x02" "c__builtin__\ngetattr\n."), MG_ERR_UNSUPPORTED, "'__builtin__.getattr'"},
        {PK("\x80\x02" "ctorch\nload\n."), MG_ERR_UNSUPPORTED, "'torch.load'"},
        {PK("\x80\x02" "cnumpy.core.multiarray\n_reconstruct\n."), MG_ERR_UNSUPPORTED, "'numpy.core.multiarray._reconstruct'"},
        {PK("\x80\x02" "ccollections\nOrderedDict\n]\x85R."), MG_ERR_UNSUPPORTED, "OrderedDict with constructor"},
        {PK("\x80\x02" "ctorch\nFloatStorage\n)R."), MG_ERR_UNSUPPORTED, "storage class"},
        {PK("\x80\x02K\x01)R."), MG_ERR_FORMAT, "non-callable"},
        {PK("\x80\x02i__main__\nX\n."), MG_ERR_UNSUPPORTED, "opcode 0x69"},      /* INST */
        {PK("\x80\x02(S'ls'\n."), MG_ERR_UNSUPPORTED, "opcode 0x53"},           /* text STRING */
        {PK("\x80\x02\x82\x01."), MG_ERR_UNSUPPORTED, "opcode 0x82"},           /* EXT1 */
        {PK("\x80\x02h\x05."), MG_ERR_FORMAT, "memo get"},
        {PK("\x80\x02K\x01K\x02" "a."), MG_ERR_FORMAT, "APPEND on a non-list"},
        {PK("\x80\x02}K\x01s."), MG_ERR_FORMAT, "short stack"},
        {PK("\x80\x02(((("), MG_ERR_FORMAT, "no STOP"},
        {PK("\x80\x02X\xff\xff\xff\xff" "ab."), MG_ERR_FORMAT, "truncated string"},
        {PK("\x80\x02\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09."), MG_ERR_UNSUPPORTED, "wider than 64"},
        {PK("\x80\x02."), MG_ERR_FORMAT, "empty stack"},
        {PK("\x80\x02t."), MG_ERR_FORMAT, "missing MARK"},
        {PK("\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuJ\xff\xff\xff\xfftQ."),
         MG_ERR_FORMAT, "storage tuple"},
    };
    for (size_t i = 0; i < MG_ARRAY_LEN(cases); i++) {
        char err[256] = "";
        pk_ctx *ctx;
        pk_obj *root;
        mg_status st = load_bytes(cases[i].bytes, cases[i].n, &root, err, sizeof err, &ctx);
        CHECK_MSG(st == cases[i].st && strstr(err, cases[i].msg), "case %zu: %d '%s' (want %d '%s')", i, st, err,
                  cases[i].st, cases[i].msg);
        pk_free(ctx);
    }
}

/* ('storage', torch.FloatStorage, '0', 'cpu', 4) then _rebuild_tensor_v2(s, off, size, stride, False, OrderedDict()) */
#define PK_STORAGE_PID "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x04tQ"
#define PK_REBUILD "ctorch._utils\n_rebuild_tensor_v2\n("
#define PK_TAIL "\x89" "ccollections\nOrderedDict\n)RtR."

TEST(ckpt_pickle_tensors) {
    char err[256] = "";
    pk_ctx *ctx;
    pk_obj *root;
    /* a [2, 2] transposed view at offset 1 */
    static const char ok[] = "\x80\x02" PK_REBUILD PK_STORAGE_PID "K\x01K\x02K\x02\x86K\x01K\x02\x86" PK_TAIL;
    CHECK(load_bytes(PK(ok), &root, err, sizeof err, &ctx) == MG_OK);
    CHECK_MSG(root && root->kind == PK_TENSOR, "%s", err);
    if (root && root->kind == PK_TENSOR) {
        CHECK(root->u.tensor.n_dims == 2 && root->u.tensor.offset == 1);
        CHECK(root->u.tensor.stride[0] == 1 && root->u.tensor.stride[1] == 2);
        pk_obj *s = root->u.tensor.storage;
        CHECK(s->kind == PK_STORAGE && s->u.storage.type == MG_TYPE_F32 && s->u.storage.numel == 4);
        CHECK(pk_find_storage(ctx, "0") == s && pk_find_storage(ctx, "1") == NULL);
    }
    pk_free(ctx);
    static const struct { const char *bytes; size_t n; const char *msg; } bad[] = {
        {PK("\x80\x02" PK_REBUILD PK_STORAGE_PID "J\xff\xff\xff\xffK\x02\x85K\x01\x85" PK_TAIL), "bad arguments"},
        {PK("\x80\x02" PK_REBUILD PK_STORAGE_PID "K\x00K\x02\x85K\x01K\x01\x86" PK_TAIL), "bad arguments"},
        {PK("\x80\x02" PK_REBUILD PK_STORAGE_PID "K\x00(K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01t"
            "(K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01t" PK_TAIL), "more than 8"},
        {PK("\x80\x02" PK_REBUILD "K\x00K\x00K\x02\x85K\x01\x85" PK_TAIL), "bad arguments"},
        {PK("\x80\x02(X\x07\x00\x00\x00storagecos\nsystem\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x04tQ."), "'os.system'"},
    };
    for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++) {
        err[0] = 0;
        CHECK(load_bytes(bad[i].bytes, bad[i].n, &root, err, sizeof err, &ctx) != MG_OK);
        CHECK_MSG(strstr(err, bad[i].msg) != NULL, "case %zu: '%s' lacks '%s'", i, err, bad[i].msg);
        pk_free(ctx);
    }
}

/* A pickle nested a million MARKs deep, and a list that contains itself: bounded, no crash. */
TEST(ckpt_pickle_pathological) {
    size_t n = test_quick() ? 100000 : 1000000;
    char *b = malloc(n + 8);
    memcpy(b, "\x80\x02", 2);
    memset(b + 2, '(', n);
    b[n + 2] = '.';
    char err[256] = "";
    pk_ctx *ctx;
    pk_obj *root;
    CHECK(load_bytes(b, n + 3, &root, err, sizeof err, &ctx) == MG_ERR_FORMAT);
    pk_free(ctx);
    memset(b + 2, ']', n); /* a million empty lists on the stack */
    CHECK(load_bytes(b, n + 3, &root, err, sizeof err, &ctx) == MG_OK);
    pk_free(ctx);
    free(b);
    static const char self[] = "\x80\x02]q\x00h\x00" "ah\x00" "a.";
    CHECK(load_bytes(PK(self), &root, err, sizeof err, &ctx) == MG_OK);
    CHECK(root && root->kind == PK_LIST && root->u.seq.n == 2 && root->u.seq.items[0] == root);
    pk_free(ctx);
}

TEST(ckpt_malformed_files) {
    if (!ref_dir()) SKIP("reference generation failed");
    size_t n;
    char *list = read_rel("bad.txt", &n), *save = NULL;
    CHECK(list != NULL);
    int n_files = 0;
    for (char *line = list ? strtok_r(list, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
        char *tab = strchr(line, '\t'), path[8192], err[512] = "";
        if (!tab) continue;
        *tab = 0;
        snprintf(path, sizeof path, "%s/%s", ref_dir(), line);
        ckpt_file *f = NULL;
        mg_status st = ckpt_open(&f, path, err, sizeof err);
        CHECK_MSG(st != MG_OK && f == NULL && strstr(err, tab + 1), "%s: status %d, '%s' (want '%s')", line, st,
                  err, tab + 1);
        n_files++;
        ckpt_close(f);
    }
    CHECK(n_files >= 20);
    free(list);
    char err[256] = "";
    ckpt_file *f;
    CHECK(ckpt_open(&f, "/nonexistent/model.pth", err, sizeof err) == MG_ERR_IO && strstr(err, "/nonexistent"));
    CHECK(ckpt_open_memory(&f, "", 0, err, sizeof err) == MG_ERR_FORMAT);
}

TEST(ckpt_zip_entries) {
    if (!ref_dir()) SKIP("reference generation failed");
    static const char *const files[] = {"zip_plain.pth", "zip_deflate.pth", "zip64.pth"};
    for (size_t k = 0; k < MG_ARRAY_LEN(files); k++) {
        size_t n;
        uint8_t *d = read_rel(files[k], &n);
        CHECK(d != NULL);
        if (!d) continue;
        zip_archive z;
        char err[256] = "";
        CHECK_MSG(zip_open(&z, d, n, err, sizeof err) == MG_OK, "%s: %s", files[k], err);
        CHECK(z.n_entries >= 3);
        int n_deflated = 0;
        for (size_t i = 0; i < z.n_entries; i++) {
            const uint8_t *ptr;
            uint8_t *owned;
            mg_status st = zip_entry_data(&z, &z.entries[i], 1, &ptr, &owned, err, sizeof err);
            CHECK_MSG(st == MG_OK, "%s: %s", z.entries[i].name, err);
            n_deflated += z.entries[i].method == 8;
            free(owned);
        }
        CHECK(k != 1 || n_deflated > 0);
        CHECK(zip_find(&z, "nope") == NULL);
        /* Flip one byte of the last entry's data: its CRC check must fail. */
        const zip_entry *e = &z.entries[z.n_entries - 1];
        if (e->comp_size > 0) {
            d[e->data_offset] ^= 0x55;
            const uint8_t *ptr;
            uint8_t *owned;
            mg_status st = zip_entry_data(&z, e, 1, &ptr, &owned, err, sizeof err);
            CHECK_MSG(st == MG_ERR_FORMAT && (strstr(err, "CRC") || strstr(err, "deflate")), "%s: %s", files[k], err);
        }
        zip_close(&z);
        free(d);
    }
}

/* Opt-in (MG_TEST_BIG=1; run this test alone): a 1 GiB torch zip of 16 x 64 MiB tensors read
 * tensor by tensor; the peak RSS must stay near one tensor (its copy + its mapped pages), far
 * below the file size. */
TEST(ckpt_peak_memory) {
    const char *big = getenv("MG_TEST_BIG");
    if (!big || !*big || strcmp(big, "0") == 0) SKIP("set MG_TEST_BIG=1 to write and read a 1 GiB checkpoint");
    char path[4096];
    snprintf(path, sizeof path, "%s/big_1g.pth", test_data_dir());
    int rc = test_run("'%s' -c \"import torch,collections; torch.save(collections.OrderedDict(('layers.%%d.weight' %% i, "
                      "torch.full((4096, 4096), float(i))) for i in range(16)), '%s')\"", test_python(), path);
    CHECK_EQ_INT(rc, 0);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long before_kb = ru.ru_maxrss;
    ckpt_file *f;
    char err[256] = "";
    CHECK(ckpt_open(&f, path, err, sizeof err) == MG_OK);
    if (!f) return;
    /* One destination buffer for all tensors, as a converter would use. */
    size_t largest = 0;
    for (int64_t i = 0; i < ckpt_n_tensors(f); i++)
        largest = MG_MAX(largest, (size_t)ckpt_tensor_at(f, i)->n_elements * sizeof(float));
    float *x = malloc(largest);
    CHECK(x != NULL);
    if (!x) return;
    int64_t t0 = mg_time_us();
    bool values_ok = true;
    for (int64_t i = 0; i < ckpt_n_tensors(f); i++) {
        const ckpt_tensor *t = ckpt_tensor_at(f, i);
        CHECK(ckpt_read_f32(f, t, x, t->n_elements, err, sizeof err) == MG_OK);
        int layer = atoi(t->name + 7);
        values_ok &= x[0] == (float)layer && x[t->n_elements - 1] == (float)layer;
    }
    free(x);
    double secs = (double)(mg_time_us() - t0) * 1e-6;
    ckpt_close(f);
    getrusage(RUSAGE_SELF, &ru);
    long peak_mb = ru.ru_maxrss / 1024, before_mb = before_kb / 1024;
    printf("    1 GiB checkpoint, %d tensors of %zu MiB: max RSS %ld MiB (was %ld MiB before), read in %.2f s\n",
           16, largest >> 20, peak_mb, before_mb, secs);
    CHECK(values_ok);
    CHECK_MSG(peak_mb - before_mb < 3 * (long)(largest >> 20) + 64, "peak RSS grew by %ld MiB", peak_mb - before_mb);
    unlink(path);
}
