/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader: opens the input as an in-memory GGUF file
 * and, when it validates, touches every key, string, array element and tensor byte through the
 * public views (so ASan flags any view that leaves the buffer) and runs the typed getters.
 * Invariant checked: gguf_open_buffer either fails with a message or yields views inside the input.
 */
#include "gguf.h"

#include <stdlib.h>
#include <string.h>

static volatile unsigned sink;

/* libFuzzer entry point: one input = one candidate GGUF file. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file *f = NULL;
    char err[256];
    err[0] = 0;
    if (gguf_open_buffer(&f, data, size, err, sizeof err) != MG_OK) {
        if (!err[0]) abort(); /* every failure must explain itself */
        return 0;
    }
    unsigned sum = 0;
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        for (uint64_t j = 0; j < kv->key.len; j++) sum += (uint8_t)kv->key.ptr[j];
        for (uint64_t j = 0; j < kv->n; j++) {
            if (kv->arr_type == GGUF_TYPE_STRING) {
                const gguf_str s = kv->strs[j];
                for (uint64_t k = 0; k < s.len; k++) sum += (uint8_t)s.ptr[k];
            } else {
                sum += (unsigned)gguf_arr_i64(kv, j) + (unsigned)(gguf_arr_f64(kv, j) != 0);
            }
        }
        char *key = gguf_str_dup(kv->key);
        if (key) {
            uint32_t u;
            int64_t v;
            float fl;
            bool b;
            gguf_str s;
            const gguf_kv *arr;
            sum += gguf_get_u32(f, key, &u, err, sizeof err) == MG_OK;
            sum += gguf_get_i64(f, key, &v, err, sizeof err) == MG_OK;
            sum += gguf_get_f32(f, key, &fl, err, sizeof err) == MG_OK;
            sum += gguf_get_bool(f, key, &b, err, sizeof err) == MG_OK;
            sum += gguf_get_str(f, key, &s, err, sizeof err) == MG_OK;
            sum += gguf_get_arr(f, key, GGUF_TYPE_COUNT, &arr, err, sizeof err) == MG_OK;
            free(key);
        }
    }
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        const uint8_t *p = t->data;
        for (uint64_t j = 0; j < t->nbytes; j++) sum += p[j];
        char *name = gguf_str_dup(t->name);
        if (name && !memchr(t->name.ptr, 0, t->name.len) && gguf_find_tensor(f, name) != t) abort();
        free(name);
    }
    sink = sum;
    gguf_close(f);
    return 0;
}
