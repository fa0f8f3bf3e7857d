/*
 * torchload.c - torch.save files: the zip layout (<folder>/data.pkl + <folder>/data/<key>, any
 * folder name) and the legacy stream of PyTorch < 1.6 (magic number, protocol version and
 * sys_info pickles, the main pickle, the sorted storage keys, then each storage as an int64
 * element count followed by its raw bytes). The unpickled object graph is walked for tensors;
 * nested dict keys are joined with '.' ({"model": {"w": t}} gives "model.w"), list items by
 * index. Only little-endian files are accepted.
 */
#include "ckpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WALK_MAX_DEPTH 32
#define WALK_MAX_VISITS ((size_t)1 << 22)
#define NAME_MAX_LEN 1024

typedef struct {
    ckpt_file *f;
    int32_t part;
    zip_archive *zip;   /* NULL for legacy files: storages are resolved before the walk */
    const char *prefix; /* zip folder */
    size_t visits;
    char name[NAME_MAX_LEN + 1];
    char *err;
    size_t err_len;
} walker;

/* Gives a storage object its index in f (for zip files: the data/<key> entry). */
static mg_status resolve_storage(walker *w, pk_obj *s) {
    if (s->u.storage.index >= 0) return MG_OK;
    if (!w->zip)
        return mg_err(w->err, w->err_len, MG_ERR_FORMAT, "torch legacy: storage '%.40s' has no data",
                      s->u.storage.key);
    char entry_name[NAME_MAX_LEN + 64];
    snprintf(entry_name, sizeof entry_name, "%s/data/%s", w->prefix, s->u.storage.key);
    const zip_entry *e = zip_find(w->zip, entry_name);
    if (!e) return mg_err(w->err, w->err_len, MG_ERR_FORMAT, "torch zip: missing entry '%.200s'", entry_name);
    size_t size;
    const uint8_t *base = ckpt_part_data(w->f, w->part, &size);
    ckpt_storage cs = {.part = w->part, .nbytes = e->size, .type = s->u.storage.type};
    if (e->method == 0) cs.data = base + e->data_offset;
    else cs.zent = e;
    s->u.storage.index = ckpt_add_storage(w->f, &cs);
    if (s->u.storage.index < 0) return mg_err(w->err, w->err_len, MG_ERR_NOMEM, "checkpoint: out of memory");
    return MG_OK;
}

static mg_status add_tensor(walker *w, pk_obj *o) {
    pk_obj *s = o->u.tensor.storage;
    mg_status st = resolve_storage(w, s);
    if (st != MG_OK) return st;
    ckpt_tensor t;
    memset(&t, 0, sizeof t);
    t.type = s->u.storage.type;
    t.n_dims = o->u.tensor.n_dims;
    t.storage_offset = o->u.tensor.offset;
    t.storage = s->u.storage.index;
    for (int i = 0; i < t.n_dims; i++) {
        t.shape[i] = o->u.tensor.shape[i];
        t.stride[i] = o->u.tensor.stride[i];
    }
    return ckpt_add_tensor(w->f, w->name, &t, w->err, w->err_len);
}

/* Appends ".key" (or "key" at the root) to the name; false when it would be too long. */
static bool push_name(walker *w, size_t len, const char *key) {
    int n = snprintf(w->name + len, sizeof w->name - len, "%s%s", len ? "." : "", key);
    return n >= 0 && (size_t)n < sizeof w->name - len;
}

static mg_status walk(walker *w, pk_obj *o, size_t len, int depth) {
    if (++w->visits > WALK_MAX_VISITS)
        return mg_err(w->err, w->err_len, MG_ERR_FORMAT, "torch: object graph too large");
    if (o->kind == PK_TENSOR) return add_tensor(w, o);
    if (o->kind != PK_DICT && o->kind != PK_LIST && o->kind != PK_TUPLE) return MG_OK;
    if (depth >= WALK_MAX_DEPTH)
        return mg_err(w->err, w->err_len, MG_ERR_FORMAT, "torch: containers nested too deeply");
    bool dict = o->kind == PK_DICT;
    size_t step = dict ? 2 : 1;
    for (size_t i = 0; i + step - 1 < o->u.seq.n; i += step) {
        pk_obj *v = o->u.seq.items[i + step - 1];
        if (v->kind != PK_TENSOR && v->kind != PK_DICT && v->kind != PK_LIST && v->kind != PK_TUPLE)
            continue;
        char key[32];
        const char *k = key;
        if (!dict) snprintf(key, sizeof key, "%zu", i);
        else if (o->u.seq.items[i]->kind == PK_STR) k = o->u.seq.items[i]->u.str.s;
        else if (o->u.seq.items[i]->kind == PK_INT) snprintf(key, sizeof key, "%lld", (long long)o->u.seq.items[i]->u.i);
        else continue;
        if (!push_name(w, len, k))
            return mg_err(w->err, w->err_len, MG_ERR_FORMAT, "torch: tensor name longer than %d bytes", NAME_MAX_LEN);
        mg_status st = walk(w, v, strlen(w->name), depth + 1);
        w->name[len] = 0;
        if (st != MG_OK) return st;
    }
    return MG_OK;
}

static mg_status walk_root(ckpt_file *f, int32_t part, zip_archive *zip, const char *prefix, pk_obj *root,
                           char *err, size_t err_len) {
    walker w = {.f = f, .part = part, .zip = zip, .prefix = prefix, .err = err, .err_len = err_len};
    return walk(&w, root, 0, 0);
}

mg_status ckpt_load_torch_zip(ckpt_file *f, int32_t part, char *err, size_t err_len) {
    size_t size;
    const uint8_t *data = ckpt_part_data(f, part, &size);
    zip_archive *z = ckpt_part_zip(f, part);
    mg_status st = zip_open(z, data, size, err, err_len);
    if (st != MG_OK) return st;
    const zip_entry *pkl = NULL;
    for (size_t i = 0; i < z->n_entries && !pkl; i++) {
        const char *n = z->entries[i].name, *slash = strchr(n, '/');
        if (slash && slash > n && strcmp(slash, "/data.pkl") == 0) pkl = &z->entries[i];
    }
    if (!pkl) return mg_err(err, err_len, MG_ERR_FORMAT, "torch zip: no <folder>/data.pkl (not a torch.save file?)");
    char prefix[NAME_MAX_LEN];
    snprintf(prefix, sizeof prefix, "%.*s", (int)(strchr(pkl->name, '/') - pkl->name), pkl->name);
    const uint8_t *ptr;
    uint8_t *owned;
    char name[NAME_MAX_LEN + 32];
    snprintf(name, sizeof name, "%s/byteorder", prefix);
    const zip_entry *bo = zip_find(z, name);
    if (bo) {
        if ((st = zip_entry_data(z, bo, 1, &ptr, &owned, err, err_len)) != MG_OK) return st;
        bool little = bo->size == 6 && memcmp(ptr, "little", 6) == 0;
        free(owned);
        if (!little) return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "torch zip: big-endian files are not supported");
    }
    if ((st = zip_entry_data(z, pkl, 1, &ptr, &owned, err, err_len)) != MG_OK) return st;
    pk_ctx *pk = pk_new();
    pk_obj *root;
    if (!pk) st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    else if ((st = pk_load(pk, ptr, (size_t)pkl->size, NULL, &root, err, err_len)) == MG_OK)
        st = walk_root(f, part, z, prefix, root, err, err_len);
    pk_free(pk);
    free(owned);
    return st;
}

/* The pickle torch writes first in a legacy file: protocol 2, LONG1 0x1950a86a20f9469cfc6c, STOP. */
static const uint8_t legacy_magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                       0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};

/* Looks up a string key in an unpickled dict; NULL when absent. */
static pk_obj *dict_get(pk_obj *d, const char *key) {
    for (size_t i = 0; d->kind == PK_DICT && i + 1 < d->u.seq.n; i += 2)
        if (d->u.seq.items[i]->kind == PK_STR && strcmp(d->u.seq.items[i]->u.str.s, key) == 0)
            return d->u.seq.items[i + 1];
    return NULL;
}

/* Reads the storage section: for each key, int64 element count then the bytes. */
static mg_status legacy_storages(ckpt_file *f, int32_t part, pk_ctx *pk, pk_obj *keys, size_t pos,
                                 char *err, size_t err_len) {
    size_t size;
    const uint8_t *data = ckpt_part_data(f, part, &size);
    if (keys->kind != PK_LIST) return mg_err(err, err_len, MG_ERR_FORMAT, "torch legacy: storage keys are not a list");
    for (size_t i = 0; i < keys->u.seq.n; i++) {
        pk_obj *k = keys->u.seq.items[i];
        pk_obj *s = k->kind == PK_STR ? pk_find_storage(pk, k->u.str.s) : NULL;
        if (!s) return mg_err(err, err_len, MG_ERR_FORMAT, "torch legacy: storage key %zu is unknown", i);
        if (s->u.storage.index >= 0)
            return mg_err(err, err_len, MG_ERR_FORMAT, "torch legacy: storage '%.40s' listed twice", s->u.storage.key);
        if (size - pos < 8) return mg_err(err, err_len, MG_ERR_FORMAT, "torch legacy: truncated storage header");
        uint64_t numel = 0, nbytes;
        for (int b = 7; b >= 0; b--) numel = (numel << 8) | data[pos + (size_t)b];
        pos += 8;
        if (__builtin_mul_overflow(numel, (uint64_t)ckpt_type_size(s->u.storage.type), &nbytes) ||
            nbytes > size - pos)
            return mg_err(err, err_len, MG_ERR_FORMAT, "torch legacy: storage '%.40s' overruns the file",
                          s->u.storage.key);
        ckpt_storage cs = {.data = data + pos, .part = part, .nbytes = nbytes, .type = s->u.storage.type};
        s->u.storage.index = ckpt_add_storage(f, &cs);
        if (s->u.storage.index < 0) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
        pos += (size_t)nbytes;
    }
    return MG_OK;
}

mg_status ckpt_load_torch_legacy(ckpt_file *f, int32_t part, char *err, size_t err_len) {
    size_t size;
    const uint8_t *data = ckpt_part_data(f, part, &size);
    if (size < sizeof legacy_magic || memcmp(data, legacy_magic, sizeof legacy_magic) != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "torch legacy: bad magic number (not a torch.save file)");
    size_t pos = sizeof legacy_magic, used;
    pk_ctx *pk = pk_new();
    if (!pk) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    pk_obj *proto, *info, *root, *keys, *le;
    mg_status st = pk_load(pk, data + pos, size - pos, &used, &proto, err, err_len);
    if (st != MG_OK) goto done;
    pos += used;
    if (proto->kind != PK_INT || proto->u.i != 1001) {
        st = mg_err(err, err_len, MG_ERR_UNSUPPORTED, "torch legacy: unknown protocol version");
        goto done;
    }
    if ((st = pk_load(pk, data + pos, size - pos, &used, &info, err, err_len)) != MG_OK) goto done;
    pos += used;
    if (info->kind != PK_DICT || ((le = dict_get(info, "little_endian")) && (le->kind != PK_BOOL || !le->u.i))) {
        st = mg_err(err, err_len, MG_ERR_UNSUPPORTED, "torch legacy: big-endian or unknown sys_info");
        goto done;
    }
    if ((st = pk_load(pk, data + pos, size - pos, &used, &root, err, err_len)) != MG_OK) goto done;
    pos += used;
    if ((st = pk_load(pk, data + pos, size - pos, &used, &keys, err, err_len)) != MG_OK) goto done;
    pos += used;
    if ((st = legacy_storages(f, part, pk, keys, pos, err, err_len)) != MG_OK) goto done;
    st = walk_root(f, part, NULL, "", root, err, err_len);
done:
    pk_free(pk);
    return st;
}
