/*
 * fuzz_pickle.c - libFuzzer target for the restricted unpickler. Each input is unpickled alone
 * (pk_load), then appended to a fixed legacy-torch prefix (magic, protocol, sys_info) and opened
 * as a whole checkpoint, so the main pickle, the storage keys, the storages and the tensor walk
 * all come from the fuzzer; every tensor that validates is read. Invariant: failures explain
 * themselves, successes stay inside the input (ASan).
 */
#include "ckpt.h"

#include <stdlib.h>
#include <string.h>

/* The three small pickles a legacy torch file starts with (magic, 1001, sys_info). */
static const uint8_t legacy_prefix[] = {
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
    0x80, 0x02, 0x4d, 0xe9, 0x03, 0x2e,
    0x80, 0x02, 0x7d, 0x28, 0x58, 0x0d, 0x00, 0x00, 0x00, 'l', 'i', 't', 't', 'l', 'e', '_', 'e', 'n',
    'd', 'i', 'a', 'n', 0x88, 0x75, 0x2e};

static volatile float sink;

/* libFuzzer entry point: one input = one pickle stream (plus, for the legacy pass, what follows it). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256] = "";
    pk_ctx *ctx = pk_new();
    pk_obj *root;
    size_t used;
    if (pk_load(ctx, data, size, &used, &root, err, sizeof err) != MG_OK && !err[0]) abort();
    pk_free(ctx);

    uint8_t *buf = malloc(sizeof legacy_prefix + size);
    if (!buf) return 0;
    memcpy(buf, legacy_prefix, sizeof legacy_prefix);
    memcpy(buf + sizeof legacy_prefix, data, size);
    ckpt_file *f;
    err[0] = 0;
    if (ckpt_open_memory(&f, buf, sizeof legacy_prefix + size, err, sizeof err) == MG_OK) {
        for (int64_t i = 0; i < ckpt_n_tensors(f); i++) {
            const ckpt_tensor *t = ckpt_tensor_at(f, i);
            if (t->n_elements > (1 << 20)) continue;
            float *x = malloc((size_t)t->n_elements * sizeof(float) + 1);
            if (x && ckpt_read_f32(f, t, x, t->n_elements, err, sizeof err) == MG_OK && t->n_elements)
                sink += x[t->n_elements - 1];
            free(x);
        }
        ckpt_close(f);
    } else if (!err[0]) {
        abort();
    }
    free(buf);
    return 0;
}
