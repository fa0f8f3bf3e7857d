/*
 * gguf.c - GGUF v3 (and v2) reader over a read-only mmap or a caller buffer, and the streaming
 * writer. Invariant: the reader validates every count, length, type, shape and offset through a
 * bounded cursor before storing it, so after gguf_open succeeds every view it hands out (key,
 * string, array, tensor data) lies inside the buffer. The reader never copies tensor data and
 * never writes to the mapping. Big-endian GGUF files are refused, not byte-swapped.
 */
#include "gguf.h"
#include "quant.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Hard caps: no legitimate string is near 1 GiB; an alignment above 1 GiB is nonsense. */
#define GGUF_MAX_STRING (1ull << 30)
#define GGUF_MAX_ALIGNMENT (1u << 30)
#define NAME_SHOWN 64 /* bytes of a key / tensor name quoted in messages */

/* ==== Reader ==== */

struct gguf_file {
    const uint8_t *base;
    size_t size;
    bool mapped;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;
    int64_t n_kv;
    gguf_kv *kvs;     /* [n_kv] */
    int64_t n_tensors;
    gguf_tensor *tensors; /* [n_tensors] */
    int64_t *kv_index;     /* open-addressing hash of key -> kv index (-1 empty) [kv_cap] */
    size_t kv_cap;
    int64_t *tensor_index; /* same for tensor names [tensor_cap] */
    size_t tensor_cap;
};

typedef struct {
    const uint8_t *base;
    size_t size;
    size_t pos;
} cursor;

static bool cur_has(const cursor *c, uint64_t n) { return n <= (uint64_t)(c->size - c->pos); }

static uint64_t cur_left(const cursor *c) { return (uint64_t)(c->size - c->pos); }

static bool cur_u32(cursor *c, uint32_t *v) {
    if (!cur_has(c, 4)) return false;
    const uint8_t *p = c->base + c->pos;
    *v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    c->pos += 4;
    return true;
}

static bool cur_u64(cursor *c, uint64_t *v) {
    uint32_t lo, hi;
    if (!cur_has(c, 8)) return false;
    cur_u32(c, &lo);
    cur_u32(c, &hi);
    *v = (uint64_t)lo | (uint64_t)hi << 32;
    return true;
}

static size_t type_size(gguf_type t) {
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

static int shown(gguf_str s) { return (int)MG_MIN(s.len, (uint64_t)NAME_SHOWN); }

static uint64_t hash_str(const char *p, uint64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

static bool str_eq2(gguf_str a, gguf_str b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, (size_t)a.len) == 0);
}

/* Reads a string view; on failure returns false with a message naming what. */
static bool cur_str(cursor *c, gguf_str *s, const char *what, char *err, size_t err_len) {
    uint64_t at = c->pos, n;
    if (!cur_u64(c, &n)) {
        mg_err(err, err_len, MG_ERR_FORMAT, "%s: string length at offset %llu past end of file",
               what, (unsigned long long)at);
        return false;
    }
    if (n > GGUF_MAX_STRING || !cur_has(c, n)) {
        mg_err(err, err_len, MG_ERR_FORMAT,
               "%s: string length %llu at offset %llu exceeds the %llu bytes left in the file", what,
               (unsigned long long)n, (unsigned long long)at, (unsigned long long)cur_left(c));
        return false;
    }
    s->ptr = (const char *)c->base + c->pos;
    s->len = n;
    c->pos += (size_t)n;
    return true;
}

/* Builds an index table of cap slots (power of two >= 2n) for n names; returns NULL on OOM. */
static int64_t *index_alloc(int64_t n, size_t *cap) {
    size_t c = 16;
    while (c < (size_t)n * 2) c <<= 1;
    int64_t *t = malloc(c * sizeof *t);
    if (!t) return NULL;
    for (size_t i = 0; i < c; i++) t[i] = -1;
    *cap = c;
    return t;
}

/* Looks name up in an index; returns the slot holding it or the empty slot where it goes. */
static size_t index_slot(const int64_t *idx, size_t cap, gguf_str name, const void *items,
                         size_t stride, size_t name_off, int64_t *found) {
    size_t m = cap - 1, s = (size_t)hash_str(name.ptr, name.len) & m;
    for (;;) {
        int64_t v = idx[s];
        if (v < 0) {
            *found = -1;
            return s;
        }
        const gguf_str *other = (const gguf_str *)((const char *)items + (size_t)v * stride + name_off);
        if (str_eq2(*other, name)) {
            *found = v;
            return s;
        }
        s = (s + 1) & m;
    }
}

static mg_status parse_kv(gguf_file *f, cursor *c, int64_t i, char *err, size_t err_len) {
    gguf_kv *kv = &f->kvs[i];
    char what[64];
    snprintf(what, sizeof what, "key %lld", (long long)i);
    if (!cur_str(c, &kv->key, what, err, err_len)) return MG_ERR_FORMAT;
    int64_t dup;
    size_t slot = index_slot(f->kv_index, f->kv_cap, kv->key, f->kvs, sizeof *f->kvs,
                             offsetof(gguf_kv, key), &dup);
    if (dup >= 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "duplicate key '%.*s' (entries %lld and %lld)",
                      shown(kv->key), kv->key.ptr, (long long)dup, (long long)i);
    uint32_t t;
    if (!cur_u32(c, &t))
        return mg_err(err, err_len, MG_ERR_FORMAT, "key '%.*s': value type past end of file",
                      shown(kv->key), kv->key.ptr);
    if (t >= GGUF_TYPE_COUNT)
        return mg_err(err, err_len, MG_ERR_FORMAT, "key '%.*s': invalid value type %u",
                      shown(kv->key), kv->key.ptr, t);
    kv->type = (gguf_type)t;
    kv->arr_type = kv->type;
    kv->n = 1;
    if (kv->type == GGUF_TYPE_ARRAY) {
        uint32_t et;
        uint64_t n;
        if (!cur_u32(c, &et) || !cur_u64(c, &n))
            return mg_err(err, err_len, MG_ERR_FORMAT, "key '%.*s': array header past end of file",
                          shown(kv->key), kv->key.ptr);
        if (et == GGUF_TYPE_ARRAY)
            return mg_err(err, err_len, MG_ERR_FORMAT,
                          "key '%.*s': nested arrays (array of array) are not supported",
                          shown(kv->key), kv->key.ptr);
        if (et >= GGUF_TYPE_COUNT)
            return mg_err(err, err_len, MG_ERR_FORMAT, "key '%.*s': invalid array element type %u",
                          shown(kv->key), kv->key.ptr, et);
        kv->arr_type = (gguf_type)et;
        kv->n = n;
    }
    kv->data = c->base + c->pos;
    uint64_t left = cur_left(c);
    if (kv->arr_type == GGUF_TYPE_STRING) {
        /* each string takes at least its 8-byte length: bounds the allocation by the file size */
        if (kv->n > left / 8)
            return mg_err(err, err_len, MG_ERR_FORMAT,
                          "key '%.*s': %llu strings cannot fit in the %llu bytes left",
                          shown(kv->key), kv->key.ptr, (unsigned long long)kv->n,
                          (unsigned long long)left);
        kv->strs = malloc((size_t)MG_MAX(kv->n, 1) * sizeof *kv->strs);
        if (!kv->strs) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory reading key strings");
        snprintf(what, sizeof what, "key '%.*s'", (int)MG_MIN(kv->key.len, 40), kv->key.ptr);
        for (uint64_t j = 0; j < kv->n; j++)
            if (!cur_str(c, &kv->strs[j], what, err, err_len)) return MG_ERR_FORMAT;
    } else {
        uint64_t es = type_size(kv->arr_type);
        if (kv->n > left / es)
            return mg_err(err, err_len, MG_ERR_FORMAT,
                          "key '%.*s': %llu values of %llu bytes exceed the %llu bytes left",
                          shown(kv->key), kv->key.ptr, (unsigned long long)kv->n,
                          (unsigned long long)es, (unsigned long long)left);
        c->pos += (size_t)(kv->n * es);
    }
    f->kv_index[slot] = i;
    return MG_OK;
}

static mg_status parse_alignment(gguf_file *f, char *err, size_t err_len) {
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    if (!kv) return MG_OK;
    if (kv->type != GGUF_TYPE_UINT32)
        return mg_err(err, err_len, MG_ERR_FORMAT, "general.alignment has type %s, expected u32",
                      gguf_type_name(kv->type));
    uint32_t a;
    memcpy(&a, kv->data, 4);
    if (a == 0 || (a & (a - 1)) != 0 || a > GGUF_MAX_ALIGNMENT)
        return mg_err(err, err_len, MG_ERR_FORMAT,
                      "general.alignment %u is not a nonzero power of two (at most 2^30)", a);
    f->alignment = a;
    return MG_OK;
}

static mg_status parse_tensor_info(gguf_file *f, cursor *c, int64_t i, char *err, size_t err_len) {
    gguf_tensor *t = &f->tensors[i];
    char what[64];
    snprintf(what, sizeof what, "tensor %lld name", (long long)i);
    if (!cur_str(c, &t->name, what, err, err_len)) return MG_ERR_FORMAT;
    int n = shown(t->name);
    const char *nm = t->name.ptr;
    int64_t dup;
    size_t slot = index_slot(f->tensor_index, f->tensor_cap, t->name, f->tensors, sizeof *f->tensors,
                             offsetof(gguf_tensor, name), &dup);
    if (dup >= 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "duplicate tensor name '%.*s' (tensors %lld and %lld)",
                      n, nm, (long long)dup, (long long)i);
    uint32_t nd;
    if (!cur_u32(c, &nd))
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor '%.*s': dimension count past end of file", n, nm);
    if (nd < 1 || nd > GGUF_MAX_DIMS)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor '%.*s': %u dimensions, expected 1 to %d",
                      n, nm, nd, GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    int64_t nel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        uint64_t v = 1;
        if (d < (int)nd && !cur_u64(c, &v))
            return mg_err(err, err_len, MG_ERR_FORMAT, "tensor '%.*s': shape past end of file", n, nm);
        if (v > (uint64_t)INT64_MAX)
            return mg_err(err, err_len, MG_ERR_FORMAT, "tensor '%.*s': dimension %d is negative (%lld)",
                          n, nm, d, (long long)(int64_t)v);
        t->ne[d] = (int64_t)v;
        if (__builtin_mul_overflow(nel, t->ne[d], &nel))
            return mg_err(err, err_len, MG_ERR_FORMAT,
                          "tensor '%.*s': element count overflows (shape %lld x %lld x ...)", n, nm,
                          (long long)t->ne[0], (long long)t->ne[1]);
    }
    uint32_t ty;
    if (!cur_u32(c, &ty))
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor '%.*s': type past end of file", n, nm);
    const mg_type_traits *tr = mg_get_type_traits((int)MG_MIN(ty, (uint32_t)INT32_MAX));
    if (!tr)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor '%.*s': unknown tensor type %u", n, nm, ty);
    t->type = (int)ty;
    if (t->ne[0] % tr->blck_size != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT,
                      "tensor '%.*s': row length %lld is not a multiple of the %s block size %lld", n,
                      nm, (long long)t->ne[0], tr->name, (long long)tr->blck_size);
    uint64_t nb;
    if (__builtin_mul_overflow((uint64_t)(nel / tr->blck_size), (uint64_t)tr->type_size, &nb))
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor '%.*s': byte size overflows", n, nm);
    t->nbytes = nb;
    if (!cur_u64(c, &t->offset))
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor '%.*s': data offset past end of file", n, nm);
    if (t->offset % f->alignment != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT,
                      "tensor '%.*s': data offset %llu is not a multiple of the alignment %llu", n, nm,
                      (unsigned long long)t->offset, (unsigned long long)f->alignment);
    f->tensor_index[slot] = i;
    return MG_OK;
}

static int cmp_by_offset(const void *a, const void *b) {
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Checks data ranges against the file and against each other; sets the data pointers. */
static mg_status check_tensor_data(gguf_file *f, char *err, size_t err_len) {
    uint64_t avail = (uint64_t)f->size - f->data_offset;
    for (int64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            uint64_t end;
            if (__builtin_add_overflow(f->data_offset, t->offset, &end) ||
                __builtin_add_overflow(end, t->nbytes, &end))
                end = UINT64_MAX;
            return mg_err(err, err_len, MG_ERR_FORMAT,
                          "tensor '%.*s': data ends at %llu past file size %llu", shown(t->name),
                          t->name.ptr, (unsigned long long)end, (unsigned long long)f->size);
        }
        t->data = f->base + f->data_offset + t->offset;
    }
    if (f->n_tensors < 2) return MG_OK;
    const gguf_tensor **order = malloc((size_t)f->n_tensors * sizeof *order);
    if (!order) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory checking tensor data");
    for (int64_t i = 0; i < f->n_tensors; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n_tensors, sizeof *order, cmp_by_offset);
    mg_status st = MG_OK;
    for (int64_t i = 1; i < f->n_tensors && st == MG_OK; i++) {
        const gguf_tensor *a = order[i - 1], *b = order[i];
        if (a->nbytes && b->nbytes && a->offset + a->nbytes > b->offset)
            st = mg_err(err, err_len, MG_ERR_FORMAT, "tensor '%.*s': data overlaps tensor '%.*s'",
                        shown(b->name), b->name.ptr, shown(a->name), a->name.ptr);
    }
    free(order);
    return st;
}

static mg_status parse(gguf_file *f, char *err, size_t err_len) {
    cursor c = {f->base, f->size, 0};
    uint32_t magic;
    if (!cur_u32(&c, &magic))
        return mg_err(err, err_len, MG_ERR_FORMAT, "not a GGUF file: %zu bytes, too short for the magic",
                      f->size);
    if (magic != GGUF_MAGIC)
        return mg_err(err, err_len, MG_ERR_FORMAT, "not a GGUF file: bad magic 0x%08x", magic);
    if (!cur_u32(&c, &f->version))
        return mg_err(err, err_len, MG_ERR_FORMAT, "truncated header: no version");
    if (f->version == 1)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED,
                      "GGUF version 1 is obsolete and not supported; convert the file to version 3");
    if (f->version == 0x02000000u || f->version == 0x03000000u)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "big-endian GGUF files are not supported");
    if (f->version != 2 && f->version != 3)
        return mg_err(err, err_len, MG_ERR_FORMAT, "unsupported GGUF version %u (expected 3)", f->version);
    uint64_t nt, nkv;
    if (!cur_u64(&c, &nt) || !cur_u64(&c, &nkv))
        return mg_err(err, err_len, MG_ERR_FORMAT, "truncated header: no tensor/key counts");
    /* smallest kv: 8-byte key length + 4-byte type + 1-byte value; smallest tensor info:
     * 8 + 4 + 8 + 4 + 8 bytes. Counts beyond that cannot be genuine and would size allocations. */
    if (nkv > cur_left(&c) / 13)
        return mg_err(err, err_len, MG_ERR_FORMAT, "key count %llu cannot fit in a %zu-byte file",
                      (unsigned long long)nkv, f->size);
    if (nt > cur_left(&c) / 32)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor count %llu cannot fit in a %zu-byte file",
                      (unsigned long long)nt, f->size);
    f->n_kv = (int64_t)nkv;
    f->n_tensors = (int64_t)nt;
    f->kvs = calloc((size_t)MG_MAX(nkv, 1), sizeof *f->kvs);
    f->tensors = calloc((size_t)MG_MAX(nt, 1), sizeof *f->tensors);
    f->kv_index = index_alloc(f->n_kv, &f->kv_cap);
    f->tensor_index = index_alloc(f->n_tensors, &f->tensor_cap);
    if (!f->kvs || !f->tensors || !f->kv_index || !f->tensor_index)
        return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory for %llu keys and %llu tensors",
                      (unsigned long long)nkv, (unsigned long long)nt);
    mg_status st;
    for (int64_t i = 0; i < f->n_kv; i++)
        if ((st = parse_kv(f, &c, i, err, err_len)) != MG_OK) return st;
    if ((st = parse_alignment(f, err, err_len)) != MG_OK) return st;
    for (int64_t i = 0; i < f->n_tensors; i++)
        if ((st = parse_tensor_info(f, &c, i, err, err_len)) != MG_OK) return st;
    uint64_t end = c.pos;
    f->data_offset = (end + f->alignment - 1) / f->alignment * f->alignment;
    if (f->data_offset > f->size)
        return mg_err(err, err_len, MG_ERR_FORMAT,
                      "truncated file: data section starts at %llu past file size %zu",
                      (unsigned long long)f->data_offset, f->size);
    return check_tensor_data(f, err, err_len);
}

static mg_status open_common(gguf_file **out, gguf_file *f, char *err, size_t err_len) {
    mg_status st = parse(f, err, err_len);
    if (st != MG_OK) {
        gguf_close(f);
        return st;
    }
    *out = f;
    return MG_OK;
}

/* Opens path read-only with mmap and validates it; *out owns the mapping until gguf_close. */
mg_status gguf_open(gguf_file **out, const char *path, char *err, size_t err_len) {
    if (!out || !path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "gguf_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mg_err(err, err_len, MG_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return mg_err(err, err_len, MG_ERR_IO, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return mg_err(err, err_len, MG_ERR_IO, "'%s' is not a regular file", path);
    }
    if (sb.st_size == 0) {
        close(fd);
        return mg_err(err, err_len, MG_ERR_FORMAT, "'%s' is empty, not a GGUF file", path);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return mg_err(err, err_len, MG_ERR_NOMEM, "'%s' is too large to map", path);
    }
    size_t size = (size_t)sb.st_size;
    void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
#ifdef MADV_HUGEPAGE
    /* Ask for transparent huge pages on the mapping: when the file is not cached yet, the kernel
     * then reads it into 2 MiB page-cache folios (physically contiguous), and the weights stream
     * faster from them: the ViT-g 224 encode took 1.73 s instead of 2.15 s (docs/PERFORMANCE.md).
     * Only a hint: the file stays shared with the page cache, and a failure changes nothing. */
    if (p != MAP_FAILED) (void)madvise(p, size, MADV_HUGEPAGE);
#endif
    if (p == MAP_FAILED) return mg_err(err, err_len, MG_ERR_IO, "cannot map '%s': %s", path, strerror(e));
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        munmap(p, size);
        return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    }
    f->base = p;
    f->size = size;
    f->mapped = true;
    return open_common(out, f, err, err_len);
}

/* Validates a GGUF image in a caller buffer; buf must outlive the returned file (not copied). */
mg_status gguf_open_buffer(gguf_file **out, const void *buf, size_t size, char *err, size_t err_len) {
    if (!out || (!buf && size)) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "gguf_open_buffer: NULL argument");
    *out = NULL;
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    f->base = buf ? buf : (const uint8_t *)"";
    f->size = size;
    return open_common(out, f, err, err_len);
}

/* Frees the file, its tables and (for gguf_open) the mapping. Accepts NULL. */
void gguf_close(gguf_file *f) {
    if (!f) return;
    if (f->kvs)
        for (int64_t i = 0; i < f->n_kv; i++) free(f->kvs[i].strs);
    free(f->kvs);
    free(f->tensors);
    free(f->kv_index);
    free(f->tensor_index);
    if (f->mapped) munmap((void *)f->base, f->size);
    free(f);
}

/* Format version (2 or 3). */
uint32_t gguf_version(const gguf_file *f) { return f->version; }
/* Data alignment in bytes (general.alignment or 32). */
uint64_t gguf_alignment(const gguf_file *f) { return f->alignment; }
/* File offset where the tensor data section starts. */
uint64_t gguf_data_offset(const gguf_file *f) { return f->data_offset; }
/* Size in bytes of the file or buffer. */
uint64_t gguf_file_size(const gguf_file *f) { return f->size; }
/* Number of metadata entries. */
int64_t gguf_n_kv(const gguf_file *f) { return f->n_kv; }

/* Entry i in file order, or NULL if out of range. Owned by f. */
const gguf_kv *gguf_kv_at(const gguf_file *f, int64_t i) {
    return f && i >= 0 && i < f->n_kv ? &f->kvs[i] : NULL;
}

/* Entry with this key, or NULL. */
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    if (!f || !key || !f->kv_index) return NULL;
    gguf_str k = {key, strlen(key)};
    int64_t found;
    index_slot(f->kv_index, f->kv_cap, k, f->kvs, sizeof *f->kvs, offsetof(gguf_kv, key), &found);
    return found >= 0 ? &f->kvs[found] : NULL;
}

/* Number of tensors. */
int64_t gguf_n_tensors(const gguf_file *f) { return f->n_tensors; }

/* Tensor i in file order, or NULL if out of range. Owned by f. */
const gguf_tensor *gguf_tensor_at(const gguf_file *f, int64_t i) {
    return f && i >= 0 && i < f->n_tensors ? &f->tensors[i] : NULL;
}

/* Tensor with this name, or NULL. */
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    if (!f || !name || !f->tensor_index) return NULL;
    gguf_str k = {name, strlen(name)};
    int64_t found;
    index_slot(f->tensor_index, f->tensor_cap, k, f->tensors, sizeof *f->tensors,
               offsetof(gguf_tensor, name), &found);
    return found >= 0 ? &f->tensors[found] : NULL;
}

/* True if the view holds exactly the bytes of the C string c. */
bool gguf_str_eq(gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

/* malloc'd NUL-terminated copy of the view (embedded NULs kept), or NULL. Caller frees. */
char *gguf_str_dup(gguf_str s) {
    if (s.len >= SIZE_MAX) return NULL;
    char *p = malloc((size_t)s.len + 1);
    if (!p) return NULL;
    if (s.len) memcpy(p, s.ptr, (size_t)s.len);
    p[s.len] = 0;
    return p;
}

/* Short name of a value type ("u32", "str", "arr"), "?" if unknown. */
const char *gguf_type_name(gguf_type t) {
    static const char *const names[GGUF_TYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64"};
    return (unsigned)t < GGUF_TYPE_COUNT ? names[t] : "?";
}

/* ==== Typed getters ==== */

/* Reads a scalar integer value at p of type t; false for non-integer types. Sets *neg if the
 * value is negative (then *v holds it as int64), else *v holds it as uint64. */
static bool read_int(gguf_type t, const void *p, uint64_t *u, int64_t *s, bool *neg) {
    *neg = false;
    switch (t) {
    case GGUF_TYPE_UINT8: { uint8_t v; memcpy(&v, p, 1); *u = v; return true; }
    case GGUF_TYPE_UINT16: { uint16_t v; memcpy(&v, p, 2); *u = v; return true; }
    case GGUF_TYPE_UINT32: { uint32_t v; memcpy(&v, p, 4); *u = v; return true; }
    case GGUF_TYPE_UINT64: { uint64_t v; memcpy(&v, p, 8); *u = v; return true; }
    case GGUF_TYPE_INT8: { int8_t v; memcpy(&v, p, 1); *s = v; break; }
    case GGUF_TYPE_INT16: { int16_t v; memcpy(&v, p, 2); *s = v; break; }
    case GGUF_TYPE_INT32: { int32_t v; memcpy(&v, p, 4); *s = v; break; }
    case GGUF_TYPE_INT64: { int64_t v; memcpy(&v, p, 8); *s = v; break; }
    default: return false;
    }
    if (*s < 0) *neg = true;
    else *u = (uint64_t)*s;
    return true;
}

static const gguf_kv *need_kv(const gguf_file *f, const char *key, char *err, size_t err_len) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) mg_err(err, err_len, MG_ERR_FORMAT, "missing key '%s'", key);
    return kv;
}

static mg_status wrong_type(const gguf_kv *kv, const char *want, char *err, size_t err_len) {
    return mg_err(err, err_len, MG_ERR_FORMAT, "key '%.*s' has type %s, expected %s", shown(kv->key),
                  kv->key.ptr, gguf_type_name(kv->type), want);
}

static mg_status kv_u32(const gguf_kv *kv, uint32_t *out, char *err, size_t err_len) {
    uint64_t u = 0;
    int64_t s = 0;
    bool neg;
    if (!read_int(kv->type, kv->data, &u, &s, &neg)) return wrong_type(kv, "an integer", err, err_len);
    if (neg || u > UINT32_MAX)
        return mg_err(err, err_len, MG_ERR_FORMAT, "key '%.*s': value does not fit in u32",
                      shown(kv->key), kv->key.ptr);
    *out = (uint32_t)u;
    return MG_OK;
}

static mg_status kv_f32(const gguf_kv *kv, float *out, char *err, size_t err_len) {
    if (kv->type == GGUF_TYPE_FLOAT32) {
        memcpy(out, kv->data, 4);
    } else if (kv->type == GGUF_TYPE_FLOAT64) {
        double d;
        memcpy(&d, kv->data, 8);
        *out = (float)d;
    } else {
        return wrong_type(kv, "f32", err, err_len);
    }
    return MG_OK;
}

/* Integer key as u32 (any integer type whose value fits). */
mg_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, char *err, size_t err_len) {
    const gguf_kv *kv = need_kv(f, key, err, err_len);
    return kv ? kv_u32(kv, out, err, err_len) : MG_ERR_FORMAT;
}

/* Integer key as i64 (any integer type whose value fits). */
mg_status gguf_get_i64(const gguf_file *f, const char *key, int64_t *out, char *err, size_t err_len) {
    const gguf_kv *kv = need_kv(f, key, err, err_len);
    if (!kv) return MG_ERR_FORMAT;
    uint64_t u = 0;
    int64_t s = 0;
    bool neg;
    if (!read_int(kv->type, kv->data, &u, &s, &neg)) return wrong_type(kv, "an integer", err, err_len);
    if (!neg && u > (uint64_t)INT64_MAX)
        return mg_err(err, err_len, MG_ERR_FORMAT, "key '%s': value does not fit in i64", key);
    *out = neg ? s : (int64_t)u;
    return MG_OK;
}

/* Float key (f32, or f64 rounded to f32). */
mg_status gguf_get_f32(const gguf_file *f, const char *key, float *out, char *err, size_t err_len) {
    const gguf_kv *kv = need_kv(f, key, err, err_len);
    return kv ? kv_f32(kv, out, err, err_len) : MG_ERR_FORMAT;
}

/* Bool key (any nonzero byte is true, as ggml reads it). */
mg_status gguf_get_bool(const gguf_file *f, const char *key, bool *out, char *err, size_t err_len) {
    const gguf_kv *kv = need_kv(f, key, err, err_len);
    if (!kv) return MG_ERR_FORMAT;
    if (kv->type != GGUF_TYPE_BOOL) return wrong_type(kv, "bool", err, err_len);
    *out = *(const uint8_t *)kv->data != 0;
    return MG_OK;
}

/* String key as a view into the file. */
mg_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, char *err, size_t err_len) {
    const gguf_kv *kv = need_kv(f, key, err, err_len);
    if (!kv) return MG_ERR_FORMAT;
    if (kv->type != GGUF_TYPE_STRING) return wrong_type(kv, "str", err, err_len);
    *out = kv->strs[0];
    return MG_OK;
}

/* Like gguf_get_u32, but an absent key gives def. */
mg_status gguf_get_u32_def(const gguf_file *f, const char *key, uint32_t def, uint32_t *out, char *err,
                           size_t err_len) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) {
        *out = def;
        return MG_OK;
    }
    return kv_u32(kv, out, err, err_len);
}

/* Like gguf_get_f32, but an absent key gives def. */
mg_status gguf_get_f32_def(const gguf_file *f, const char *key, float def, float *out, char *err,
                           size_t err_len) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) {
        *out = def;
        return MG_OK;
    }
    return kv_f32(kv, out, err, err_len);
}

/* Array key whose elements have elem_type (GGUF_TYPE_COUNT accepts any element type). */
mg_status gguf_get_arr(const gguf_file *f, const char *key, gguf_type elem_type, const gguf_kv **arr,
                       char *err, size_t err_len) {
    const gguf_kv *kv = need_kv(f, key, err, err_len);
    if (!kv) return MG_ERR_FORMAT;
    if (kv->type != GGUF_TYPE_ARRAY) return wrong_type(kv, "arr", err, err_len);
    if (elem_type != GGUF_TYPE_COUNT && kv->arr_type != elem_type)
        return mg_err(err, err_len, MG_ERR_FORMAT, "key '%s': array of %s, expected array of %s", key,
                      gguf_type_name(kv->arr_type), gguf_type_name(elem_type));
    *arr = kv;
    return MG_OK;
}

/* Element i of a numeric (or bool) array or scalar as double; NaN for strings. */
double gguf_arr_f64(const gguf_kv *kv, uint64_t i) {
    gguf_type t = kv->arr_type;
    size_t es = type_size(t);
    if (!es) return NAN;
    const uint8_t *p = (const uint8_t *)kv->data + i * es;
    if (t == GGUF_TYPE_FLOAT32) { float v; memcpy(&v, p, 4); return v; }
    if (t == GGUF_TYPE_FLOAT64) { double v; memcpy(&v, p, 8); return v; }
    if (t == GGUF_TYPE_BOOL) return *p != 0;
    uint64_t u = 0;
    int64_t s = 0;
    bool neg;
    read_int(t, p, &u, &s, &neg);
    return neg ? (double)s : (double)u;
}

/* Element i of an integer (or bool/float, truncated and clamped) array as int64; 0 for strings. */
int64_t gguf_arr_i64(const gguf_kv *kv, uint64_t i) {
    gguf_type t = kv->arr_type;
    if (t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64) {
        double d = gguf_arr_f64(kv, i);
        if (d != d) return 0;
        if (d >= 9.2233720368547758e18) return INT64_MAX;
        if (d <= -9.2233720368547758e18) return INT64_MIN;
        return (int64_t)d;
    }
    size_t es = type_size(t);
    if (!es) return 0;
    const uint8_t *p = (const uint8_t *)kv->data + i * es;
    if (t == GGUF_TYPE_BOOL) return *p != 0;
    uint64_t u = 0;
    int64_t s = 0;
    bool neg;
    read_int(t, p, &u, &s, &neg);
    return neg ? s : (int64_t)MG_MIN(u, (uint64_t)INT64_MAX);
}

/* ==== Writer ==== */

typedef struct {
    char *ptr;
    uint64_t len;
} wstr;

typedef struct {
    wstr key;
    gguf_type type, arr_type;
    uint64_t n;
    void *data;  /* packed scalar / numeric array values */
    wstr *strs;  /* [n] for strings */
} wkv;

typedef struct {
    wstr name;
    int type;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes;
    uint64_t offset; /* set by write_header */
    const void *data;
} wtensor;

struct gguf_writer {
    wkv *kvs;
    int64_t n_kv, cap_kv;
    wtensor *tensors;
    int64_t n_tensors, cap_tensors;
    uint64_t alignment; /* fixed when the header is written */
    int64_t next_tensor; /* streaming: next tensor whose data is expected; -1 before the header */
    uint64_t pos;        /* bytes written so far by the streaming calls */
};

/* Creates an empty writer (NULL on OOM). Free with gguf_writer_free. */
gguf_writer *gguf_writer_create(void) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (w) {
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
        w->next_tensor = -1;
    }
    return w;
}

static void wkv_clear(wkv *kv) {
    free(kv->data);
    if (kv->strs)
        for (uint64_t i = 0; i < kv->n; i++) free(kv->strs[i].ptr);
    free(kv->strs);
    kv->data = NULL;
    kv->strs = NULL;
}

/* Frees the writer, its copies of keys, values and names (not tensor data). Accepts NULL. */
void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_kv; i++) {
        wkv_clear(&w->kvs[i]);
        free(w->kvs[i].key.ptr);
    }
    free(w->kvs);
    for (int64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name.ptr);
    free(w->tensors);
    free(w);
}

static bool wstr_set(wstr *s, const char *p, uint64_t n) {
    if (n >= SIZE_MAX) return false;
    s->ptr = malloc((size_t)n + 1);
    if (!s->ptr) return false;
    if (n) memcpy(s->ptr, p, (size_t)n);
    s->ptr[n] = 0;
    s->len = n;
    return true;
}

static bool grow(void **arr, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return true;
    int64_t nc = *cap ? *cap * 2 : 16;
    if (nc < need) nc = need;
    size_t bytes;
    if (!mg_mul_ok((size_t)nc, elem, &bytes)) return false;
    void *p = realloc(*arr, bytes);
    if (!p) return false;
    *arr = p;
    *cap = nc;
    return true;
}

/* Returns the entry for key (existing: cleared for reuse, new: appended) or NULL on OOM. */
static wkv *slot_for(gguf_writer *w, const char *key, uint64_t klen) {
    for (int64_t i = 0; i < w->n_kv; i++) {
        wkv *kv = &w->kvs[i];
        if (kv->key.len == klen && memcmp(kv->key.ptr, key, (size_t)klen) == 0) {
            wkv_clear(kv);
            return kv;
        }
    }
    if (!grow((void **)&w->kvs, &w->cap_kv, w->n_kv + 1, sizeof *w->kvs)) return NULL;
    wkv *kv = &w->kvs[w->n_kv];
    memset(kv, 0, sizeof *kv);
    if (!wstr_set(&kv->key, key, klen)) return NULL;
    w->n_kv++;
    return kv;
}

/* Stores n packed values of type t (array when is_arr) under key. */
static mg_status set_values(gguf_writer *w, const char *key, uint64_t klen, gguf_type t, bool is_arr,
                            const void *data, uint64_t n) {
    if (!w || !key || (n && !data) || (!is_arr && n != 1)) return MG_ERR_INVALID_ARG;
    size_t es = type_size(t), bytes;
    if (!es || n > SIZE_MAX || !mg_mul_ok((size_t)n, es, &bytes)) return MG_ERR_INVALID_ARG;
    void *copy = malloc(bytes ? bytes : 1);
    if (!copy) return MG_ERR_NOMEM;
    if (bytes) memcpy(copy, data, bytes);
    wkv *kv = slot_for(w, key, klen);
    if (!kv) {
        free(copy);
        return MG_ERR_NOMEM;
    }
    kv->type = is_arr ? GGUF_TYPE_ARRAY : t;
    kv->arr_type = t;
    kv->n = n;
    kv->data = copy;
    return MG_OK;
}

/* Stores n strings (views) under key: scalar string when !is_arr. */
static mg_status set_strings(gguf_writer *w, const char *key, uint64_t klen, bool is_arr,
                             const gguf_str *src, uint64_t n) {
    if (!w || !key || (n && !src) || (!is_arr && n != 1)) return MG_ERR_INVALID_ARG;
    if (n > SIZE_MAX / sizeof(wstr)) return MG_ERR_NOMEM;
    wstr *strs = calloc((size_t)MG_MAX(n, 1), sizeof *strs);
    if (!strs) return MG_ERR_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        if (!src[i].ptr && src[i].len) {
            for (uint64_t j = 0; j < i; j++) free(strs[j].ptr);
            free(strs);
            return MG_ERR_INVALID_ARG;
        }
        if (!wstr_set(&strs[i], src[i].ptr, src[i].len)) {
            for (uint64_t j = 0; j < i; j++) free(strs[j].ptr);
            free(strs);
            return MG_ERR_NOMEM;
        }
    }
    wkv *kv = slot_for(w, key, klen);
    if (!kv) {
        for (uint64_t j = 0; j < n; j++) free(strs[j].ptr);
        free(strs);
        return MG_ERR_NOMEM;
    }
    kv->type = is_arr ? GGUF_TYPE_ARRAY : GGUF_TYPE_STRING;
    kv->arr_type = GGUF_TYPE_STRING;
    kv->n = n;
    kv->strs = strs;
    return MG_OK;
}

static mg_status set_scalar(gguf_writer *w, const char *key, gguf_type t, const void *v) {
    if (!key) return MG_ERR_INVALID_ARG;
    return set_values(w, key, strlen(key), t, false, v, 1);
}

/* Sets a u8 value (replacing any value of that key). */
mg_status gguf_writer_set_u8(gguf_writer *w, const char *key, uint8_t v) { return set_scalar(w, key, GGUF_TYPE_UINT8, &v); }
/* Sets an i8 value. */
mg_status gguf_writer_set_i8(gguf_writer *w, const char *key, int8_t v) { return set_scalar(w, key, GGUF_TYPE_INT8, &v); }
/* Sets a u16 value. */
mg_status gguf_writer_set_u16(gguf_writer *w, const char *key, uint16_t v) { return set_scalar(w, key, GGUF_TYPE_UINT16, &v); }
/* Sets an i16 value. */
mg_status gguf_writer_set_i16(gguf_writer *w, const char *key, int16_t v) { return set_scalar(w, key, GGUF_TYPE_INT16, &v); }

/* Sets a u32 value; general.alignment must be a nonzero power of two (at most 2^30). */
mg_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v) {
    if (key && strcmp(key, "general.alignment") == 0 && (v == 0 || (v & (v - 1)) || v > GGUF_MAX_ALIGNMENT))
        return MG_ERR_INVALID_ARG;
    return set_scalar(w, key, GGUF_TYPE_UINT32, &v);
}

/* Sets an i32 value. */
mg_status gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v) { return set_scalar(w, key, GGUF_TYPE_INT32, &v); }
/* Sets a u64 value. */
mg_status gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v) { return set_scalar(w, key, GGUF_TYPE_UINT64, &v); }
/* Sets an i64 value. */
mg_status gguf_writer_set_i64(gguf_writer *w, const char *key, int64_t v) { return set_scalar(w, key, GGUF_TYPE_INT64, &v); }
/* Sets an f32 value. */
mg_status gguf_writer_set_f32(gguf_writer *w, const char *key, float v) { return set_scalar(w, key, GGUF_TYPE_FLOAT32, &v); }
/* Sets an f64 value. */
mg_status gguf_writer_set_f64(gguf_writer *w, const char *key, double v) { return set_scalar(w, key, GGUF_TYPE_FLOAT64, &v); }

/* Sets a bool value (stored as one byte 0/1). */
mg_status gguf_writer_set_bool(gguf_writer *w, const char *key, bool v) {
    uint8_t b = v ? 1 : 0;
    return set_scalar(w, key, GGUF_TYPE_BOOL, &b);
}

/* Sets a string value (copied). */
mg_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *v) {
    if (!key || !v) return MG_ERR_INVALID_ARG;
    gguf_str s = {v, strlen(v)};
    return set_strings(w, key, strlen(key), false, &s, 1);
}

/* Sets a numeric/bool array of n elements of elem_type (copied; bools must be 0/1 bytes). */
mg_status gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem_type, const void *data,
                              uint64_t n) {
    if (!key || elem_type == GGUF_TYPE_STRING || elem_type == GGUF_TYPE_ARRAY) return MG_ERR_INVALID_ARG;
    return set_values(w, key, strlen(key), elem_type, true, data, n);
}

/* Sets an array of n C strings (copied). */
mg_status gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t n) {
    if (!key || (n && !strs) || n > SIZE_MAX / sizeof(gguf_str)) return MG_ERR_INVALID_ARG;
    gguf_str *v = malloc((size_t)MG_MAX(n, 1) * sizeof *v);
    if (!v) return MG_ERR_NOMEM;
    mg_status st = MG_OK;
    for (uint64_t i = 0; i < n && st == MG_OK; i++) {
        if (!strs[i]) st = MG_ERR_INVALID_ARG;
        else v[i] = (gguf_str){strs[i], strlen(strs[i])};
    }
    if (st == MG_OK) st = set_strings(w, key, strlen(key), true, v, n);
    free(v);
    return st;
}

/* Copies every key of src except general.alignment (values copied, byte-exact). */
mg_status gguf_writer_copy_kv(gguf_writer *w, const gguf_file *src) {
    if (!w || !src) return MG_ERR_INVALID_ARG;
    for (int64_t i = 0; i < src->n_kv; i++) {
        const gguf_kv *kv = &src->kvs[i];
        if (gguf_str_eq(kv->key, "general.alignment")) continue;
        /* the key may hold NUL bytes: keep its exact length */
        wstr k;
        if (!wstr_set(&k, kv->key.ptr, kv->key.len)) return MG_ERR_NOMEM;
        mg_status st;
        bool is_arr = kv->type == GGUF_TYPE_ARRAY;
        if (kv->arr_type == GGUF_TYPE_STRING)
            st = set_strings(w, k.ptr, k.len, is_arr, kv->strs, kv->n);
        else
            st = set_values(w, k.ptr, k.len, kv->arr_type, is_arr, kv->data, kv->n);
        free(k.ptr);
        if (st != MG_OK) return st;
    }
    return MG_OK;
}

/* Adds tensor metadata (and optionally its data pointer, borrowed until written). */
mg_status gguf_writer_add_tensor(gguf_writer *w, const char *name, int type, int n_dims,
                                 const int64_t *ne, const void *data) {
    if (!w || !name || !ne || n_dims < 1 || n_dims > GGUF_MAX_DIMS || w->next_tensor >= 0)
        return MG_ERR_INVALID_ARG;
    const mg_type_traits *tr = mg_get_type_traits(type);
    if (!tr) return MG_ERR_INVALID_ARG;
    int64_t nel = 1;
    wtensor t = {0};
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] < 0 || __builtin_mul_overflow(nel, t.ne[d], &nel)) return MG_ERR_INVALID_ARG;
    }
    if (t.ne[0] % tr->blck_size) return MG_ERR_INVALID_ARG;
    if (__builtin_mul_overflow((uint64_t)(nel / tr->blck_size), (uint64_t)tr->type_size, &t.nbytes))
        return MG_ERR_INVALID_ARG;
    size_t nlen = strlen(name);
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (w->tensors[i].name.len == nlen && memcmp(w->tensors[i].name.ptr, name, nlen) == 0)
            return MG_ERR_INVALID_ARG;
    if (!grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors + 1, sizeof *w->tensors))
        return MG_ERR_NOMEM;
    if (!wstr_set(&t.name, name, nlen)) return MG_ERR_NOMEM;
    t.type = type;
    t.n_dims = n_dims;
    t.data = data;
    w->tensors[w->n_tensors++] = t;
    return MG_OK;
}

static bool put(FILE *fp, const void *p, size_t n, uint64_t *pos) {
    if (n && fwrite(p, 1, n, fp) != n) return false;
    *pos += n;
    return true;
}

static bool put_u32(FILE *fp, uint32_t v, uint64_t *pos) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return put(fp, b, 4, pos);
}

static bool put_u64(FILE *fp, uint64_t v, uint64_t *pos) {
    return put_u32(fp, (uint32_t)v, pos) && put_u32(fp, (uint32_t)(v >> 32), pos);
}

static bool put_str(FILE *fp, const wstr *s, uint64_t *pos) {
    return put_u64(fp, s->len, pos) && put(fp, s->ptr, (size_t)s->len, pos);
}

static bool put_pad(FILE *fp, uint64_t align, uint64_t *pos) {
    static const uint8_t zeros[256];
    uint64_t n = (align - *pos % align) % align;
    while (n) {
        size_t k = (size_t)MG_MIN(n, (uint64_t)sizeof zeros);
        if (!put(fp, zeros, k, pos)) return false;
        n -= k;
    }
    return true;
}

static bool put_kv(FILE *fp, const wkv *kv, uint64_t *pos) {
    if (!put_str(fp, &kv->key, pos) || !put_u32(fp, (uint32_t)kv->type, pos)) return false;
    if (kv->type == GGUF_TYPE_ARRAY &&
        (!put_u32(fp, (uint32_t)kv->arr_type, pos) || !put_u64(fp, kv->n, pos)))
        return false;
    if (kv->arr_type == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < kv->n; i++)
            if (!put_str(fp, &kv->strs[i], pos)) return false;
        return true;
    }
    /* values are stored in host order; the library targets little-endian hosts only */
    return put(fp, kv->data, (size_t)(kv->n * type_size(kv->arr_type)), pos);
}

/* Writes magic, counts, keys, tensor infos and the padding up to the data section. */
mg_status gguf_writer_write_header(gguf_writer *w, void *fpv, char *err, size_t err_len) {
    FILE *fp = fpv;
    if (!w || !fp) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "gguf writer: NULL argument");
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (int64_t i = 0; i < w->n_kv; i++) {
        const wkv *kv = &w->kvs[i];
        if (kv->key.len == 17 && memcmp(kv->key.ptr, "general.alignment", 17) == 0) {
            uint32_t a;
            if (kv->type != GGUF_TYPE_UINT32)
                return mg_err(err, err_len, MG_ERR_INVALID_ARG, "gguf writer: general.alignment must be u32");
            memcpy(&a, kv->data, 4);
            w->alignment = a;
        }
    }
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        wtensor *t = &w->tensors[i];
        t->offset = off;
        uint64_t padded = (t->nbytes + w->alignment - 1) / w->alignment * w->alignment;
        if (padded < t->nbytes || off > UINT64_MAX - padded)
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "gguf writer: data section too large");
        off += padded;
    }
    uint64_t pos = 0;
    bool ok = put_u32(fp, GGUF_MAGIC, &pos) && put_u32(fp, GGUF_VERSION, &pos) &&
              put_u64(fp, (uint64_t)w->n_tensors, &pos) && put_u64(fp, (uint64_t)w->n_kv, &pos);
    for (int64_t i = 0; ok && i < w->n_kv; i++) ok = put_kv(fp, &w->kvs[i], &pos);
    for (int64_t i = 0; ok && i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        ok = put_str(fp, &t->name, &pos) && put_u32(fp, (uint32_t)t->n_dims, &pos);
        for (int d = 0; ok && d < t->n_dims; d++) ok = put_u64(fp, (uint64_t)t->ne[d], &pos);
        ok = ok && put_u32(fp, (uint32_t)t->type, &pos) && put_u64(fp, t->offset, &pos);
    }
    ok = ok && put_pad(fp, w->alignment, &pos);
    if (!ok) return mg_err(err, err_len, MG_ERR_IO, "gguf writer: write failed: %s", strerror(errno));
    w->pos = pos;
    w->next_tensor = 0;
    return MG_OK;
}

/* Writes tensor i's nbytes of data plus padding; tensors must come in order after the header. */
mg_status gguf_writer_write_tensor_data(gguf_writer *w, void *fpv, int64_t i, const void *data,
                                        char *err, size_t err_len) {
    FILE *fp = fpv;
    if (!w || !fp) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "gguf writer: NULL argument");
    if (w->next_tensor < 0 || i != w->next_tensor || i >= w->n_tensors)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG,
                      "gguf writer: tensor %lld written out of order (expected %lld)", (long long)i,
                      (long long)w->next_tensor);
    const wtensor *t = &w->tensors[i];
    if (!data && t->nbytes)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "gguf writer: tensor '%s' has no data", t->name.ptr);
    /* data is written in chunks so a huge tensor never needs a size_t-sized single fwrite */
    const uint8_t *p = data;
    uint64_t left = t->nbytes;
    bool ok = true;
    while (ok && left) {
        size_t k = (size_t)MG_MIN(left, (uint64_t)1 << 30);
        ok = put(fp, p, k, &w->pos);
        p += k;
        left -= k;
    }
    ok = ok && put_pad(fp, w->alignment, &w->pos);
    if (!ok) return mg_err(err, err_len, MG_ERR_IO, "gguf writer: write failed: %s", strerror(errno));
    w->next_tensor++;
    return MG_OK;
}

/* Writes the whole file to path (every tensor must have a data pointer). */
mg_status gguf_writer_write_file(gguf_writer *w, const char *path, char *err, size_t err_len) {
    if (!w || !path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "gguf writer: NULL argument");
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (!w->tensors[i].data && w->tensors[i].nbytes)
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "gguf writer: tensor '%s' has no data",
                          w->tensors[i].name.ptr);
    FILE *fp = fopen(path, "wb");
    if (!fp) return mg_err(err, err_len, MG_ERR_IO, "cannot create '%s': %s", path, strerror(errno));
    w->next_tensor = -1;
    mg_status st = gguf_writer_write_header(w, fp, err, err_len);
    for (int64_t i = 0; st == MG_OK && i < w->n_tensors; i++)
        st = gguf_writer_write_tensor_data(w, fp, i, w->tensors[i].data, err, err_len);
    st = gguf_file_close_written(fp, path, st, err, err_len);
    w->next_tensor = -1;
    if (st != MG_OK) remove(path);
    return st;
}

mg_status gguf_file_close_written(void *fpv, const char *path, mg_status st, char *err, size_t err_len) {
    FILE *fp = fpv;
    if (!fp) return st;
    if (st == MG_OK) {
        if (fflush(fp) != 0 || fdatasync(fileno(fp)) != 0)
            st = mg_err(err, err_len, MG_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
        else
            (void)posix_fadvise(fileno(fp), 0, 0, POSIX_FADV_DONTNEED); /* a hint: clean pages only */
    }
    if (fclose(fp) != 0 && st == MG_OK)
        st = mg_err(err, err_len, MG_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    return st;
}
