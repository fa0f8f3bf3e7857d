/*
 * safetensors.c - .safetensors files: an 8-byte little-endian header length, a JSON header
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}} parsed with
 * jansson, then the data, tensors contiguous and row-major. Every offset, size and dtype is
 * validated; tensors may not overlap.
 */
#include "ckpt.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define ST_MAX_HEADER ((uint64_t)100 << 20)

static int dtype_of(const char *s) {
    static const struct { const char *name; int type; } map[] = {
        {"F64", MG_TYPE_F64}, {"F32", MG_TYPE_F32}, {"F16", MG_TYPE_F16}, {"BF16", MG_TYPE_BF16},
        {"I64", MG_TYPE_I64}, {"I32", MG_TYPE_I32}, {"I16", MG_TYPE_I16}, {"I8", MG_TYPE_I8},
        {"U8", CKPT_TYPE_U8}, {"BOOL", CKPT_TYPE_BOOL},
    };
    for (size_t i = 0; i < MG_ARRAY_LEN(map); i++)
        if (strcmp(s, map[i].name) == 0) return map[i].type;
    return -1;
}

typedef struct { uint64_t begin, end; } span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

/* Validates one header entry and adds its storage and tensor. */
static mg_status add_entry(ckpt_file *f, int32_t part, const char *name, json_t *v, const uint8_t *base,
                           uint64_t data_len, span *sp, char *err, size_t err_len) {
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) ||
        json_array_size(jo) != 2)
        return mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: bad header entry for '%.100s'", name);
    int type = dtype_of(json_string_value(jd));
    if (type < 0)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "safetensors: '%.100s' has unsupported dtype '%.20s'",
                      name, json_string_value(jd));
    if (json_array_size(js) > CKPT_MAX_DIMS)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "safetensors: '%.100s' has more than %d dims", name,
                      CKPT_MAX_DIMS);
    ckpt_tensor t;
    memset(&t, 0, sizeof t);
    t.type = type;
    t.n_dims = (int)json_array_size(js);
    uint64_t numel = 1, nbytes;
    for (int i = 0; i < t.n_dims; i++) {
        json_t *d = json_array_get(js, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0 ||
            __builtin_mul_overflow(numel, (uint64_t)json_integer_value(d), &numel))
            return mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: '%.100s' has a bad shape", name);
        t.shape[i] = json_integer_value(d);
    }
    int64_t stride = 1;
    for (int i = t.n_dims - 1; i >= 0; i--) {
        t.stride[i] = stride;
        stride *= t.shape[i] ? t.shape[i] : 1; /* no overflow: bounded by numel above */
    }
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
        json_integer_value(je) < json_integer_value(jb) || (uint64_t)json_integer_value(je) > data_len)
        return mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: '%.100s' has bad data_offsets", name);
    sp->begin = (uint64_t)json_integer_value(jb);
    sp->end = (uint64_t)json_integer_value(je);
    if (__builtin_mul_overflow(numel, (uint64_t)ckpt_type_size(type), &nbytes) || nbytes != sp->end - sp->begin)
        return mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: '%.100s' data size does not match its shape", name);
    ckpt_storage cs = {.data = base + sp->begin, .part = part, .nbytes = nbytes, .type = type};
    t.storage = ckpt_add_storage(f, &cs);
    if (t.storage < 0) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    return ckpt_add_tensor(f, name, &t, err, err_len);
}

mg_status ckpt_load_safetensors(ckpt_file *f, int32_t part, char *err, size_t err_len) {
    size_t size;
    const uint8_t *data = ckpt_part_data(f, part, &size);
    if (size < 8) return mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: file too short");
    uint64_t hlen = 0;
    for (int b = 7; b >= 0; b--) hlen = (hlen << 8) | data[b];
    if (hlen > ST_MAX_HEADER || hlen > size - 8)
        return mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: header length %llu is out of range",
                      (unsigned long long)hlen);
    json_error_t je;
    json_t *root = json_loadb((const char *)data + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) return mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: header JSON: %s", je.text);
    mg_status st = MG_OK;
    span *spans = NULL;
    if (!json_is_object(root)) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: header is not a JSON object");
        goto done;
    }
    spans = malloc((json_object_size(root) + 1) * sizeof *spans);
    if (!spans) {
        st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
        goto done;
    }
    const uint8_t *base = data + 8 + hlen;
    uint64_t data_len = size - 8 - hlen;
    size_t n = 0;
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v) {
        if (strcmp(name, "__metadata__") == 0) {
            if (!json_is_object(v)) {
                st = mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: __metadata__ is not an object");
                goto done;
            }
            continue;
        }
        if ((st = add_entry(f, part, name, v, base, data_len, &spans[n], err, err_len)) != MG_OK) goto done;
        if (spans[n].end > spans[n].begin) n++; /* empty tensors occupy no bytes */
    }
    qsort(spans, n, sizeof *spans, cmp_span);
    for (size_t i = 1; i < n; i++) {
        if (spans[i].begin < spans[i - 1].end) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "safetensors: tensors overlap at data offset %llu",
                        (unsigned long long)spans[i].begin);
            goto done;
        }
    }
done:
    free(spans);
    json_decref(root);
    return st;
}
