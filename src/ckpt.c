/*
 * ckpt.c - the checkpoint object: opening paths (file, *.index.json, HF folder), file mappings,
 * the tensor table (extents checked against storages when added, names sorted for lookup) and
 * the strided, converting copy of one tensor out of its storage. The per-format parsers are in
 * torchload.c and safetensors.c. After each read the storage's pages are dropped from the
 * mapping (MADV_DONTNEED), so reading a checkpoint tensor by tensor keeps memory near the
 * largest tensor.
 */
#include "ckpt.h"
#include "quant.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CKPT_MAX_TENSORS (1 << 20)
#define CKPT_MAX_PARTS 4096
#define CKPT_MAX_INDEX_BYTES ((size_t)64 << 20)

typedef struct {
    char *file;         /* base name within an index, NULL otherwise */
    void *map;          /* owned mapping (NULL for memory input) */
    size_t map_size;
    const uint8_t *data;
    size_t size;
    zip_archive zip;
} ckpt_part;

struct ckpt_file {
    ckpt_part *parts;
    int32_t n_parts, cap_parts;
    ckpt_storage *storages;
    size_t n_storages, cap_storages;
    ckpt_tensor *tensors;
    size_t n_tensors, cap_tensors;
    size_t *sorted; /* tensor indices sorted by name */
    const char *format;
};

size_t ckpt_type_size(int type) {
    switch (type) {
    case MG_TYPE_F64: case MG_TYPE_I64: return 8;
    case MG_TYPE_F32: case MG_TYPE_I32: return 4;
    case MG_TYPE_F16: case MG_TYPE_BF16: case MG_TYPE_I16: return 2;
    case MG_TYPE_I8: case CKPT_TYPE_U8: case CKPT_TYPE_BOOL: return 1;
    default: return 0;
    }
}

const char *ckpt_type_name(int type) {
    switch (type) {
    case MG_TYPE_F64: return "f64";
    case MG_TYPE_F32: return "f32";
    case MG_TYPE_F16: return "f16";
    case MG_TYPE_BF16: return "bf16";
    case MG_TYPE_I64: return "i64";
    case MG_TYPE_I32: return "i32";
    case MG_TYPE_I16: return "i16";
    case MG_TYPE_I8: return "i8";
    case CKPT_TYPE_U8: return "u8";
    case CKPT_TYPE_BOOL: return "bool";
    default: return "?";
    }
}

/* ==== Building the table ==== */

static bool grow_array(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t nc = *cap ? *cap * 2 : 16, bytes;
    if (nc < need) nc = need;
    if (!mg_mul_ok(nc, elem, &bytes)) return false;
    void *p = realloc(*arr, bytes);
    if (!p) return false;
    *arr = p;
    *cap = nc;
    return true;
}

int32_t ckpt_add_storage(ckpt_file *f, const ckpt_storage *s) {
    if (f->n_storages >= INT32_MAX ||
        !grow_array((void **)&f->storages, &f->cap_storages, f->n_storages + 1, sizeof *s))
        return -1;
    f->storages[f->n_storages] = *s;
    return (int32_t)f->n_storages++;
}

mg_status ckpt_add_tensor(ckpt_file *f, const char *name, const ckpt_tensor *t, char *err,
                          size_t err_len) {
    if (t->storage < 0 || (size_t)t->storage >= f->n_storages)
        return mg_err(err, err_len, MG_ERR_INTERNAL, "checkpoint: bad storage index");
    const ckpt_storage *s = &f->storages[t->storage];
    size_t es = ckpt_type_size(t->type);
    if (!es || t->n_dims < 0 || t->n_dims > CKPT_MAX_DIMS || t->storage_offset < 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "checkpoint: tensor '%s' has a bad type or rank", name);
    /* Highest element index reached: offset + sum (shape-1)*stride, all checked. */
    int64_t n = 1, last = t->storage_offset;
    for (int i = 0; i < t->n_dims; i++) {
        if (t->shape[i] < 0 || t->stride[i] < 0 || __builtin_mul_overflow(n, t->shape[i], &n))
            return mg_err(err, err_len, MG_ERR_FORMAT, "checkpoint: tensor '%s' has a bad shape", name);
    }
    if (n > 0) {
        for (int i = 0; i < t->n_dims; i++) {
            int64_t span;
            if (__builtin_mul_overflow(t->shape[i] - 1, t->stride[i], &span) ||
                __builtin_add_overflow(last, span, &last))
                return mg_err(err, err_len, MG_ERR_FORMAT, "checkpoint: tensor '%s' has a bad stride", name);
        }
        uint64_t end_bytes;
        if (__builtin_mul_overflow((uint64_t)last + 1, (uint64_t)es, &end_bytes) || end_bytes > s->nbytes)
            return mg_err(err, err_len, MG_ERR_FORMAT,
                          "checkpoint: tensor '%s' reaches past its storage (%llu bytes)", name,
                          (unsigned long long)s->nbytes);
        if ((uint64_t)n > SIZE_MAX / es)
            return mg_err(err, err_len, MG_ERR_NOMEM, "checkpoint: tensor '%s' too large", name);
    }
    if (f->n_tensors >= CKPT_MAX_TENSORS)
        return mg_err(err, err_len, MG_ERR_FORMAT, "checkpoint: more than %d tensors", CKPT_MAX_TENSORS);
    if (!grow_array((void **)&f->tensors, &f->cap_tensors, f->n_tensors + 1, sizeof *t))
        return mg_err(err, err_len, MG_ERR_NOMEM, "checkpoint: out of memory");
    char *copy = strdup(name);
    if (!copy) return mg_err(err, err_len, MG_ERR_NOMEM, "checkpoint: out of memory");
    ckpt_tensor *dst = &f->tensors[f->n_tensors++];
    *dst = *t;
    dst->name = copy;
    dst->n_elements = n;
    dst->part = s->part;
    return MG_OK;
}

const uint8_t *ckpt_part_data(const ckpt_file *f, int32_t part, size_t *size) {
    *size = f->parts[part].size;
    return f->parts[part].data;
}

zip_archive *ckpt_part_zip(ckpt_file *f, int32_t part) { return &f->parts[part].zip; }

static int cmp_tensor_names(const void *a, const void *b, void *arg) {
    const ckpt_file *f = arg;
    return strcmp(f->tensors[*(const size_t *)a].name, f->tensors[*(const size_t *)b].name);
}

/* Sorts the names for ckpt_find and refuses duplicates. */
static mg_status build_index(ckpt_file *f, char *err, size_t err_len) {
    f->sorted = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *f->sorted);
    if (!f->sorted) return mg_err(err, err_len, MG_ERR_NOMEM, "checkpoint: out of memory");
    for (size_t i = 0; i < f->n_tensors; i++) f->sorted[i] = i;
    qsort_r(f->sorted, f->n_tensors, sizeof *f->sorted, cmp_tensor_names, f);
    for (size_t i = 1; i < f->n_tensors; i++) {
        const char *a = f->tensors[f->sorted[i - 1]].name, *b = f->tensors[f->sorted[i]].name;
        if (strcmp(a, b) == 0)
            return mg_err(err, err_len, MG_ERR_FORMAT, "checkpoint: duplicate tensor name '%.200s'", a);
    }
    return MG_OK;
}

/* ==== Opening ==== */

static ckpt_part *add_part(ckpt_file *f) {
    size_t cap = (size_t)f->cap_parts;
    if (f->n_parts >= CKPT_MAX_PARTS ||
        !grow_array((void **)&f->parts, &cap, (size_t)f->n_parts + 1, sizeof(ckpt_part)))
        return NULL;
    f->cap_parts = (int32_t)cap;
    ckpt_part *p = &f->parts[f->n_parts++];
    memset(p, 0, sizeof *p);
    return p;
}

/* A safetensors file starts with the little-endian length of the JSON header that follows. */
static bool plausible_header_len(const uint8_t *d, size_t n) {
    uint64_t len = 0;
    for (int b = 7; b >= 0; b--) len = (len << 8) | d[b];
    return len > 0 && len <= n - 8;
}

/* Detects the format of part i from its first bytes and runs the matching parser. */
static mg_status load_part(ckpt_file *f, int32_t i, char *err, size_t err_len) {
    const uint8_t *d = f->parts[i].data;
    size_t n = f->parts[i].size;
    const char *fmt;
    mg_status st;
    if (n >= 4 && d[0] == 'P' && d[1] == 'K' && ((d[2] == 3 && d[3] == 4) || (d[2] == 5 && d[3] == 6))) {
        fmt = "torch zip";
        st = ckpt_load_torch_zip(f, i, err, err_len);
    } else if (n >= 2 && d[0] == 0x80) {
        fmt = "torch legacy";
        st = ckpt_load_torch_legacy(f, i, err, err_len);
    } else if (n >= 9 && plausible_header_len(d, n)) {
        fmt = "safetensors";
        st = ckpt_load_safetensors(f, i, err, err_len);
    } else if (n >= 262 && memcmp(d + 257, "ustar", 5) == 0) {
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED,
                      "checkpoint: tar-based torch files (PyTorch < 0.4) are not supported");
    } else {
        return mg_err(err, err_len, MG_ERR_FORMAT,
                      "checkpoint: unknown format (not a torch zip, legacy torch or safetensors file)");
    }
    if (!f->format) f->format = fmt;
    return st;
}

/* Maps a file read-only and parses it as a new part. */
static mg_status open_file_part(ckpt_file *f, const char *path, const char *base, char *err,
                                size_t err_len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mg_err(err, err_len, MG_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mg_err(err, err_len, MG_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size <= 0) {
        close(fd);
        return mg_err(err, err_len, MG_ERR_FORMAT, "%s: empty file", path);
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return mg_err(err, err_len, MG_ERR_IO, "%s: mmap: %s", path, strerror(errno));
    ckpt_part *p = add_part(f);
    if (!p) {
        munmap(m, (size_t)sb.st_size);
        return mg_err(err, err_len, MG_ERR_NOMEM, "checkpoint: too many parts");
    }
    p->map = m;
    p->map_size = (size_t)sb.st_size;
    p->data = m;
    p->size = (size_t)sb.st_size;
    if (base && !(p->file = strdup(base))) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    char sub[256];
    mg_status st = load_part(f, f->n_parts - 1, sub, sizeof sub);
    if (st != MG_OK) return mg_err(err, err_len, st, "%s: %s", path, sub);
    return MG_OK;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* A shard name from an index must be a plain file name in the index's folder. */
static bool safe_file_name(const char *s) {
    return s[0] && strcmp(s, ".") != 0 && strcmp(s, "..") != 0 && !strchr(s, '/') && strlen(s) < 1024;
}

/* Opens every shard named by a HF index (weight_map) and checks the map against them. */
static mg_status open_index(ckpt_file *f, const char *path, char *err, size_t err_len) {
    struct stat sb;
    if (stat(path, &sb) != 0) return mg_err(err, err_len, MG_ERR_IO, "%s: %s", path, strerror(errno));
    if ((uint64_t)sb.st_size > CKPT_MAX_INDEX_BYTES)
        return mg_err(err, err_len, MG_ERR_FORMAT, "%s: index file too large", path);
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) return mg_err(err, err_len, MG_ERR_FORMAT, "%s: line %d: %s", path, je.line, je.text);
    mg_status st = MG_OK;
    json_t *map = json_object_get(root, "weight_map");
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else snprintf(dir, sizeof dir, ".");
    const char *name;
    json_t *v;
    if (!json_is_object(map)) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "%s: no \"weight_map\" object", path);
        goto done;
    }
    json_object_foreach(map, name, v) {
        const char *file = json_string_value(v);
        if (!file || !safe_file_name(file)) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "%s: bad shard name for '%.100s'", path, name);
            goto done;
        }
        bool seen = false;
        for (int32_t i = 0; i < f->n_parts && !seen; i++) seen = strcmp(f->parts[i].file, file) == 0;
        if (seen) continue;
        char full[8192];
        snprintf(full, sizeof full, "%s/%s", dir, file);
        if ((st = open_file_part(f, full, file, err, err_len)) != MG_OK) goto done;
    }
    if ((st = build_index(f, err, err_len)) != MG_OK) goto done;
    json_object_foreach(map, name, v) {
        const ckpt_tensor *t = NULL;
        size_t lo = 0, hi = f->n_tensors;
        while (lo < hi && !t) {
            size_t mid = lo + (hi - lo) / 2;
            int c = strcmp(f->tensors[f->sorted[mid]].name, name);
            if (c == 0) t = &f->tensors[f->sorted[mid]];
            else if (c < 0) lo = mid + 1;
            else hi = mid;
        }
        if (!t || strcmp(f->parts[t->part].file, json_string_value(v)) != 0) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "%s: tensor '%.100s' is not in shard '%.100s'", path,
                        name, json_string_value(v));
            goto done;
        }
    }
done:
    json_decref(root);
    return st;
}

mg_status ckpt_open(ckpt_file **out, const char *path, char *err, size_t err_len) {
    *out = NULL;
    struct stat sb;
    if (!path || stat(path, &sb) != 0)
        return mg_err(err, err_len, MG_ERR_IO, "%s: %s", path ? path : "(null)", strerror(errno));
    ckpt_file *f = calloc(1, sizeof *f);
    if (!f) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    mg_status st;
    if (S_ISDIR(sb.st_mode)) {
        static const char *const names[] = {"model.safetensors.index.json", "model.safetensors",
                                            "pytorch_model.bin.index.json", "pytorch_model.bin"};
        char full[8192];
        st = mg_err(err, err_len, MG_ERR_IO,
                    "%s: no model.safetensors[.index.json] or pytorch_model.bin[.index.json] in the folder", path);
        for (size_t i = 0; i < MG_ARRAY_LEN(names); i++) {
            snprintf(full, sizeof full, "%s/%s", path, names[i]);
            if (access(full, R_OK) != 0) continue;
            if (ends_with(full, ".index.json")) st = open_index(f, full, err, err_len);
            else if ((st = open_file_part(f, full, NULL, err, err_len)) == MG_OK) st = build_index(f, err, err_len);
            break;
        }
    } else if (ends_with(path, ".index.json")) {
        st = open_index(f, path, err, err_len);
    } else {
        st = open_file_part(f, path, NULL, err, err_len);
        if (st == MG_OK) st = build_index(f, err, err_len);
    }
    if (st != MG_OK) {
        ckpt_close(f);
        return st;
    }
    *out = f;
    return MG_OK;
}

mg_status ckpt_open_memory(ckpt_file **out, const void *data, size_t size, char *err, size_t err_len) {
    *out = NULL;
    if (!data && size) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "checkpoint: NULL data");
    ckpt_file *f = calloc(1, sizeof *f);
    if (!f) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    ckpt_part *p = add_part(f);
    mg_status st = MG_ERR_NOMEM;
    if (p) {
        p->data = data;
        p->size = size;
        st = load_part(f, 0, err, err_len);
        if (st == MG_OK) st = build_index(f, err, err_len);
    }
    if (st != MG_OK) {
        ckpt_close(f);
        return st;
    }
    *out = f;
    return MG_OK;
}

void ckpt_close(ckpt_file *f) {
    if (!f) return;
    for (int32_t i = 0; i < f->n_parts; i++) {
        ckpt_part *p = &f->parts[i];
        zip_close(&p->zip);
        if (p->map) munmap(p->map, p->map_size);
        free(p->file);
    }
    for (size_t i = 0; i < f->n_tensors; i++) free((char *)f->tensors[i].name);
    free(f->parts);
    free(f->storages);
    free(f->tensors);
    free(f->sorted);
    free(f);
}

/* ==== Queries ==== */

const char *ckpt_format(const ckpt_file *f) { return f->format ? f->format : "?"; }

int64_t ckpt_n_tensors(const ckpt_file *f) { return (int64_t)f->n_tensors; }

const ckpt_tensor *ckpt_tensor_at(const ckpt_file *f, int64_t i) {
    if (i < 0 || (uint64_t)i >= f->n_tensors) return NULL;
    return &f->tensors[i];
}

static const ckpt_tensor *find_exact(const ckpt_file *f, const char *name) {
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const ckpt_tensor *t = &f->tensors[f->sorted[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

const ckpt_tensor *ckpt_find(const ckpt_file *f, const char *name) {
    const ckpt_tensor *t = find_exact(f, name);
    static const char *const wrappers[] = {"model.", "state_dict.", "module."};
    char buf[2048];
    for (size_t i = 0; !t && i < MG_ARRAY_LEN(wrappers); i++) {
        if (snprintf(buf, sizeof buf, "%s%s", wrappers[i], name) < (int)sizeof buf) t = find_exact(f, buf);
    }
    return t;
}

/* ==== Reading ==== */

/* Converts n elements of a type, src stride given in bytes, into floats. The switch is outside
 * the loops so each loop is a plain, vectorisable conversion. */
#define CONVERT_LOOP(T, EXPR)                                                                      \
    for (int64_t j = 0; j < n; j++, src += stride_bytes) {                                         \
        T v_;                                                                                      \
        memcpy(&v_, src, sizeof v_);                                                               \
        dst[j] = (EXPR);                                                                           \
    }                                                                                              \
    break
static void convert_row(int type, const uint8_t *src, size_t stride_bytes, float *dst, int64_t n) {
    switch (type) {
    case MG_TYPE_F32: CONVERT_LOOP(float, v_);
    case MG_TYPE_F16: CONVERT_LOOP(uint16_t, mg_fp16_to_fp32(v_));
    case MG_TYPE_BF16: CONVERT_LOOP(uint16_t, mg_bf16_to_fp32(v_));
    case MG_TYPE_F64: CONVERT_LOOP(double, (float)v_);
    case MG_TYPE_I64: CONVERT_LOOP(int64_t, (float)v_);
    case MG_TYPE_I32: CONVERT_LOOP(int32_t, (float)v_);
    case MG_TYPE_I16: CONVERT_LOOP(int16_t, (float)v_);
    case MG_TYPE_I8: CONVERT_LOOP(int8_t, (float)v_);
    default: CONVERT_LOOP(uint8_t, (float)v_); /* u8, bool */
    }
}
#undef CONVERT_LOOP

/* Copies the elements of t from base (its storage) into dst, raw or as floats. */
static void gather(const ckpt_tensor *t, const uint8_t *base, void *dst, bool to_f32) {
    size_t es = ckpt_type_size(t->type);
    int nd = t->n_dims;
    if (t->n_elements == 0) return;
    /* Merge the trailing dims that are contiguous into one inner run. */
    int64_t inner = 1, expect = 1;
    int k = nd;
    while (k > 0 && (t->stride[k - 1] == expect || t->shape[k - 1] == 1)) {
        inner *= t->shape[k - 1];
        expect = inner;
        k--;
    }
    int64_t inner_stride = 1;
    if (k == nd && nd > 0) { /* innermost dim itself strided */
        inner = t->shape[nd - 1];
        inner_stride = t->stride[nd - 1];
        k = nd - 1;
    }
    int64_t idx[CKPT_MAX_DIMS] = {0};
    uint8_t *out = dst;
    for (;;) {
        int64_t off = t->storage_offset;
        for (int i = 0; i < k; i++) off += idx[i] * t->stride[i];
        const uint8_t *src = base + (size_t)off * es;
        if (to_f32 && t->type == MG_TYPE_F32 && inner_stride == 1) {
            memcpy(out, src, (size_t)inner * 4);
            out += (size_t)inner * 4;
        } else if (to_f32) {
            convert_row(t->type, src, (size_t)inner_stride * es, (float *)(void *)out, inner);
            out += (size_t)inner * sizeof(float);
        } else if (inner_stride == 1) {
            memcpy(out, src, (size_t)inner * es);
            out += (size_t)inner * es;
        } else {
            for (int64_t j = 0; j < inner; j++, out += es) memcpy(out, src + (size_t)(j * inner_stride) * es, es);
        }
        int i = k - 1;
        while (i >= 0 && ++idx[i] == t->shape[i]) idx[i--] = 0;
        if (i < 0) break;
    }
}

/* Lets the kernel drop the mapped pages of a storage once it has been copied out. */
static void release_pages(const ckpt_file *f, const ckpt_storage *s) {
    const ckpt_part *p = &f->parts[s->part];
    if (!p->map || !s->data || !s->nbytes) return;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) return;
    uintptr_t lo = (uintptr_t)s->data & ~((uintptr_t)page - 1);
    uintptr_t hi = (uintptr_t)s->data + (uintptr_t)s->nbytes;
    uintptr_t map_end = (uintptr_t)p->map + p->map_size;
    hi = hi + (uintptr_t)page - 1 < map_end ? (hi + (uintptr_t)page - 1) & ~((uintptr_t)page - 1) : map_end;
    madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

static mg_status read_tensor(ckpt_file *f, const ckpt_tensor *t, void *dst, bool to_f32, char *err,
                             size_t err_len) {
    if (t->storage < 0 || (size_t)t->storage >= f->n_storages)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "checkpoint: tensor not from this file");
    const ckpt_storage *s = &f->storages[t->storage];
    if (s->data) {
        gather(t, s->data, dst, to_f32);
        release_pages(f, s);
        return MG_OK;
    }
    const uint8_t *ptr;
    uint8_t *owned;
    mg_status st = zip_entry_data(ckpt_part_zip(f, s->part), s->zent, 0, &ptr, &owned, err, err_len);
    if (st != MG_OK) return st;
    gather(t, ptr, dst, to_f32);
    free(owned);
    return MG_OK;
}

mg_status ckpt_read_raw(ckpt_file *f, const ckpt_tensor *t, void *dst, size_t dst_bytes, char *err,
                        size_t err_len) {
    if (!f || !t || (!dst && t->n_elements))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "checkpoint: NULL argument");
    if (dst_bytes != (size_t)t->n_elements * ckpt_type_size(t->type))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "checkpoint: '%s' needs %zu bytes, not %zu", t->name,
                      (size_t)t->n_elements * ckpt_type_size(t->type), dst_bytes);
    return read_tensor(f, t, dst, false, err, err_len);
}

mg_status ckpt_read_f32(ckpt_file *f, const ckpt_tensor *t, float *dst, int64_t n, char *err,
                        size_t err_len) {
    if (!f || !t || (!dst && t->n_elements))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "checkpoint: NULL argument");
    if (n != t->n_elements)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "checkpoint: '%s' has %lld elements, not %lld",
                      t->name, (long long)t->n_elements, (long long)n);
    return read_tensor(f, t, dst, true, err, err_len);
}
