/*
 * pickle.c - a restricted unpickler for PyTorch state dicts. It implements only the opcodes
 * torch.save (protocol 2, and the protocol 3/4 forms a custom pickle_protocol gives) and legacy
 * files use, and only the globals a state dict needs (OrderedDict, the torch tensor rebuild
 * functions, the torch.XStorage classes). Any other global is refused when its GLOBAL or
 * STACK_GLOBAL opcode is read, i.e. before anything could call it: nothing here executes code.
 * Memory is bounded (PK_MAX_MEM for all objects of a context); there is no recursion.
 */
#include "ckpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PK_MAX_MEM ((size_t)512 << 20)
#define PK_MAX_MEMO ((size_t)1 << 24)
#define PK_MAX_GLOBAL_NAME 256

struct pk_ctx {
    pk_obj **objs; /* every object, for pk_free */
    size_t n_objs, cap_objs;
    size_t mem;    /* bytes charged against PK_MAX_MEM */
    pk_obj **storages; /* open-addressing table keyed by storage key */
    size_t cap_storages, n_storages;
};

typedef struct {
    pk_ctx *ctx;
    const uint8_t *d;
    size_t size, pos;
    pk_obj **stack;
    size_t n_stack, cap_stack;
    size_t *marks;
    size_t n_marks, cap_marks;
    pk_obj **memo;
    size_t cap_memo, n_memo_set;
    char *err;
    size_t err_len;
} pk_vm;

static const struct {
    const char *module, *name;
    pk_global_id id;
    int type;
} whitelist[] = {
    {"collections", "OrderedDict", PK_G_ORDERED_DICT, 0},
    {"torch._utils", "_rebuild_tensor_v2", PK_G_REBUILD_TENSOR_V2, 0},
    {"torch._utils", "_rebuild_tensor", PK_G_REBUILD_TENSOR, 0},
    {"torch._utils", "_rebuild_parameter", PK_G_REBUILD_PARAMETER, 0},
    {"torch._utils", "_rebuild_parameter_with_state", PK_G_REBUILD_PARAMETER_WITH_STATE, 0},
    {"torch", "FloatStorage", PK_G_STORAGE_TYPE, MG_TYPE_F32},
    {"torch", "HalfStorage", PK_G_STORAGE_TYPE, MG_TYPE_F16},
    {"torch", "BFloat16Storage", PK_G_STORAGE_TYPE, MG_TYPE_BF16},
    {"torch", "DoubleStorage", PK_G_STORAGE_TYPE, MG_TYPE_F64},
    {"torch", "LongStorage", PK_G_STORAGE_TYPE, MG_TYPE_I64},
    {"torch", "IntStorage", PK_G_STORAGE_TYPE, MG_TYPE_I32},
    {"torch", "ShortStorage", PK_G_STORAGE_TYPE, MG_TYPE_I16},
    {"torch", "CharStorage", PK_G_STORAGE_TYPE, MG_TYPE_I8},
    {"torch", "ByteStorage", PK_G_STORAGE_TYPE, CKPT_TYPE_U8},
    {"torch", "BoolStorage", PK_G_STORAGE_TYPE, CKPT_TYPE_BOOL},
};

/* ==== Context and allocation ==== */

pk_ctx *pk_new(void) { return calloc(1, sizeof(pk_ctx)); }

static void free_obj(pk_obj *o) {
    switch (o->kind) {
    case PK_STR: case PK_BYTES: free(o->u.str.s); break;
    case PK_TUPLE: case PK_LIST: case PK_DICT: free(o->u.seq.items); break;
    case PK_STORAGE: free(o->u.storage.key); break;
    default: break;
    }
    free(o);
}

void pk_free(pk_ctx *ctx) {
    if (!ctx) return;
    for (size_t i = 0; i < ctx->n_objs; i++) free_obj(ctx->objs[i]);
    free(ctx->objs);
    free(ctx->storages);
    free(ctx);
}

static mg_status fail(pk_vm *vm, mg_status st, const char *fmt, const char *arg) {
    char msg[200];
    snprintf(msg, sizeof msg, fmt, arg);
    return mg_err(vm->err, vm->err_len, st, "pickle: %s (at byte %zu)", msg, vm->pos);
}

/* Charges n bytes to the context; false when the budget is exhausted. */
static bool charge(pk_ctx *ctx, size_t n) {
    if (n > PK_MAX_MEM - ctx->mem) return false;
    ctx->mem += n;
    return true;
}

/* Grows *arr (of elem-sized items, capacity *cap) to hold need items, charging the context. */
static bool grow(pk_ctx *ctx, void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t nc = *cap ? *cap : 8, bytes;
    while (nc < need) {
        if (nc > SIZE_MAX / 2) return false;
        nc *= 2;
    }
    if (!mg_mul_ok(nc, elem, &bytes) || !charge(ctx, bytes - *cap * elem)) return false;
    void *p = realloc(*arr, bytes);
    if (!p) return false;
    *arr = p;
    *cap = nc;
    return true;
}

static pk_obj *new_obj(pk_ctx *ctx, pk_kind kind) {
    if (!grow(ctx, (void **)&ctx->objs, &ctx->cap_objs, ctx->n_objs + 1, sizeof(pk_obj *))) return NULL;
    if (!charge(ctx, sizeof(pk_obj))) return NULL;
    pk_obj *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    o->kind = kind;
    ctx->objs[ctx->n_objs++] = o;
    return o;
}

static pk_obj *new_str(pk_ctx *ctx, pk_kind kind, const uint8_t *s, size_t len) {
    if (len == SIZE_MAX || !charge(ctx, len + 1)) return NULL;
    char *copy = malloc(len + 1);
    if (!copy) return NULL;
    pk_obj *o = new_obj(ctx, kind);
    if (!o) { free(copy); return NULL; }
    memcpy(copy, s, len);
    copy[len] = 0;
    o->u.str.s = copy;
    o->u.str.len = len;
    return o;
}

static bool seq_append(pk_ctx *ctx, pk_obj *o, pk_obj *item) {
    if (!grow(ctx, (void **)&o->u.seq.items, &o->u.seq.cap, o->u.seq.n + 1, sizeof(pk_obj *)))
        return false;
    o->u.seq.items[o->u.seq.n++] = item;
    return true;
}

/* ==== Storage registry (one object per storage key) ==== */

static size_t hash_str(const char *s) {
    size_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

pk_obj *pk_find_storage(pk_ctx *ctx, const char *key) {
    if (!ctx->cap_storages) return NULL;
    for (size_t i = hash_str(key) & (ctx->cap_storages - 1);; i = (i + 1) & (ctx->cap_storages - 1)) {
        pk_obj *o = ctx->storages[i];
        if (!o) return NULL;
        if (strcmp(o->u.storage.key, key) == 0) return o;
    }
}

static bool register_storage(pk_ctx *ctx, pk_obj *o) {
    if ((ctx->n_storages + 1) * 2 > ctx->cap_storages) {
        size_t nc = ctx->cap_storages ? ctx->cap_storages * 2 : 64;
        if (nc > ((size_t)1 << 26) || !charge(ctx, nc * sizeof(pk_obj *))) return false;
        pk_obj **t = calloc(nc, sizeof *t);
        if (!t) return false;
        for (size_t j = 0; j < ctx->cap_storages; j++) {
            pk_obj *s = ctx->storages[j];
            if (!s) continue;
            size_t i = hash_str(s->u.storage.key) & (nc - 1);
            while (t[i]) i = (i + 1) & (nc - 1);
            t[i] = s;
        }
        free(ctx->storages);
        ctx->storages = t;
        ctx->cap_storages = nc;
    }
    size_t i = hash_str(o->u.storage.key) & (ctx->cap_storages - 1);
    while (ctx->storages[i]) i = (i + 1) & (ctx->cap_storages - 1);
    ctx->storages[i] = o;
    ctx->n_storages++;
    return true;
}

/* ==== The machine ==== */

#define NOMEM(vm) fail(vm, MG_ERR_NOMEM, "%s", "out of memory or over the size cap")

static mg_status push(pk_vm *vm, pk_obj *o) {
    if (!o) return NOMEM(vm);
    if (!grow(vm->ctx, (void **)&vm->stack, &vm->cap_stack, vm->n_stack + 1, sizeof(pk_obj *)))
        return NOMEM(vm);
    vm->stack[vm->n_stack++] = o;
    return MG_OK;
}

/* The stack floor: objects below the innermost MARK are not visible to plain pops. */
static size_t floor_of(const pk_vm *vm) { return vm->n_marks ? vm->marks[vm->n_marks - 1] : 0; }

static pk_obj *pop(pk_vm *vm) {
    if (vm->n_stack <= floor_of(vm)) return NULL;
    return vm->stack[--vm->n_stack];
}

static pk_obj *top(pk_vm *vm) {
    if (vm->n_stack <= floor_of(vm)) return NULL;
    return vm->stack[vm->n_stack - 1];
}

/* Pops the innermost MARK; the items above it are stack[*start .. n_stack). */
static bool pop_mark(pk_vm *vm, size_t *start) {
    if (!vm->n_marks) return false;
    *start = vm->marks[--vm->n_marks];
    return true;
}

static bool need(pk_vm *vm, size_t n) { return n <= vm->size - vm->pos; }

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static pk_obj *new_int(pk_ctx *ctx, pk_kind kind, int64_t v) {
    pk_obj *o = new_obj(ctx, kind);
    if (o) o->u.i = v;
    return o;
}

static mg_status memo_put(pk_vm *vm, uint64_t key) {
    pk_obj *o = top(vm);
    if (!o) return fail(vm, MG_ERR_FORMAT, "%s", "memo put with an empty stack");
    /* A pickler numbers memo entries from 0 and each needs an opcode, so a key is below the
     * bytes read so far: this keeps the memo's memory proportional to the input. */
    if (key >= PK_MAX_MEMO || key > vm->pos) return fail(vm, MG_ERR_FORMAT, "%s", "memo key out of range");
    size_t old = vm->cap_memo;
    if (!grow(vm->ctx, (void **)&vm->memo, &vm->cap_memo, (size_t)key + 1, sizeof(pk_obj *)))
        return NOMEM(vm);
    if (vm->cap_memo > old) memset(vm->memo + old, 0, (vm->cap_memo - old) * sizeof(pk_obj *));
    if (!vm->memo[key]) vm->n_memo_set++;
    vm->memo[key] = o;
    return MG_OK;
}

static mg_status memo_get(pk_vm *vm, uint64_t key) {
    if (key >= vm->cap_memo || !vm->memo[key])
        return fail(vm, MG_ERR_FORMAT, "%s", "memo get of a missing key");
    return push(vm, vm->memo[key]);
}

/* Resolves module.name against the whitelist; anything else is refused here, before use. */
static mg_status push_global(pk_vm *vm, const char *module, size_t mlen, const char *name, size_t nlen) {
    for (size_t i = 0; i < MG_ARRAY_LEN(whitelist); i++) {
        if (strlen(whitelist[i].module) == mlen && memcmp(whitelist[i].module, module, mlen) == 0 &&
            strlen(whitelist[i].name) == nlen && memcmp(whitelist[i].name, name, nlen) == 0) {
            pk_obj *o = new_obj(vm->ctx, PK_GLOBAL);
            if (o) {
                o->u.global.id = whitelist[i].id;
                o->u.global.type = whitelist[i].type;
            }
            return push(vm, o);
        }
    }
    char full[2 * PK_MAX_GLOBAL_NAME + 2];
    snprintf(full, sizeof full, "%.*s.%.*s", (int)MG_MIN(mlen, PK_MAX_GLOBAL_NAME), module,
             (int)MG_MIN(nlen, PK_MAX_GLOBAL_NAME), name);
    for (char *p = full; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f) *p = '?';
    return mg_err(vm->err, vm->err_len, MG_ERR_UNSUPPORTED,
                  "pickle: refused global '%s' (not a PyTorch state-dict type; loading never runs code) "
                  "(at byte %zu)", full, vm->pos);
}

/* GLOBAL: "module\nname\n" as text lines. */
static mg_status op_global(pk_vm *vm) {
    const char *s[2];
    size_t len[2];
    for (int k = 0; k < 2; k++) {
        const uint8_t *start = vm->d + vm->pos;
        size_t left = MG_MIN(vm->size - vm->pos, (size_t)PK_MAX_GLOBAL_NAME + 1);
        const uint8_t *nl = memchr(start, '\n', left);
        if (!nl) return fail(vm, MG_ERR_FORMAT, "%s", "unterminated or overlong GLOBAL name");
        s[k] = (const char *)start;
        len[k] = (size_t)(nl - start);
        vm->pos += len[k] + 1;
    }
    return push_global(vm, s[0], len[0], s[1], len[1]);
}

static bool get_int(const pk_obj *o, int64_t *v) {
    if (!o || (o->kind != PK_INT && o->kind != PK_BOOL)) return false;
    *v = o->u.i;
    return true;
}

/* _rebuild_tensor[_v2](storage, offset, size, stride, ...) */
static mg_status rebuild_tensor(pk_vm *vm, pk_obj *args, size_t n_min, size_t n_max) {
    if (args->u.seq.n < n_min || args->u.seq.n > n_max)
        return fail(vm, MG_ERR_FORMAT, "%s", "tensor rebuild with a wrong argument count");
    pk_obj **a = args->u.seq.items, *size = a[2], *stride = a[3];
    int64_t off;
    if (a[0]->kind != PK_STORAGE || !get_int(a[1], &off) || off < 0 || size->kind != PK_TUPLE ||
        stride->kind != PK_TUPLE || size->u.seq.n != stride->u.seq.n)
        return fail(vm, MG_ERR_FORMAT, "%s", "tensor rebuild with bad arguments");
    if (size->u.seq.n > CKPT_MAX_DIMS)
        return fail(vm, MG_ERR_UNSUPPORTED, "%s", "tensor with more than 8 dimensions");
    pk_obj *t = new_obj(vm->ctx, PK_TENSOR);
    if (!t) return NOMEM(vm);
    t->u.tensor.storage = a[0];
    t->u.tensor.offset = off;
    t->u.tensor.n_dims = (int)size->u.seq.n;
    for (size_t i = 0; i < size->u.seq.n; i++) {
        int64_t d, s;
        if (!get_int(size->u.seq.items[i], &d) || !get_int(stride->u.seq.items[i], &s) || d < 0 || s < 0)
            return fail(vm, MG_ERR_FORMAT, "%s", "tensor rebuild with a bad size or stride");
        t->u.tensor.shape[i] = d;
        t->u.tensor.stride[i] = s;
    }
    return push(vm, t);
}

static mg_status op_reduce(pk_vm *vm) {
    pk_obj *args = pop(vm), *fn = pop(vm);
    if (!args || !fn) return fail(vm, MG_ERR_FORMAT, "%s", "REDUCE with a short stack");
    if (fn->kind != PK_GLOBAL) return fail(vm, MG_ERR_FORMAT, "%s", "REDUCE of a non-callable");
    if (args->kind != PK_TUPLE) return fail(vm, MG_ERR_FORMAT, "%s", "REDUCE arguments are not a tuple");
    size_t n = args->u.seq.n;
    switch (fn->u.global.id) {
    case PK_G_ORDERED_DICT:
        if (n != 0) return fail(vm, MG_ERR_UNSUPPORTED, "%s", "OrderedDict with constructor arguments");
        return push(vm, new_obj(vm->ctx, PK_DICT));
    case PK_G_REBUILD_TENSOR_V2: return rebuild_tensor(vm, args, 6, 7);
    case PK_G_REBUILD_TENSOR: return rebuild_tensor(vm, args, 4, 4);
    case PK_G_REBUILD_PARAMETER:
    case PK_G_REBUILD_PARAMETER_WITH_STATE:
        if (n < 1 || args->u.seq.items[0]->kind != PK_TENSOR)
            return fail(vm, MG_ERR_FORMAT, "%s", "parameter rebuild without a tensor");
        return push(vm, args->u.seq.items[0]);
    case PK_G_STORAGE_TYPE: break;
    }
    return fail(vm, MG_ERR_UNSUPPORTED, "%s", "calling a storage class is not supported");
}

/* BINPERSID: ('storage', <storage class>, key, location, numel[, view_metadata]). */
static mg_status op_persid(pk_vm *vm) {
    pk_obj *pid = pop(vm);
    if (!pid || pid->kind != PK_TUPLE || pid->u.seq.n < 5 || pid->u.seq.n > 6)
        return fail(vm, MG_ERR_FORMAT, "%s", "persistent id is not a storage tuple");
    pk_obj **a = pid->u.seq.items;
    int64_t numel;
    if (a[0]->kind != PK_STR || strcmp(a[0]->u.str.s, "storage") != 0 || a[1]->kind != PK_GLOBAL ||
        a[1]->u.global.id != PK_G_STORAGE_TYPE || a[2]->kind != PK_STR || a[3]->kind != PK_STR ||
        !get_int(a[4], &numel) || numel < 0)
        return fail(vm, MG_ERR_FORMAT, "%s", "persistent id is not a storage tuple");
    if (pid->u.seq.n == 6 && a[5]->kind != PK_NONE)
        return fail(vm, MG_ERR_UNSUPPORTED, "%s", "legacy storage views are not supported");
    if (strncmp(a[3]->u.str.s, "cpu", 3) != 0 && strncmp(a[3]->u.str.s, "cuda", 4) != 0)
        return fail(vm, MG_ERR_UNSUPPORTED, "storage location '%.40s' is not supported", a[3]->u.str.s);
    int type = a[1]->u.global.type;
    pk_obj *s = pk_find_storage(vm->ctx, a[2]->u.str.s);
    if (s) {
        if (s->u.storage.type != type)
            return fail(vm, MG_ERR_UNSUPPORTED, "storage '%.40s' is used with two element types", a[2]->u.str.s);
        return push(vm, s);
    }
    pk_obj *key = new_str(vm->ctx, PK_BYTES, (const uint8_t *)a[2]->u.str.s, a[2]->u.str.len);
    s = new_obj(vm->ctx, PK_STORAGE);
    if (!key || !s) return NOMEM(vm);
    /* The storage takes over the key string. */
    s->u.storage.key = key->u.str.s;
    key->kind = PK_NONE;
    s->u.storage.type = type;
    s->u.storage.numel = numel;
    s->u.storage.index = -1;
    if (!register_storage(vm->ctx, s)) return NOMEM(vm);
    return push(vm, s);
}

/* Pops a MARK and the items above it into a new tuple/list/dict (dict: items as k,v pairs). */
static mg_status op_collect(pk_vm *vm, pk_kind kind) {
    size_t start;
    if (!pop_mark(vm, &start)) return fail(vm, MG_ERR_FORMAT, "%s", "missing MARK");
    size_t n = vm->n_stack - start;
    if (kind == PK_DICT && n % 2) return fail(vm, MG_ERR_FORMAT, "%s", "odd item count for a dict");
    pk_obj *o = new_obj(vm->ctx, kind);
    if (!o) return NOMEM(vm);
    for (size_t i = start; i < vm->n_stack; i++)
        if (!seq_append(vm->ctx, o, vm->stack[i])) return NOMEM(vm);
    vm->n_stack = start;
    return push(vm, o);
}

static mg_status op_tuple_n(pk_vm *vm, size_t n) {
    if (vm->n_stack - floor_of(vm) < n) return fail(vm, MG_ERR_FORMAT, "%s", "TUPLEn with a short stack");
    pk_obj *o = new_obj(vm->ctx, PK_TUPLE);
    if (!o) return NOMEM(vm);
    for (size_t i = vm->n_stack - n; i < vm->n_stack; i++)
        if (!seq_append(vm->ctx, o, vm->stack[i])) return NOMEM(vm);
    vm->n_stack -= n;
    return push(vm, o);
}

/* APPEND(S) into a list, SETITEM(S) into a dict: the items above the mark (or the last 1/2). */
static mg_status op_extend(pk_vm *vm, bool use_mark, pk_kind kind) {
    size_t start;
    if (use_mark) {
        if (!pop_mark(vm, &start)) return fail(vm, MG_ERR_FORMAT, "%s", "missing MARK");
    } else {
        size_t k = kind == PK_DICT ? 2 : 1;
        if (vm->n_stack - floor_of(vm) < k + 1) return fail(vm, MG_ERR_FORMAT, "%s", "short stack");
        start = vm->n_stack - k;
    }
    if (start == 0 || start <= floor_of(vm)) return fail(vm, MG_ERR_FORMAT, "%s", "nothing to add items to");
    pk_obj *target = vm->stack[start - 1];
    if (target->kind != kind)
        return fail(vm, MG_ERR_FORMAT, "%s", kind == PK_DICT ? "SETITEM on a non-dict" : "APPEND on a non-list");
    if (kind == PK_DICT && (vm->n_stack - start) % 2) return fail(vm, MG_ERR_FORMAT, "%s", "odd SETITEMS");
    for (size_t i = start; i < vm->n_stack; i++)
        if (!seq_append(vm->ctx, target, vm->stack[i])) return NOMEM(vm);
    vm->n_stack = start;
    return MG_OK;
}

static mg_status op_string(pk_vm *vm, pk_kind kind, int len_bytes) {
    if (!need(vm, (size_t)len_bytes)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated string length");
    uint64_t len = le(vm->d + vm->pos, len_bytes);
    vm->pos += (size_t)len_bytes;
    if (len > vm->size - vm->pos) return fail(vm, MG_ERR_FORMAT, "%s", "truncated string");
    pk_obj *o = new_str(vm->ctx, kind, vm->d + vm->pos, (size_t)len);
    vm->pos += (size_t)len;
    return push(vm, o);
}

static mg_status op_long(pk_vm *vm, int len_bytes) {
    if (!need(vm, (size_t)len_bytes)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated LONG");
    uint64_t n = le(vm->d + vm->pos, len_bytes);
    vm->pos += (size_t)len_bytes;
    if (n > 8) return fail(vm, MG_ERR_UNSUPPORTED, "%s", "integer wider than 64 bits");
    if (!need(vm, (size_t)n)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated LONG");
    uint64_t v = le(vm->d + vm->pos, (int)n);
    if (n > 0 && n < 8 && (vm->d[vm->pos + n - 1] & 0x80)) v |= ~(uint64_t)0 << (8 * n);
    vm->pos += (size_t)n;
    return push(vm, new_int(vm->ctx, PK_INT, (int64_t)v));
}

/* Executes one opcode (already consumed); *stop set on STOP. */
static mg_status step(pk_vm *vm, uint8_t op, pk_obj **result, bool *stop) {
    pk_ctx *ctx = vm->ctx;
    uint64_t v;
    switch (op) {
    case 0x80: /* PROTO */
        if (!need(vm, 1)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated PROTO");
        if (vm->d[vm->pos] > 5) return fail(vm, MG_ERR_UNSUPPORTED, "%s", "pickle protocol above 5");
        vm->pos++;
        return MG_OK;
    case 0x95: /* FRAME: a length hint only */
        if (!need(vm, 8)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated FRAME");
        vm->pos += 8;
        return MG_OK;
    case 0x2e: /* STOP */
        *result = pop(vm);
        if (!*result) return fail(vm, MG_ERR_FORMAT, "%s", "STOP with an empty stack");
        *stop = true;
        return MG_OK;
    case 0x28: /* MARK */
        if (!grow(ctx, (void **)&vm->marks, &vm->cap_marks, vm->n_marks + 1, sizeof(size_t))) return NOMEM(vm);
        vm->marks[vm->n_marks++] = vm->n_stack;
        return MG_OK;
    case 0x30: /* POP */
        if (!pop(vm)) {
            size_t s;
            if (vm->n_stack != floor_of(vm) || !pop_mark(vm, &s))
                return fail(vm, MG_ERR_FORMAT, "%s", "POP on an empty stack");
        }
        return MG_OK;
    case 0x31: { /* POP_MARK */
        size_t start;
        if (!pop_mark(vm, &start)) return fail(vm, MG_ERR_FORMAT, "%s", "missing MARK");
        vm->n_stack = start;
        return MG_OK;
    }
    case 0x32: /* DUP */
        if (!top(vm)) return fail(vm, MG_ERR_FORMAT, "%s", "DUP on an empty stack");
        return push(vm, top(vm));
    case 0x4e: return push(vm, new_obj(ctx, PK_NONE));
    case 0x88: return push(vm, new_int(ctx, PK_BOOL, 1));
    case 0x89: return push(vm, new_int(ctx, PK_BOOL, 0));
    case 0x4a: /* BININT: signed 32-bit */
        if (!need(vm, 4)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated BININT");
        v = le(vm->d + vm->pos, 4);
        vm->pos += 4;
        return push(vm, new_int(ctx, PK_INT, (int32_t)(uint32_t)v));
    case 0x4b: /* BININT1 */
    case 0x4d: { /* BININT2 */
        int n = op == 0x4b ? 1 : 2;
        if (!need(vm, (size_t)n)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated BININT");
        v = le(vm->d + vm->pos, n);
        vm->pos += (size_t)n;
        return push(vm, new_int(ctx, PK_INT, (int64_t)v));
    }
    case 0x8a: return op_long(vm, 1);
    case 0x8b: return op_long(vm, 4);
    case 0x47: { /* BINFLOAT: big-endian double */
        if (!need(vm, 8)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated BINFLOAT");
        v = 0;
        for (int i = 0; i < 8; i++) v = (v << 8) | vm->d[vm->pos + (size_t)i];
        vm->pos += 8;
        pk_obj *o = new_obj(ctx, PK_FLOAT);
        if (o) memcpy(&o->u.f, &v, 8);
        return push(vm, o);
    }
    case 0x58: return op_string(vm, PK_STR, 4);   /* BINUNICODE */
    case 0x8c: return op_string(vm, PK_STR, 1);   /* SHORT_BINUNICODE */
    case 0x8d: return op_string(vm, PK_STR, 8);   /* BINUNICODE8 */
    case 0x54: return op_string(vm, PK_STR, 4);   /* BINSTRING (Python 2 str) */
    case 0x55: return op_string(vm, PK_STR, 1);   /* SHORT_BINSTRING */
    case 0x42: return op_string(vm, PK_BYTES, 4); /* BINBYTES */
    case 0x43: return op_string(vm, PK_BYTES, 1); /* SHORT_BINBYTES */
    case 0x8e: return op_string(vm, PK_BYTES, 8); /* BINBYTES8 */
    case 0x7d: return push(vm, new_obj(ctx, PK_DICT));
    case 0x5d: return push(vm, new_obj(ctx, PK_LIST));
    case 0x29: return push(vm, new_obj(ctx, PK_TUPLE));
    case 0x74: return op_collect(vm, PK_TUPLE);
    case 0x6c: return op_collect(vm, PK_LIST);
    case 0x64: return op_collect(vm, PK_DICT);
    case 0x85: return op_tuple_n(vm, 1);
    case 0x86: return op_tuple_n(vm, 2);
    case 0x87: return op_tuple_n(vm, 3);
    case 0x61: return op_extend(vm, false, PK_LIST); /* APPEND */
    case 0x65: return op_extend(vm, true, PK_LIST);  /* APPENDS */
    case 0x73: return op_extend(vm, false, PK_DICT); /* SETITEM */
    case 0x75: return op_extend(vm, true, PK_DICT);  /* SETITEMS */
    case 0x71: /* BINPUT */
        if (!need(vm, 1)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated BINPUT");
        return memo_put(vm, vm->d[vm->pos++]);
    case 0x72: /* LONG_BINPUT */
        if (!need(vm, 4)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated LONG_BINPUT");
        vm->pos += 4;
        return memo_put(vm, le(vm->d + vm->pos - 4, 4));
    case 0x94: return memo_put(vm, vm->n_memo_set); /* MEMOIZE */
    case 0x68: /* BINGET */
        if (!need(vm, 1)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated BINGET");
        return memo_get(vm, vm->d[vm->pos++]);
    case 0x6a: /* LONG_BINGET */
        if (!need(vm, 4)) return fail(vm, MG_ERR_FORMAT, "%s", "truncated LONG_BINGET");
        vm->pos += 4;
        return memo_get(vm, le(vm->d + vm->pos - 4, 4));
    case 0x63: return op_global(vm);
    case 0x93: { /* STACK_GLOBAL */
        pk_obj *name = pop(vm), *module = pop(vm);
        if (!name || !module || name->kind != PK_STR || module->kind != PK_STR)
            return fail(vm, MG_ERR_FORMAT, "%s", "STACK_GLOBAL without two strings");
        return push_global(vm, module->u.str.s, module->u.str.len, name->u.str.s, name->u.str.len);
    }
    case 0x52: return op_reduce(vm);
    case 0x81: { /* NEWOBJ: cls.__new__(cls, *args), only for OrderedDict */
        pk_obj *args = pop(vm), *cls = pop(vm);
        if (!args || !cls || cls->kind != PK_GLOBAL || cls->u.global.id != PK_G_ORDERED_DICT)
            return fail(vm, MG_ERR_UNSUPPORTED, "%s", "NEWOBJ of a class other than OrderedDict");
        return push(vm, new_obj(ctx, PK_DICT));
    }
    case 0x62: { /* BUILD: attributes of a state dict (e.g. _metadata) are not needed */
        pk_obj *state = pop(vm), *obj = top(vm);
        if (!state || !obj) return fail(vm, MG_ERR_FORMAT, "%s", "BUILD with a short stack");
        if (obj->kind != PK_DICT && obj->kind != PK_TENSOR)
            return fail(vm, MG_ERR_UNSUPPORTED, "%s", "BUILD on an object that is not a dict or tensor");
        return MG_OK;
    }
    case 0x51: return op_persid(vm);
    default: break;
    }
    char hex[8];
    snprintf(hex, sizeof hex, "0x%02x", op);
    return fail(vm, MG_ERR_UNSUPPORTED, "unsupported opcode %s", hex);
}

mg_status pk_load(pk_ctx *ctx, const uint8_t *data, size_t size, size_t *consumed, pk_obj **root,
                  char *err, size_t err_len) {
    pk_vm vm = {.ctx = ctx, .d = data, .size = size, .err = err, .err_len = err_len};
    *root = NULL;
    bool stop = false;
    mg_status st = MG_OK;
    while (!stop && st == MG_OK) {
        if (vm.pos >= vm.size) {
            st = fail(&vm, MG_ERR_FORMAT, "%s", "truncated: no STOP opcode");
            break;
        }
        uint8_t op = vm.d[vm.pos++];
        st = step(&vm, op, root, &stop);
    }
    /* Stack, marks and memo were charged to the context: give the budget back. */
    ctx->mem -= MG_MIN(ctx->mem, (vm.cap_stack + vm.cap_memo) * sizeof(pk_obj *) + vm.cap_marks * sizeof(size_t));
    free(vm.stack);
    free(vm.marks);
    free(vm.memo);
    if (st != MG_OK) {
        *root = NULL;
        return st;
    }
    if (consumed) *consumed = vm.pos;
    return MG_OK;
}
