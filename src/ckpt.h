/*
 * ckpt.h - reading official PyTorch / Hugging Face checkpoints without Python (the base of
 * `minigpt convert`). Internal to the library; tests and tools may include it.
 *
 * Formats: torch.save zip archives (.pth/.bin, any top-level folder), legacy (pre-1.6) torch
 * files, .safetensors, sharded HF indexes (*.index.json) and HF folders. Everything is parsed
 * from a read-only mapping with bounded readers; the unpickler knows only the opcodes and the
 * whitelisted globals that state dicts use and refuses anything else BEFORE applying it, so
 * loading never executes code. Tensor data stays in the mapping until ckpt_read_* copies one
 * tensor out (contiguous), so peak memory stays near the largest tensor.
 *
 * Layers (each usable alone, e.g. by the fuzz targets): zip_* (zip.c), pk_* (pickle.c),
 * ckpt_* (torchload.c, safetensors.c).
 */
#ifndef MG_CKPT_H
#define MG_CKPT_H

#include "internal.h"

/* ==== Element types ==== */

#define CKPT_MAX_DIMS 8
/* Checkpoint element types are mg_type ids; these two have no ggml id and live above them. */
#define CKPT_TYPE_U8 200
#define CKPT_TYPE_BOOL 201

/* Bytes per element of a checkpoint type (F32, F16, BF16, F64, I8..I64, U8, BOOL), 0 if unknown. */
size_t ckpt_type_size(int type);
/* Short name of a checkpoint type ("f32", "bf16", "u8", ...), "?" if unknown. Never NULL. */
const char *ckpt_type_name(int type);

/* ==== zip.c: bounded zip reader over a caller-owned buffer ==== */

typedef struct {
    char *name;           /* NUL-terminated copy of the entry name */
    uint64_t data_offset; /* of the (compressed) data in the buffer */
    uint64_t comp_size;
    uint64_t size;        /* uncompressed */
    uint32_t crc32;
    uint16_t method;      /* 0 stored, 8 deflate */
} zip_entry;

typedef struct {
    const uint8_t *data; /* borrowed */
    size_t size;
    zip_entry *entries;  /* [n_entries] in central-directory order */
    size_t n_entries;
    size_t *sorted;      /* entry indices sorted by name, for zip_find */
} zip_archive;

/* Parses the central directory of data[0..size) (zip64 understood). data must outlive z.
 * Free with zip_close (also after a failure). */
mg_status zip_open(zip_archive *z, const void *data, size_t size, char *err, size_t err_len);
void zip_close(zip_archive *z);
/* The entry with exactly this name, or NULL. */
const zip_entry *zip_find(const zip_archive *z, const char *name);
/* Gives the uncompressed bytes of an entry: for a stored entry *ptr points into the buffer and
 * *owned is NULL; for a deflated one the data is inflated into *owned (malloc'd, caller frees)
 * and *ptr == *owned. check_crc also verifies the CRC-32. */
mg_status zip_entry_data(const zip_archive *z, const zip_entry *e, int check_crc,
                         const uint8_t **ptr, uint8_t **owned, char *err, size_t err_len);

/* ==== pickle.c: restricted unpickler ==== */

typedef enum {
    PK_NONE, PK_BOOL, PK_INT, PK_FLOAT, PK_STR, PK_BYTES, PK_TUPLE, PK_LIST, PK_DICT,
    PK_GLOBAL, PK_STORAGE, PK_TENSOR
} pk_kind;

typedef enum {
    PK_G_ORDERED_DICT, PK_G_REBUILD_TENSOR_V2, PK_G_REBUILD_TENSOR, PK_G_REBUILD_PARAMETER,
    PK_G_REBUILD_PARAMETER_WITH_STATE, PK_G_STORAGE_TYPE
} pk_global_id;

typedef struct pk_obj pk_obj;
struct pk_obj {
    pk_kind kind;
    union {
        int64_t i;                                      /* PK_INT, PK_BOOL */
        double f;                                       /* PK_FLOAT */
        struct { char *s; size_t len; } str;            /* PK_STR (UTF-8, NUL-terminated), PK_BYTES */
        struct { pk_obj **items; size_t n, cap; } seq;  /* tuple, list; dict: 2n items k,v,k,v */
        struct { pk_global_id id; int type; } global;   /* type: element type of a storage class */
        struct {
            int type;           /* element type */
            char *key;          /* storage key: data/<key> in zip files */
            int64_t numel;      /* from the persistent id (elements) */
            int32_t index;      /* free for the caller (ckpt: storage index), -1 initially */
        } storage;
        struct {
            pk_obj *storage;
            int64_t offset;     /* in elements */
            int n_dims;
            int64_t shape[CKPT_MAX_DIMS];
            int64_t stride[CKPT_MAX_DIMS];
        } tensor;
    } u;
};

typedef struct pk_ctx pk_ctx;

/* A context owns every object of the pickles loaded with it (and a registry of storages by key,
 * shared by those pickles). Free with pk_free (NULL ok). */
pk_ctx *pk_new(void);
void pk_free(pk_ctx *ctx);
/* Unpickles one pickle from data[0..size); *consumed gets the bytes up to and including STOP.
 * *root belongs to ctx. Persistent ids ('storage', <torch.XStorage>, key, location, numel[, view])
 * become PK_STORAGE objects (one per key). */
mg_status pk_load(pk_ctx *ctx, const uint8_t *data, size_t size, size_t *consumed, pk_obj **root,
                  char *err, size_t err_len);
/* The storage with this key created so far, or NULL. */
pk_obj *pk_find_storage(pk_ctx *ctx, const char *key);

/* ==== ckpt: tensors of a checkpoint ==== */

typedef struct {
    const char *name;   /* "model.llama_proj.weight": nested dict keys joined with '.' */
    int type;           /* element type (mg_type id or CKPT_TYPE_*) */
    int n_dims;
    int64_t shape[CKPT_MAX_DIMS]; /* PyTorch order, outermost first */
    int64_t n_elements;
    int64_t stride[CKPT_MAX_DIMS]; /* in elements, within the storage */
    int64_t storage_offset;        /* in elements */
    int32_t storage;               /* internal storage index */
    int32_t part;                  /* which file of a sharded checkpoint */
} ckpt_tensor;

typedef struct ckpt_file ckpt_file;

/* Opens a checkpoint: a torch zip or legacy file, a .safetensors file, a sharded index
 * (*.index.json) or a Hugging Face folder (model.safetensors[.index.json] or
 * pytorch_model.bin[.index.json] inside). Every tensor's extent is checked against its storage
 * here, so the reads below cannot go out of bounds. Close with ckpt_close (NULL ok). */
mg_status ckpt_open(ckpt_file **out, const char *path, char *err, size_t err_len);
/* Same for one file already in memory (torch zip, legacy torch or safetensors); data is borrowed
 * and must outlive the ckpt_file. */
mg_status ckpt_open_memory(ckpt_file **out, const void *data, size_t size, char *err,
                           size_t err_len);
void ckpt_close(ckpt_file *f);

/* "torch zip", "torch legacy", "safetensors" (of the first file). */
const char *ckpt_format(const ckpt_file *f);
int64_t ckpt_n_tensors(const ckpt_file *f);
/* Tensor i (0 <= i < n) in file order; NULL when out of range. Owned by f. */
const ckpt_tensor *ckpt_tensor_at(const ckpt_file *f, int64_t i);
/* The tensor with this name; if there is none, the same name under a wrapper ("model.",
 * "state_dict.", "module."), so {"model": state_dict} files answer plain names. NULL if absent. */
const ckpt_tensor *ckpt_find(const ckpt_file *f, const char *name);
/* Copies tensor t into dst contiguous (row-major in t->shape order), in its own element type
 * (dst_bytes must be n_elements * ckpt_type_size). Strides and storage offsets are honoured. */
mg_status ckpt_read_raw(ckpt_file *f, const ckpt_tensor *t, void *dst, size_t dst_bytes,
                        char *err, size_t err_len);
/* Same, converted to float (f16/bf16/f64/integers/bool converted); n must be t->n_elements. */
mg_status ckpt_read_f32(ckpt_file *f, const ckpt_tensor *t, float *dst, int64_t n, char *err,
                        size_t err_len);

/* ==== internals shared by torchload.c and safetensors.c ==== */

typedef struct {
    const uint8_t *data;     /* the bytes in the mapping, or NULL when zent must be inflated */
    const zip_entry *zent;   /* deflated zip entry (data == NULL) */
    int32_t part;
    uint64_t nbytes;
    int type;
} ckpt_storage;

/* Appends a storage; returns its index or -1 (out of memory). */
int32_t ckpt_add_storage(ckpt_file *f, const ckpt_storage *s);
/* Appends a tensor (name copied) after checking its extent against its storage. */
mg_status ckpt_add_tensor(ckpt_file *f, const char *name, const ckpt_tensor *t, char *err,
                          size_t err_len);
/* Parsers of one part's bytes (part index in f), in torchload.c and safetensors.c. */
mg_status ckpt_load_torch_zip(ckpt_file *f, int32_t part, char *err, size_t err_len);
mg_status ckpt_load_torch_legacy(ckpt_file *f, int32_t part, char *err, size_t err_len);
mg_status ckpt_load_safetensors(ckpt_file *f, int32_t part, char *err, size_t err_len);
/* The bytes and the zip archive of a part. */
const uint8_t *ckpt_part_data(const ckpt_file *f, int32_t part, size_t *size);
zip_archive *ckpt_part_zip(ckpt_file *f, int32_t part);

#endif
