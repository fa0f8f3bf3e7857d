/*
 * test_gguf.c - the GGUF reader and writer against an independent Python writer
 * (tests/ref/gguf_writer.py, laid out like llama.cpp's gguf-py), hand-built malformed files for
 * each validation rule, truncation at every offset, byte flips over the whole header, and the
 * `minigpt info` command. Metadata values here repeat those of tests/ref/gguf_ref_files.py.
 */
#include "test.h"

#include "gguf.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>

/* ==== Helpers ==== */

/* Generates the reference files once per run; returns the directory or NULL. */
static const char *ref_dir(void) {
    static char dir[4096];
    static int state; /* 0 not tried, 1 ok, -1 failed */
    if (!state) {
        snprintf(dir, sizeof dir, "%s/gguf", test_data_dir());
        int rc = test_run("'%s' tests/ref/gguf_ref_files.py '%s'", test_python(), dir);
        state = rc == 0 ? 1 : -1;
    }
    return state == 1 ? dir : NULL;
}

static void *read_ref(const char *name, size_t *n) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", ref_dir(), name);
    return test_read_file(p, n);
}

static bool str_is(gguf_str s, const char *c) { return gguf_str_eq(s, c); }

/* Reads every byte of every string, array and tensor (so ASan sees any bad view). */
static unsigned walk_all(const gguf_file *f) {
    unsigned sum = 0;
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        for (uint64_t j = 0; j < kv->key.len; j++) sum += (unsigned char)kv->key.ptr[j];
        if (kv->arr_type == GGUF_TYPE_STRING) {
            for (uint64_t k = 0; k < kv->n; k++)
                for (uint64_t j = 0; j < kv->strs[k].len; j++) sum += (unsigned char)kv->strs[k].ptr[j];
        } else {
            for (uint64_t k = 0; k < kv->n; k++) sum += (unsigned)gguf_arr_i64(kv, k);
        }
    }
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        for (uint64_t j = 0; j < t->name.len; j++) sum += (unsigned char)t->name.ptr[j];
        const unsigned char *d = t->data;
        for (uint64_t j = 0; j < t->nbytes; j++) sum += d[j];
    }
    return sum;
}

/* A growable byte buffer for hand-built files. */
typedef struct {
    unsigned char *p;
    size_t n, cap;
} bb;

static void bb_put(bb *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void bb_u32(bb *b, uint32_t v) {
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    bb_put(b, x, 4);
}
static void bb_u64(bb *b, uint64_t v) {
    bb_u32(b, (uint32_t)v);
    bb_u32(b, (uint32_t)(v >> 32));
}
static void bb_str(bb *b, const char *s) {
    bb_u64(b, strlen(s));
    bb_put(b, s, strlen(s));
}
static void bb_hdr(bb *b, uint64_t n_tensors, uint64_t n_kv) {
    bb_u32(b, GGUF_MAGIC);
    bb_u32(b, 3);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}
static void bb_kv_u32(bb *b, const char *k, uint32_t v) {
    bb_str(b, k);
    bb_u32(b, GGUF_TYPE_UINT32);
    bb_u32(b, v);
}
static void bb_ti(bb *b, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off) {
    bb_str(b, name);
    bb_u32(b, nd);
    for (uint32_t i = 0; i < nd; i++) bb_u64(b, ne[i]);
    bb_u32(b, type);
    bb_u64(b, off);
}
static void bb_pad(bb *b, size_t align) {
    while (b->n % align) bb_put(b, "", 1);
}
static void bb_zeros(bb *b, size_t n) {
    for (size_t i = 0; i < n; i++) bb_put(b, "", 1);
}

/* Opens b's bytes from an exact-size heap copy; returns the status, message in err. */
static mg_status try_open(const bb *b, char *err, size_t err_len) {
    unsigned char *copy = malloc(b->n ? b->n : 1);
    if (b->n) memcpy(copy, b->p, b->n);
    gguf_file *f = NULL;
    err[0] = 0;
    mg_status st = gguf_open_buffer(&f, copy, b->n, err, err_len);
    if (st == MG_OK) walk_all(f);
    gguf_close(f);
    free(copy);
    return st;
}

static void expect_fail(bb *b, mg_status want, const char *word, const char *label) {
    char err[256];
    mg_status st = try_open(b, err, sizeof err);
    CHECK_MSG(st == want, "%s: status %d, expected %d (%s)", label, st, want, err);
    CHECK_MSG(strstr(err, word) != NULL, "%s: message '%s' lacks '%s'", label, err, word);
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ==== Reference-file tests ==== */

static const char *const tensor_names[] = {"tok_embd.weight", "blk.0.attn_q.weight", "norm", "four_d",
                                           "blk.0.ffn_up.weight"};
static const int tensor_types[] = {MG_TYPE_F32, MG_TYPE_F16, MG_TYPE_F32, MG_TYPE_F32, MG_TYPE_Q8_0};
static const int tensor_ndims[] = {2, 3, 1, 4, 2};
static const int64_t tensor_ne[][4] = {{5, 3, 1, 1}, {4, 3, 2, 1}, {7, 1, 1, 1}, {2, 3, 1, 2}, {32, 2, 1, 1}};

static void check_ref_content(const gguf_file *f, uint64_t align) {
    char err[256];
    CHECK_EQ_INT(gguf_version(f), 3);
    CHECK_EQ_INT(gguf_alignment(f), align);
    CHECK_EQ_INT(gguf_data_offset(f) % align, 0);
    CHECK_EQ_INT(gguf_n_kv(f), align == 64 ? 29 : 28);
    gguf_str s;
    CHECK(gguf_get_str(f, "general.architecture", &s, err, sizeof err) == MG_OK && str_is(s, "llama"));
    CHECK(str_is(gguf_kv_at(f, 0)->key, "general.architecture"));
    const gguf_kv *kv;
#define SCALAR(key, T, ctype, expect)                                                              \
    kv = gguf_find_kv(f, key);                                                                     \
    CHECK_MSG(kv && kv->type == T && kv->n == 1, "%s type", key);                                  \
    if (kv) {                                                                                      \
        ctype v_;                                                                                  \
        memcpy(&v_, kv->data, sizeof v_);                                                          \
        CHECK_MSG(v_ == (expect), "%s value", key);                                                \
    }
    SCALAR("t.u8", GGUF_TYPE_UINT8, uint8_t, 200);
    SCALAR("t.i8", GGUF_TYPE_INT8, int8_t, -100);
    SCALAR("t.u16", GGUF_TYPE_UINT16, uint16_t, 60000);
    SCALAR("t.i16", GGUF_TYPE_INT16, int16_t, -30000);
    SCALAR("t.u32", GGUF_TYPE_UINT32, uint32_t, 4000000000u);
    SCALAR("t.i32", GGUF_TYPE_INT32, int32_t, -2000000000);
    SCALAR("t.u64", GGUF_TYPE_UINT64, uint64_t, (1ull << 63) + 5);
    SCALAR("t.i64", GGUF_TYPE_INT64, int64_t, -(1ll << 62) - 3);
    SCALAR("t.f32", GGUF_TYPE_FLOAT32, float, 0.1f);
    SCALAR("t.f64", GGUF_TYPE_FLOAT64, double, -1e300);
#undef SCALAR
    bool b = false;
    CHECK(gguf_get_bool(f, "t.true", &b, err, sizeof err) == MG_OK && b);
    CHECK(gguf_get_bool(f, "t.false", &b, err, sizeof err) == MG_OK && !b);
    CHECK(gguf_get_str(f, "t.str", &s, err, sizeof err) == MG_OK && str_is(s, "h\xc3\xa9llo \xe2\x96\x81world\n"));
    CHECK(gguf_get_str(f, "t.empty", &s, err, sizeof err) == MG_OK && s.len == 0);

    static const struct {
        const char *key;
        gguf_type t;
        double v[3];
    } arrs[] = {
        {"a.u8", GGUF_TYPE_UINT8, {0, 1, 255}},
        {"a.i8", GGUF_TYPE_INT8, {-128, 0, 127}},
        {"a.u16", GGUF_TYPE_UINT16, {0, 1, 65535}},
        {"a.i16", GGUF_TYPE_INT16, {-32768, 0, 32767}},
        {"a.u32", GGUF_TYPE_UINT32, {0, 1, 4294967295.0}},
        {"a.i32", GGUF_TYPE_INT32, {-2147483648.0, 0, 2147483647.0}},
        {"a.f32", GGUF_TYPE_FLOAT32, {0.5, -2.25, (double)1e30f}},
        {"a.bool", GGUF_TYPE_BOOL, {1, 0, 1}},
        {"a.f64", GGUF_TYPE_FLOAT64, {0.1, -0.0, 1e-300}},
    };
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
        const gguf_kv *a = NULL;
        mg_status st = gguf_get_arr(f, arrs[i].key, arrs[i].t, &a, err, sizeof err);
        CHECK_MSG(st == MG_OK && a && a->n == 3, "array %s: %s", arrs[i].key, err);
        if (st != MG_OK) continue;
        for (int j = 0; j < 3; j++)
            CHECK_MSG(gguf_arr_f64(a, (uint64_t)j) == arrs[i].v[j], "%s[%d]", arrs[i].key, j);
    }
    const gguf_kv *a = NULL;
    CHECK(gguf_get_arr(f, "a.u64", GGUF_TYPE_UINT64, &a, err, sizeof err) == MG_OK);
    if (a) {
        uint64_t v[3];
        memcpy(v, a->data, sizeof v);
        CHECK(v[0] == 0 && v[1] == 1 && v[2] == UINT64_MAX);
        CHECK(gguf_arr_i64(a, 2) == INT64_MAX); /* clamped */
    }
    a = NULL;
    CHECK(gguf_get_arr(f, "a.i64", GGUF_TYPE_INT64, &a, err, sizeof err) == MG_OK);
    if (a) CHECK(gguf_arr_i64(a, 0) == INT64_MIN && gguf_arr_i64(a, 2) == INT64_MAX);
    a = NULL;
    CHECK(gguf_get_arr(f, "a.str", GGUF_TYPE_STRING, &a, err, sizeof err) == MG_OK);
    if (a) CHECK(a->n == 3 && str_is(a->strs[0], "a") && a->strs[1].len == 0 &&
                 str_is(a->strs[2], "\xe2\x96\x81" "b<0x0A>"));
    a = NULL;
    CHECK(gguf_get_arr(f, "a.empty", GGUF_TYPE_INT32, &a, err, sizeof err) == MG_OK && a && a->n == 0);

    CHECK_EQ_INT(gguf_n_tensors(f), 5);
    for (int i = 0; i < 5 && gguf_n_tensors(f) == 5; i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        CHECK_MSG(str_is(t->name, tensor_names[i]), "tensor %d name", i);
        CHECK(gguf_find_tensor(f, tensor_names[i]) == t);
        CHECK_EQ_INT(t->type, tensor_types[i]);
        CHECK_EQ_INT(t->n_dims, tensor_ndims[i]);
        for (int d = 0; d < 4; d++) CHECK_EQ_INT(t->ne[d], tensor_ne[i][d]);
        CHECK_EQ_INT(t->offset % align, 0);
        char fn[256];
        snprintf(fn, sizeof fn, "t_%s.bin", tensor_names[i]);
        size_t n = 0;
        unsigned char *want = read_ref(fn, &n);
        CHECK_MSG(want && n == t->nbytes && memcmp(want, t->data, n) == 0, "tensor %s bytes", tensor_names[i]);
        free(want);
    }
    CHECK(gguf_find_tensor(f, "missing") == NULL);
    CHECK(gguf_find_kv(f, "missing") == NULL);
}

TEST(gguf_python_file_loads) {
    if (!ref_dir()) SKIP("reference writer failed (python3 with numpy needed)");
    char path[4200], err[256] = "";
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/%s", ref_dir(), k ? "ref_a32.gguf" : "ref_a64.gguf");
        gguf_file *f = NULL;
        mg_status st = gguf_open(&f, path, err, sizeof err);
        CHECK_MSG(st == MG_OK, "open %s: %s", path, err);
        if (st != MG_OK) continue;
        check_ref_content(f, k ? 32 : 64);
        /* mmap'd data pointers are aligned in memory too (the mapping is page-aligned) */
        for (int64_t i = 0; i < gguf_n_tensors(f); i++)
            CHECK((uintptr_t)gguf_tensor_at(f, i)->data % gguf_alignment(f) == 0);
        gguf_close(f);
    }
}

/* Writes the reference content with our writer (tensor bytes from the Python side's .bin files). */
static bool write_same_content(const char *path, bool align64) {
    gguf_writer *w = gguf_writer_create();
    bool ok = w != NULL;
    ok = ok && gguf_writer_set_str(w, "general.architecture", "llama") == MG_OK;
    if (align64) ok = ok && gguf_writer_set_u32(w, "general.alignment", 64) == MG_OK;
    ok = ok && gguf_writer_set_u8(w, "t.u8", 200) == MG_OK && gguf_writer_set_i8(w, "t.i8", -100) == MG_OK;
    ok = ok && gguf_writer_set_u16(w, "t.u16", 60000) == MG_OK && gguf_writer_set_i16(w, "t.i16", -30000) == MG_OK;
    ok = ok && gguf_writer_set_u32(w, "t.u32", 4000000000u) == MG_OK;
    ok = ok && gguf_writer_set_i32(w, "t.i32", -2000000000) == MG_OK;
    ok = ok && gguf_writer_set_u64(w, "t.u64", (1ull << 63) + 5) == MG_OK;
    ok = ok && gguf_writer_set_i64(w, "t.i64", -(1ll << 62) - 3) == MG_OK;
    ok = ok && gguf_writer_set_f32(w, "t.f32", 0.1f) == MG_OK && gguf_writer_set_f64(w, "t.f64", -1e300) == MG_OK;
    ok = ok && gguf_writer_set_bool(w, "t.true", true) == MG_OK && gguf_writer_set_bool(w, "t.false", false) == MG_OK;
    ok = ok && gguf_writer_set_str(w, "t.str", "h\xc3\xa9llo \xe2\x96\x81world\n") == MG_OK;
    ok = ok && gguf_writer_set_str(w, "t.empty", "") == MG_OK;
    uint8_t au8[] = {0, 1, 255};
    int8_t ai8[] = {-128, 0, 127};
    uint16_t au16[] = {0, 1, 65535};
    int16_t ai16[] = {-32768, 0, 32767};
    uint32_t au32[] = {0, 1, 4294967295u};
    int32_t ai32[] = {INT32_MIN, 0, INT32_MAX};
    float af32[] = {0.5f, -2.25f, 1e30f};
    uint8_t abool[] = {1, 0, 1};
    const char *astr[] = {"a", "", ("\xe2\x96\x81" "b<0x0A>")};
    uint64_t au64[] = {0, 1, UINT64_MAX};
    int64_t ai64[] = {INT64_MIN, 0, INT64_MAX};
    double af64[] = {0.1, -0.0, 1e-300};
    ok = ok && gguf_writer_set_arr(w, "a.u8", GGUF_TYPE_UINT8, au8, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.i8", GGUF_TYPE_INT8, ai8, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.u16", GGUF_TYPE_UINT16, au16, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.i16", GGUF_TYPE_INT16, ai16, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.u32", GGUF_TYPE_UINT32, au32, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.i32", GGUF_TYPE_INT32, ai32, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.f32", GGUF_TYPE_FLOAT32, af32, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.bool", GGUF_TYPE_BOOL, abool, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr_str(w, "a.str", astr, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.u64", GGUF_TYPE_UINT64, au64, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.i64", GGUF_TYPE_INT64, ai64, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.f64", GGUF_TYPE_FLOAT64, af64, 3) == MG_OK;
    ok = ok && gguf_writer_set_arr(w, "a.empty", GGUF_TYPE_INT32, NULL, 0) == MG_OK;
    void *bufs[5] = {0};
    for (int i = 0; ok && i < 5; i++) {
        char fn[256];
        snprintf(fn, sizeof fn, "t_%s.bin", tensor_names[i]);
        size_t n;
        bufs[i] = read_ref(fn, &n);
        ok = bufs[i] && gguf_writer_add_tensor(w, tensor_names[i], tensor_types[i], tensor_ndims[i],
                                               tensor_ne[i], bufs[i]) == MG_OK;
    }
    char err[256] = "";
    ok = ok && gguf_writer_write_file(w, path, err, sizeof err) == MG_OK;
    CHECK_MSG(ok, "our writer: %s", err);
    for (int i = 0; i < 5; i++) free(bufs[i]);
    gguf_writer_free(w);
    return ok;
}

TEST(gguf_writer_matches_python) {
    if (!ref_dir()) SKIP("reference writer failed (python3 with numpy needed)");
    for (int k = 0; k < 2; k++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/ours_%s.gguf", ref_dir(), k ? "a32" : "a64");
        if (!write_same_content(path, k == 0)) continue;
        size_t na = 0, nb = 0;
        unsigned char *ours = test_read_file(path, &na);
        unsigned char *theirs = read_ref(k ? "ref_a32.gguf" : "ref_a64.gguf", &nb);
        CHECK(ours && theirs);
        if (ours && theirs) {
            size_t first = 0;
            while (first < na && first < nb && ours[first] == theirs[first]) first++;
            CHECK_MSG(na == nb && first == na, "alignment %d: sizes %zu vs %zu, first difference at %zu",
                      k ? 32 : 64, na, nb, first);
        }
        free(ours);
        free(theirs);
        /* and our reader sees the same content in our file */
        gguf_file *f = NULL;
        char err[256];
        if (gguf_open(&f, path, err, sizeof err) == MG_OK) check_ref_content(f, k ? 32 : 64);
        else CHECK_MSG(0, "reopen: %s", err);
        gguf_close(f);
    }
}

/* ==== Writer round trip, getters, writer API ==== */

TEST(gguf_roundtrip_types_and_getters) {
    char path[4200], err[256] = "";
    snprintf(path, sizeof path, "%s/gguf_roundtrip.gguf", test_data_dir());
    gguf_writer *w = gguf_writer_create();
    CHECK(w != NULL);
    if (!w) return;
    CHECK(gguf_writer_set_u32(w, "k.first", 1) == MG_OK);
    CHECK(gguf_writer_set_i8(w, "k.neg", -1) == MG_OK);
    CHECK(gguf_writer_set_u64(w, "k.big", 1ull << 40) == MG_OK);
    CHECK(gguf_writer_set_u16(w, "k.small", 77) == MG_OK);
    CHECK(gguf_writer_set_f64(w, "k.f64", 2.5) == MG_OK);
    CHECK(gguf_writer_set_i32(w, "k.i32", 5) == MG_OK);
    CHECK(gguf_writer_set_str(w, "k.s", "one") == MG_OK);
    CHECK(gguf_writer_set_str(w, "k.s", "replaced") == MG_OK); /* replace keeps position */
    CHECK(gguf_writer_set_u32(w, "k.first", 42) == MG_OK);
    CHECK(gguf_writer_set_u32(w, "general.alignment", 48) == MG_ERR_INVALID_ARG);
    CHECK(gguf_writer_set_u32(w, "general.alignment", 0) == MG_ERR_INVALID_ARG);
    CHECK(gguf_writer_set_u32(w, "general.alignment", 128) == MG_OK);
    CHECK(gguf_writer_set_arr(w, "k.bad", GGUF_TYPE_STRING, "x", 1) == MG_ERR_INVALID_ARG);
    CHECK(gguf_writer_set_arr(w, "k.bad", GGUF_TYPE_ARRAY, "x", 1) == MG_ERR_INVALID_ARG);
    int64_t ne[2] = {33, 2};
    CHECK(gguf_writer_add_tensor(w, "q", MG_TYPE_Q8_0, 2, ne, NULL) == MG_ERR_INVALID_ARG);
    CHECK(gguf_writer_add_tensor(w, "q", 999, 2, ne, NULL) == MG_ERR_INVALID_ARG);
    CHECK(gguf_writer_add_tensor(w, "q", MG_TYPE_F32, 5, ne, NULL) == MG_ERR_INVALID_ARG);
    CHECK(gguf_writer_add_tensor(w, "q", MG_TYPE_F32, 0, ne, NULL) == MG_ERR_INVALID_ARG);
    int64_t neg[1] = {-1};
    CHECK(gguf_writer_add_tensor(w, "q", MG_TYPE_F32, 1, neg, NULL) == MG_ERR_INVALID_ARG);
    float data[66];
    uint64_t rng = 7;
    for (int i = 0; i < 66; i++) data[i] = test_rng_float(&rng);
    CHECK(gguf_writer_add_tensor(w, "t0", MG_TYPE_F32, 2, ne, NULL) == MG_OK);
    CHECK(gguf_writer_add_tensor(w, "t0", MG_TYPE_F32, 1, ne, NULL) == MG_ERR_INVALID_ARG);
    int64_t ne1[1] = {0};
    CHECK(gguf_writer_add_tensor(w, "empty", MG_TYPE_F32, 1, ne1, NULL) == MG_OK);
    int64_t ne2[1] = {5};
    CHECK(gguf_writer_add_tensor(w, "t2", MG_TYPE_F32, 1, ne2, NULL) == MG_OK);
    CHECK(gguf_writer_write_file(w, path, err, sizeof err) == MG_ERR_INVALID_ARG); /* no data */

    /* streaming: out of order is refused, in order works */
    FILE *fp = fopen(path, "wb");
    CHECK(fp != NULL);
    if (!fp) { gguf_writer_free(w); return; }
    CHECK(gguf_writer_write_tensor_data(w, fp, 0, data, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(gguf_writer_write_header(w, fp, err, sizeof err) == MG_OK);
    CHECK(gguf_writer_write_tensor_data(w, fp, 1, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(gguf_writer_write_tensor_data(w, fp, 0, data, err, sizeof err) == MG_OK);
    CHECK(gguf_writer_write_tensor_data(w, fp, 1, NULL, err, sizeof err) == MG_OK);
    CHECK(gguf_writer_write_tensor_data(w, fp, 2, data + 1, err, sizeof err) == MG_OK);
    CHECK(gguf_writer_write_tensor_data(w, fp, 3, data, err, sizeof err) == MG_ERR_INVALID_ARG);
    fclose(fp);
    gguf_writer_free(w);

    gguf_file *f = NULL;
    mg_status st = gguf_open(&f, path, err, sizeof err);
    CHECK_MSG(st == MG_OK, "open: %s", err);
    if (st != MG_OK) return;
    CHECK_EQ_INT(gguf_alignment(f), 128);
    CHECK_EQ_INT(gguf_n_kv(f), 8);
    CHECK(str_is(gguf_kv_at(f, 0)->key, "k.first"));
    CHECK(str_is(gguf_kv_at(f, 6)->key, "k.s"));
    CHECK(gguf_kv_at(f, 8) == NULL && gguf_kv_at(f, -1) == NULL);
    uint32_t u = 0;
    int64_t i64 = 0;
    float fl = 0;
    gguf_str s;
    bool b;
    CHECK(gguf_get_u32(f, "k.first", &u, err, sizeof err) == MG_OK && u == 42);
    CHECK(gguf_get_u32(f, "k.small", &u, err, sizeof err) == MG_OK && u == 77);
    CHECK(gguf_get_u32(f, "k.i32", &u, err, sizeof err) == MG_OK && u == 5);
    CHECK(gguf_get_u32(f, "k.neg", &u, err, sizeof err) == MG_ERR_FORMAT && strstr(err, "fit"));
    CHECK(gguf_get_u32(f, "k.big", &u, err, sizeof err) == MG_ERR_FORMAT);
    CHECK(gguf_get_i64(f, "k.big", &i64, err, sizeof err) == MG_OK && i64 == (1ll << 40));
    CHECK(gguf_get_i64(f, "k.neg", &i64, err, sizeof err) == MG_OK && i64 == -1);
    CHECK(gguf_get_u32(f, "k.s", &u, err, sizeof err) == MG_ERR_FORMAT && strstr(err, "type"));
    CHECK(gguf_get_u32(f, "nope", &u, err, sizeof err) == MG_ERR_FORMAT && strstr(err, "missing"));
    CHECK(gguf_get_f32(f, "k.f64", &fl, err, sizeof err) == MG_OK && fl == 2.5f);
    CHECK(gguf_get_f32(f, "k.i32", &fl, err, sizeof err) == MG_ERR_FORMAT);
    CHECK(gguf_get_str(f, "k.s", &s, err, sizeof err) == MG_OK && str_is(s, "replaced"));
    CHECK(gguf_get_bool(f, "k.s", &b, err, sizeof err) == MG_ERR_FORMAT);
    CHECK(gguf_get_u32_def(f, "nope", 9, &u, err, sizeof err) == MG_OK && u == 9);
    CHECK(gguf_get_u32_def(f, "k.first", 9, &u, err, sizeof err) == MG_OK && u == 42);
    CHECK(gguf_get_u32_def(f, "k.s", 9, &u, err, sizeof err) == MG_ERR_FORMAT);
    CHECK(gguf_get_f32_def(f, "nope", 1.5f, &fl, err, sizeof err) == MG_OK && fl == 1.5f);
    const gguf_kv *arr;
    CHECK(gguf_get_arr(f, "k.s", GGUF_TYPE_UINT8, &arr, err, sizeof err) == MG_ERR_FORMAT);
    char *dup = gguf_str_dup(s);
    CHECK(dup && strcmp(dup, "replaced") == 0);
    free(dup);
    CHECK(strcmp(gguf_type_name(GGUF_TYPE_FLOAT64), "f64") == 0);
    CHECK_EQ_INT(gguf_n_tensors(f), 3);
    const gguf_tensor *t0 = gguf_find_tensor(f, "t0"), *t2 = gguf_find_tensor(f, "t2");
    const gguf_tensor *te = gguf_find_tensor(f, "empty");
    CHECK(t0 && t2 && te);
    if (t0 && t2 && te) {
        CHECK(t0->nbytes == 66 * 4 && memcmp(t0->data, data, 66 * 4) == 0);
        CHECK(te->nbytes == 0 && te->ne[0] == 0);
        CHECK(t2->nbytes == 20 && memcmp(t2->data, data + 1, 20) == 0);
        CHECK_EQ_INT(t2->offset, 384); /* 264 padded to 384, empty tensor takes nothing */
    }
    /* copy_kv: all keys but the alignment, byte-exact */
    gguf_writer *w2 = gguf_writer_create();
    CHECK(gguf_writer_copy_kv(w2, f) == MG_OK);
    char path2[4200];
    snprintf(path2, sizeof path2, "%s/gguf_copykv.gguf", test_data_dir());
    CHECK(gguf_writer_write_file(w2, path2, err, sizeof err) == MG_OK);
    gguf_writer_free(w2);
    gguf_file *g = NULL;
    CHECK(gguf_open(&g, path2, err, sizeof err) == MG_OK);
    if (g) {
        CHECK_EQ_INT(gguf_n_kv(g), 7);
        CHECK_EQ_INT(gguf_alignment(g), 32);
        for (int64_t i = 0, j = 0; i < gguf_n_kv(f); i++) {
            const gguf_kv *a = gguf_kv_at(f, i);
            if (str_is(a->key, "general.alignment")) continue;
            const gguf_kv *c = gguf_kv_at(g, j++);
            CHECK(c && c->type == a->type && c->n == a->n && c->key.len == a->key.len &&
                  memcmp(c->key.ptr, a->key.ptr, a->key.len) == 0);
        }
        gguf_close(g);
    }
    gguf_close(f);
}

/* ==== Hostile input ==== */

TEST(gguf_truncation_every_offset) {
    if (!ref_dir()) SKIP("reference writer failed");
    size_t n = 0;
    unsigned char *full = read_ref("ref_a32.gguf", &n);
    CHECK(full != NULL);
    if (!full) return;
    gguf_file *f = NULL;
    char err[256];
    CHECK(gguf_open_buffer(&f, full, n, err, sizeof err) == MG_OK);
    uint64_t data_end = 0;
    for (int64_t i = 0; f && i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        data_end = MG_MAX(data_end, gguf_data_offset(f) + t->offset + t->nbytes);
    }
    gguf_close(f);
    CHECK(data_end > 0 && data_end <= n);
    int bad = 0;
    for (size_t len = 0; len < n; len++) {
        bb b = {0};
        bb_put(&b, full, len);
        err[0] = 0;
        mg_status st = try_open(&b, err, sizeof err);
        bool want_ok = len >= data_end; /* only the trailing padding may be missing */
        if ((st == MG_OK) != want_ok || (st != MG_OK && !err[0])) {
            if (bad++ < 5) CHECK_MSG(0, "truncated at %zu: status %d (%s)", len, st, err);
        }
        free(b.p);
    }
    CHECK_MSG(bad == 0, "%d truncation lengths misbehaved", bad);
    free(full);
}

TEST(gguf_byte_flips_header) {
    if (!ref_dir()) SKIP("reference writer failed");
    size_t n = 0;
    unsigned char *full = read_ref("ref_a64.gguf", &n);
    CHECK(full != NULL);
    if (!full) return;
    gguf_file *f = NULL;
    char err[256];
    CHECK(gguf_open_buffer(&f, full, n, err, sizeof err) == MG_OK);
    size_t hdr = f ? (size_t)gguf_data_offset(f) : 0;
    gguf_close(f);
    int loaded = 0, failed = 0, silent = 0;
    static const int modes[3] = {0x100 | 0xff, 0xff, 0x00}; /* xor 0xff, set 0xff, set 0 */
    for (size_t off = 0; off < hdr; off++) {
        for (int m = 0; m < 3; m++) {
            bb b = {0};
            bb_put(&b, full, n);
            b.p[off] = (modes[m] & 0x100) ? (unsigned char)(b.p[off] ^ 0xff) : (unsigned char)modes[m];
            err[0] = 0;
            mg_status st = try_open(&b, err, sizeof err);
            if (st == MG_OK) loaded++;
            else if (err[0]) failed++;
            else silent++;
            free(b.p);
        }
    }
    CHECK(hdr > 500);
    CHECK_MSG(silent == 0, "%d errors without a message", silent);
    CHECK_MSG(failed > 0 && loaded > 0, "loaded %d, failed %d", loaded, failed);
    printf("    %zu header bytes x 3 mutations: %d loaded, %d refused\n", hdr, loaded, failed);
    free(full);
}

TEST(gguf_malformed_files) {
    bb b = {0};
    uint64_t ne1[1] = {32}, ne2[2] = {32, 2};
    char err[256];

    bb_put(&b, "GGU", 3);
    expect_fail(&b, MG_ERR_FORMAT, "short", "3-byte file");
    bb_put(&b, "GGML", 4), bb_u32(&b, 3), bb_u64(&b, 0), bb_u64(&b, 0);
    expect_fail(&b, MG_ERR_FORMAT, "magic", "bad magic");
    bb_u32(&b, GGUF_MAGIC), bb_u32(&b, 1), bb_u64(&b, 0), bb_u64(&b, 0);
    expect_fail(&b, MG_ERR_UNSUPPORTED, "version 1", "version 1");
    bb_u32(&b, GGUF_MAGIC), bb_u32(&b, 7), bb_u64(&b, 0), bb_u64(&b, 0);
    expect_fail(&b, MG_ERR_FORMAT, "version", "version 7");
    bb_u32(&b, GGUF_MAGIC), bb_u32(&b, 0x03000000), bb_u64(&b, 0), bb_u64(&b, 0);
    expect_fail(&b, MG_ERR_UNSUPPORTED, "big-endian", "big-endian");
    bb_u32(&b, GGUF_MAGIC), bb_u32(&b, 3), bb_u64(&b, 0);
    expect_fail(&b, MG_ERR_FORMAT, "header", "no kv count");
    bb_hdr(&b, 0, UINT64_MAX);
    expect_fail(&b, MG_ERR_FORMAT, "key count", "huge n_kv");
    bb_hdr(&b, 1ull << 62, 0);
    expect_fail(&b, MG_ERR_FORMAT, "tensor count", "huge n_tensors");
    bb_hdr(&b, 0, 1), bb_u64(&b, UINT64_MAX), bb_zeros(&b, 16);
    expect_fail(&b, MG_ERR_FORMAT, "string length", "huge key length");
    bb_hdr(&b, 0, 1), bb_str(&b, "k"), bb_u32(&b, GGUF_TYPE_STRING), bb_u64(&b, 100), bb_put(&b, "abc", 3);
    expect_fail(&b, MG_ERR_FORMAT, "string length", "string past end");
    bb_hdr(&b, 0, 1), bb_str(&b, "k"), bb_u32(&b, 13), bb_u32(&b, 0);
    expect_fail(&b, MG_ERR_FORMAT, "value type", "kv type 13");
    bb_hdr(&b, 0, 1), bb_str(&b, "k"), bb_u32(&b, 0xffffffffu), bb_u32(&b, 0);
    expect_fail(&b, MG_ERR_FORMAT, "value type", "kv type -1");
    bb_hdr(&b, 0, 1), bb_str(&b, "k"), bb_u32(&b, GGUF_TYPE_ARRAY), bb_u32(&b, GGUF_TYPE_ARRAY), bb_u64(&b, 1),
        bb_u32(&b, GGUF_TYPE_UINT8), bb_u64(&b, 1), bb_zeros(&b, 8);
    expect_fail(&b, MG_ERR_FORMAT, "nested", "array of arrays");
    bb_hdr(&b, 0, 1), bb_str(&b, "k"), bb_u32(&b, GGUF_TYPE_ARRAY), bb_u32(&b, 99), bb_u64(&b, 1), bb_zeros(&b, 8);
    expect_fail(&b, MG_ERR_FORMAT, "element type", "array elem type 99");
    bb_hdr(&b, 0, 1), bb_str(&b, "k"), bb_u32(&b, GGUF_TYPE_ARRAY), bb_u32(&b, GGUF_TYPE_UINT64),
        bb_u64(&b, 1ull << 61), bb_zeros(&b, 64);
    expect_fail(&b, MG_ERR_FORMAT, "exceed", "array count x size overflow");
    bb_hdr(&b, 0, 1), bb_str(&b, "k"), bb_u32(&b, GGUF_TYPE_ARRAY), bb_u32(&b, GGUF_TYPE_UINT32),
        bb_u64(&b, 5), bb_zeros(&b, 19);
    expect_fail(&b, MG_ERR_FORMAT, "exceed", "array one byte short");
    bb_hdr(&b, 0, 1), bb_str(&b, "k"), bb_u32(&b, GGUF_TYPE_ARRAY), bb_u32(&b, GGUF_TYPE_STRING),
        bb_u64(&b, 1ull << 40), bb_zeros(&b, 64);
    expect_fail(&b, MG_ERR_FORMAT, "strings", "string array count");
    bb_hdr(&b, 0, 2), bb_kv_u32(&b, "dup", 1), bb_kv_u32(&b, "dup", 2);
    expect_fail(&b, MG_ERR_FORMAT, "duplicate key", "duplicate key");
    bb_hdr(&b, 0, 1), bb_str(&b, "general.alignment"), bb_u32(&b, GGUF_TYPE_UINT64), bb_u64(&b, 64);
    expect_fail(&b, MG_ERR_FORMAT, "alignment", "alignment u64");
    bb_hdr(&b, 0, 1), bb_kv_u32(&b, "general.alignment", 0);
    expect_fail(&b, MG_ERR_FORMAT, "power of two", "alignment 0");
    bb_hdr(&b, 0, 1), bb_kv_u32(&b, "general.alignment", 48);
    expect_fail(&b, MG_ERR_FORMAT, "power of two", "alignment 48");

    /* tensor infos (data section: one f32 [32] tensor of 128 bytes at offset 0) */
#define TENSOR_CASE(WORD, LABEL, ...)                                                              \
    bb_hdr(&b, 1, 0);                                                                              \
    __VA_ARGS__;                                                                                   \
    bb_pad(&b, 32);                                                                                \
    bb_zeros(&b, 256);                                                                             \
    expect_fail(&b, MG_ERR_FORMAT, WORD, LABEL)
    TENSOR_CASE("dimensions", "n_dims 0", bb_ti(&b, "t", 0, ne1, MG_TYPE_F32, 0));
    TENSOR_CASE("dimensions", "n_dims 5", bb_ti(&b, "t", 5, (uint64_t[5]){32, 1, 1, 1, 1}, MG_TYPE_F32, 0));
    TENSOR_CASE("negative", "ne -1", bb_ti(&b, "t", 2, (uint64_t[2]){32, (uint64_t)-1}, MG_TYPE_F32, 0));
    TENSOR_CASE("overflow", "nelements overflow",
                bb_ti(&b, "t", 3, (uint64_t[3]){1ull << 32, 1ull << 31, 4}, MG_TYPE_F32, 0));
    TENSOR_CASE("overflow", "nbytes overflow",
                bb_ti(&b, "t", 2, (uint64_t[2]){1ull << 32, 1ull << 30}, MG_TYPE_F32, 0));
    TENSOR_CASE("unknown tensor type", "type 99", bb_ti(&b, "t", 1, ne1, 99, 0));
    TENSOR_CASE("unknown tensor type", "type 4 (removed)", bb_ti(&b, "t", 1, ne1, 4, 0));
    TENSOR_CASE("unknown tensor type", "type 2^31", bb_ti(&b, "t", 1, ne1, 0x80000000u, 0));
    TENSOR_CASE("block size", "q8_0 ne0 33", bb_ti(&b, "t", 2, (uint64_t[2]){33, 1}, MG_TYPE_Q8_0, 0));
    TENSOR_CASE("multiple of the alignment", "offset 16", bb_ti(&b, "t", 1, ne1, MG_TYPE_F32, 16));
    TENSOR_CASE("past file size", "offset past end", bb_ti(&b, "t", 1, ne1, MG_TYPE_F32, 1ull << 40));
    TENSOR_CASE("past file size", "offset near 2^64", bb_ti(&b, "t", 1, ne1, MG_TYPE_F32, UINT64_MAX - 31));
    TENSOR_CASE("past file size", "data ends past end", bb_ti(&b, "t", 2, (uint64_t[2]){32, 3}, MG_TYPE_F32, 0));
    TENSOR_CASE("string length", "name past end", bb_u64(&b, 1ull << 50));
#undef TENSOR_CASE
    /* the message names the tensor */
    bb_hdr(&b, 1, 0), bb_ti(&b, "blk.0.attn_q.weight", 1, ne1, MG_TYPE_F32, 1024), bb_pad(&b, 32), bb_zeros(&b, 128);
    expect_fail(&b, MG_ERR_FORMAT, "tensor 'blk.0.attn_q.weight': data ends at", "named tensor");
    bb_hdr(&b, 2, 0), bb_ti(&b, "t", 1, ne1, MG_TYPE_F32, 0), bb_ti(&b, "t", 1, ne1, MG_TYPE_F32, 128),
        bb_pad(&b, 32), bb_zeros(&b, 256);
    expect_fail(&b, MG_ERR_FORMAT, "duplicate tensor", "duplicate tensor name");
    bb_hdr(&b, 2, 0), bb_ti(&b, "a", 1, ne1, MG_TYPE_F32, 0), bb_ti(&b, "b", 2, ne2, MG_TYPE_F32, 64),
        bb_pad(&b, 32), bb_zeros(&b, 512);
    expect_fail(&b, MG_ERR_FORMAT, "overlaps", "overlapping tensors");
    bb_hdr(&b, 1, 0), bb_ti(&b, "a", 1, ne1, MG_TYPE_F32, 0);
    bb_put(&b, "", 1);
    expect_fail(&b, MG_ERR_FORMAT, "data section", "header padding missing");

    /* controls: the same builders make valid files */
    bb_hdr(&b, 2, 1), bb_kv_u32(&b, "general.alignment", 64), bb_ti(&b, "a", 1, ne1, MG_TYPE_F32, 0),
        bb_ti(&b, "b", 2, ne2, MG_TYPE_Q8_0, 128), bb_pad(&b, 64), bb_zeros(&b, 128 + 68);
    CHECK_MSG(try_open(&b, err, sizeof err) == MG_OK, "valid control: %s", err);
    free(b.p);
    memset(&b, 0, sizeof b);
    bb_u32(&b, GGUF_MAGIC), bb_u32(&b, 2), bb_u64(&b, 0), bb_u64(&b, 1), bb_kv_u32(&b, "x", 1), bb_pad(&b, 32);
    CHECK_MSG(try_open(&b, err, sizeof err) == MG_OK, "version 2 control: %s", err);
    free(b.p);
}

TEST(gguf_open_errors) {
    char err[256] = "", path[4200];
    gguf_file *f = (gguf_file *)1;
    CHECK(gguf_open(&f, "/nonexistent/dir/x.gguf", err, sizeof err) == MG_ERR_IO && f == NULL);
    CHECK(strstr(err, "x.gguf") != NULL);
    CHECK(gguf_open(&f, test_data_dir(), err, sizeof err) == MG_ERR_IO);
    snprintf(path, sizeof path, "%s/gguf_empty.gguf", test_data_dir());
    FILE *fp = fopen(path, "wb");
    if (fp) fclose(fp);
    CHECK(gguf_open(&f, path, err, sizeof err) == MG_ERR_FORMAT && strstr(err, "empty"));
    CHECK(gguf_open_buffer(&f, NULL, 0, err, sizeof err) == MG_ERR_FORMAT);
    CHECK(gguf_open_buffer(NULL, "x", 1, err, sizeof err) == MG_ERR_INVALID_ARG);
    gguf_close(NULL);
    gguf_writer_free(NULL);
}

/* ==== minigpt info ==== */

TEST(gguf_info_cli) {
    const char *bin = getenv("MG_BIN");
    if (!bin || access(bin, X_OK) != 0) SKIP("MG_BIN not set to the minigpt binary");
    if (!ref_dir()) SKIP("reference writer failed");
    const char *d = test_data_dir();
    char out[4200];
    snprintf(out, sizeof out, "%s/gguf_info.txt", d);
    CHECK_EQ_INT(test_run("'%s' info '%s/ref_a64.gguf' > '%s' 2>&1", bin, ref_dir(), out), 0);
    char *txt = test_read_file(out, NULL);
    CHECK(txt != NULL);
    if (txt) {
        CHECK(strstr(txt, "general.architecture") && strstr(txt, "llama"));
        CHECK(strstr(txt, "blk.0.ffn_up.weight") && strstr(txt, "q8_0"));
        CHECK(strstr(txt, "4000000000") && strstr(txt, "-100"));
        CHECK(strstr(txt, "alignment") && strstr(txt, "64"));
        free(txt);
    }
    /* --json is valid JSON with the right counts (checked by Python's json module) */
    snprintf(out, sizeof out, "%s/gguf_info.json", d);
    CHECK_EQ_INT(test_run("'%s' info --json '%s/ref_a64.gguf' > '%s'", bin, ref_dir(), out), 0);
    CHECK_EQ_INT(test_run("'%s' -c \"import json,sys; j=json.load(open(sys.argv[1])); "
                          "assert len(j['tensors'])==5 and len(j['metadata'])==29, j.keys(); "
                          "assert j['tensors'][4]['shape']==[32,2]; assert j['tensors'][4]['type']=='q8_0'; "
                          "m={x['key']:x for x in j['metadata']}; assert m['t.u64']['value']==2**63+5; "
                          "assert m['t.str']['value']=='h\\u00e9llo \\u2581world\\n', m['t.str']; "
                          "assert m['a.str']['value'][:3]==['a','','\\u2581b<0x0A>']\" '%s'",
                          test_python(), out),
                 0);
    /* missing file: exit 1, one line on stderr */
    snprintf(out, sizeof out, "%s/gguf_info_err.txt", d);
    CHECK_EQ_INT(test_run("'%s' info '%s/does-not-exist.gguf' 2> '%s' >/dev/null", bin, d, out), 1);
    size_t n = 0;
    txt = test_read_file(out, &n);
    if (txt) {
        int lines = 0;
        for (size_t i = 0; i < n; i++) lines += txt[i] == '\n';
        CHECK_MSG(lines == 1 && strstr(txt, "does-not-exist"), "stderr: %s", txt);
        free(txt);
    } else {
        CHECK(0);
    }
    /* corrupt file: exit 1 */
    char bad[4200];
    snprintf(bad, sizeof bad, "%s/gguf_corrupt.gguf", d);
    FILE *fp = fopen(bad, "wb");
    if (fp) {
        fwrite("GGUF\3\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\0\0\0\0\0\0\0\0", 1, 24, fp);
        fclose(fp);
    }
    CHECK_EQ_INT(test_run("'%s' info '%s' 2>/dev/null >/dev/null", bin, bad), 1);
    /* usage errors: exit 2 */
    CHECK_EQ_INT(test_run("'%s' info 2>/dev/null", bin), 2);
    CHECK_EQ_INT(test_run("'%s' info --bogus x 2>/dev/null", bin), 2);
    CHECK_EQ_INT(test_run("'%s' info --help >/dev/null", bin), 0);
}

/* The model mapping carries the transparent-huge-page hint (MADV_HUGEPAGE: "hg" in the VmFlags of
 * its /proc/self/smaps entry), so that a file read for the first time lands in 2 MiB page-cache
 * folios (docs/PERFORMANCE.md, image encoding). */
TEST(gguf_mapping_asks_for_huge_pages) {
    if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) != 0) SKIP("no transparent huge pages here");
    char path[4200], err[256] = "";
    snprintf(path, sizeof path, "%s/gguf_hugepage.gguf", test_data_dir());
    gguf_writer *w = gguf_writer_create();
    CHECK(w != NULL);
    if (!w) return;
    static float data[1 << 16];
    int64_t ne[1] = {1 << 16};
    CHECK(gguf_writer_add_tensor(w, "t", MG_TYPE_F32, 1, ne, data) == MG_OK);
    CHECK(gguf_writer_write_file(w, path, err, sizeof err) == MG_OK);
    gguf_writer_free(w);
    gguf_file *f = NULL;
    CHECK_MSG(gguf_open(&f, path, err, sizeof err) == MG_OK, "%s", err);
    const gguf_tensor *t = f ? gguf_find_tensor(f, "t") : NULL;
    CHECK(t != NULL);
    FILE *sm = fopen("/proc/self/smaps", "r");
    CHECK(sm != NULL);
    bool inside = false, found = false, hinted = false;
    char line[512];
    while (t && sm && fgets(line, sizeof line, sm)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            inside = (uintptr_t)t->data >= lo && (uintptr_t)t->data < hi;
            found |= inside;
        } else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            hinted = strstr(line, " hg") != NULL;
        }
    }
    if (sm) fclose(sm);
    CHECK_MSG(found, "the mapping of %s is not in /proc/self/smaps", path);
    CHECK_MSG(hinted, "the mapping has no MADV_HUGEPAGE hint");
    gguf_close(f);
    remove(path);
}

/* A written GGUF file leaves the page cache (gguf_file_close_written: flushed to disk, then
 * POSIX_FADV_DONTNEED), so that its first mapping reads it back into large folios. mincore() on a
 * fresh mapping, before anything touches it, counts the pages still cached. */
TEST(gguf_written_file_leaves_the_page_cache) {
    char path[4200], err[256] = "";
    snprintf(path, sizeof path, "%s/gguf_written.gguf", test_data_dir());
    struct statfs sf;
    if (statfs(test_data_dir(), &sf) == 0 && sf.f_type == 0x01021994 /* TMPFS_MAGIC */)
        SKIP("the test directory is on tmpfs, where the file is its cache");
    gguf_writer *w = gguf_writer_create();
    CHECK(w != NULL);
    if (!w) return;
    static float data[1 << 20]; /* 4 MiB */
    for (size_t i = 0; i < MG_ARRAY_LEN(data); i++) data[i] = (float)i;
    int64_t ne[1] = {1 << 20};
    CHECK(gguf_writer_add_tensor(w, "t", MG_TYPE_F32, 1, ne, data) == MG_OK);
    CHECK_MSG(gguf_writer_write_file(w, path, err, sizeof err) == MG_OK, "%s", err);
    gguf_writer_free(w);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) return;
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE), n = ((size_t)sb.st_size + pg - 1) / pg;
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    unsigned char *vec = malloc(n);
    CHECK(m != MAP_FAILED && vec);
    size_t resident = 0;
    if (m != MAP_FAILED && vec && mincore(m, (size_t)sb.st_size, vec) == 0)
        for (size_t i = 0; i < n; i++) resident += vec[i] & 1;
    printf("    %zu of %zu pages still cached after writing\n", resident, n);
    CHECK_MSG(resident * 10 <= n, "%zu of %zu pages of the written file are still in the page cache", resident, n);
    if (m != MAP_FAILED) munmap(m, (size_t)sb.st_size);
    free(vec);
    close(fd);
    remove(path);
}
