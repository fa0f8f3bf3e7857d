/*
 * gguf.h - GGUF v3 reader (read-only mmap or caller buffer) and streaming writer.
 *
 * The reader validates every count, length, offset, dimension and type before use; after a
 * successful open every pointer it hands out lies inside the mapping. Strings are not
 * NUL-terminated in the file: they are returned as {ptr,len} views; gguf_str_dup copies.
 * Layout conventions are llama.cpp's (general.alignment, default 32; tensor data offsets relative
 * to the aligned start of the data section).
 */
#ifndef MG_GGUF_H
#define MG_GGUF_H

#include "internal.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

typedef enum {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_type;

typedef struct {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} gguf_str;

typedef struct {
    gguf_str key;
    gguf_type type;     /* value type; GGUF_TYPE_ARRAY for arrays */
    gguf_type arr_type; /* element type when type == ARRAY */
    uint64_t n;         /* number of elements when ARRAY, else 1 */
    const void *data;   /* scalar or first array element (unaligned: read with memcpy) */
    gguf_str *strs;     /* string values: [n] views (for STRING and ARRAY of STRING), else NULL */
} gguf_kv;

typedef struct {
    gguf_str name;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] = innermost (row length); unused dims are 1 */
    int type;                  /* mg_type */
    uint64_t offset;           /* relative to the data section */
    uint64_t nbytes;
    const void *data;          /* inside the mapping (aligned to general.alignment) */
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* Opens and validates a file (mmap, read-only). */
mg_status gguf_open(gguf_file **out, const char *path, char *err, size_t err_len);
/* Same over a caller buffer that must outlive the gguf_file (not copied). */
mg_status gguf_open_buffer(gguf_file **out, const void *buf, size_t size, char *err, size_t err_len);
void gguf_close(gguf_file *f);

uint32_t gguf_version(const gguf_file *f);
uint64_t gguf_alignment(const gguf_file *f);
uint64_t gguf_data_offset(const gguf_file *f); /* file offset of the data section */
uint64_t gguf_file_size(const gguf_file *f);

int64_t gguf_n_kv(const gguf_file *f);
const gguf_kv *gguf_kv_at(const gguf_file *f, int64_t i);
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key); /* NULL if absent */

/* Typed getters. Return MG_ERR_FORMAT (message in err) if the key is absent (unless a default
 * variant is used) or has another type. Integers of any integer type are converted when the value
 * fits. */
mg_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, char *err, size_t err_len);
mg_status gguf_get_i64(const gguf_file *f, const char *key, int64_t *out, char *err, size_t err_len);
mg_status gguf_get_f32(const gguf_file *f, const char *key, float *out, char *err, size_t err_len);
mg_status gguf_get_bool(const gguf_file *f, const char *key, bool *out, char *err, size_t err_len);
mg_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, char *err, size_t err_len);
/* Absent key -> *out = def and MG_OK; present with a wrong type -> error. */
mg_status gguf_get_u32_def(const gguf_file *f, const char *key, uint32_t def, uint32_t *out, char *err, size_t err_len);
mg_status gguf_get_f32_def(const gguf_file *f, const char *key, float def, float *out, char *err, size_t err_len);
/* Array getters: *arr points at the kv; checks element type. */
mg_status gguf_get_arr(const gguf_file *f, const char *key, gguf_type elem_type, const gguf_kv **arr, char *err, size_t err_len);
/* Reads element i of a numeric array as double / int64 (bounds-checked by caller via kv->n). */
double gguf_arr_f64(const gguf_kv *kv, uint64_t i);
int64_t gguf_arr_i64(const gguf_kv *kv, uint64_t i);

int64_t gguf_n_tensors(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, int64_t i);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name); /* NULL if absent */

/* Compares a view with a C string. */
bool gguf_str_eq(gguf_str s, const char *c);
/* malloc'd NUL-terminated copy, or NULL. */
char *gguf_str_dup(gguf_str s);
const char *gguf_type_name(gguf_type t);

/* ==== Writer ====
 * Usage: w = gguf_writer_create(); set keys; add tensors (name, type, shape); then
 * gguf_writer_write_header(w, fp) followed by gguf_writer_write_tensor_data(w, fp, i, data) for every
 * tensor in order (data = exactly the tensor's nbytes), or gguf_writer_write_file(w, path) when
 * all tensors were added with their data pointers. Keys keep insertion order; setting a key again
 * replaces its value. */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_create(void);
void gguf_writer_free(gguf_writer *w);
mg_status gguf_writer_set_u8(gguf_writer *w, const char *key, uint8_t v);
mg_status gguf_writer_set_i8(gguf_writer *w, const char *key, int8_t v);
mg_status gguf_writer_set_u16(gguf_writer *w, const char *key, uint16_t v);
mg_status gguf_writer_set_i16(gguf_writer *w, const char *key, int16_t v);
mg_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
mg_status gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v);
mg_status gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v);
mg_status gguf_writer_set_i64(gguf_writer *w, const char *key, int64_t v);
mg_status gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
mg_status gguf_writer_set_f64(gguf_writer *w, const char *key, double v);
mg_status gguf_writer_set_bool(gguf_writer *w, const char *key, bool v);
mg_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *v);
/* Numeric array: elem_type any scalar type, data = n packed elements of that type. */
mg_status gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem_type, const void *data, uint64_t n);
mg_status gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t n);
/* Copies every key of a reader file (except general.alignment) into the writer. */
mg_status gguf_writer_copy_kv(gguf_writer *w, const gguf_file *src);
/* Adds a tensor; data may be NULL when the streaming calls are used. ne has n_dims entries. */
mg_status gguf_writer_add_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne, const void *data);
mg_status gguf_writer_write_file(gguf_writer *w, const char *path, char *err, size_t err_len);
mg_status gguf_writer_write_header(gguf_writer *w, void *fp /* FILE* */, char *err, size_t err_len);
/* Closes a GGUF file written through fp. When st is MG_OK it first flushes the data to disk and
 * drops the file's pages from the page cache, so that the first mapping reads it back into 2 MiB
 * folios (gguf_open asks for them; docs/PERFORMANCE.md: a model written and then run straight
 * from 4 KiB cache pages decoded at half speed). Returns st, or MG_ERR_IO if writing failed. */
mg_status gguf_file_close_written(void *fp /* FILE* */, const char *path, mg_status st, char *err, size_t err_len);
mg_status gguf_writer_write_tensor_data(gguf_writer *w, void *fp, int64_t i, const void *data, char *err, size_t err_len);

#endif
