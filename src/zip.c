/*
 * zip.c - a bounded reader of zip archives held in memory (what torch.save writes: stored
 * entries, zip64 when large). Reads the central directory (never trusts local sizes), checks
 * every offset and length against the buffer, inflates deflated entries with zlib within the
 * 1032:1 ratio deflate allows. No multi-disk archives, no encryption, no extraction to disk.
 */
#include "ckpt.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define ZIP_MAX_ENTRIES (1u << 20)
#define ZIP_MAX_NAME 4096
#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

/* True when [off, off+len) lies inside a buffer of size bytes. */
static bool in_bounds(uint64_t off, uint64_t len, size_t size) {
    return off <= size && len <= size - off;
}

/* Applies the zip64 extended-information extra field to the fields that are saturated. */
static mg_status apply_zip64_extra(const uint8_t *ex, size_t ex_len, uint64_t *size,
                                   uint64_t *comp, uint64_t *loc, char *err, size_t err_len) {
    size_t p = 0;
    while (p + 4 <= ex_len) {
        uint16_t id = rd16(ex + p), len = rd16(ex + p + 2);
        if (len > ex_len - p - 4) break;
        if (id == 0x0001) {
            const uint8_t *q = ex + p + 4;
            size_t left = len;
            uint64_t *fields[3] = {size, comp, loc};
            for (int i = 0; i < 3; i++) {
                if (*fields[i] != 0xFFFFFFFFu) continue;
                if (left < 8) return mg_err(err, err_len, MG_ERR_FORMAT, "zip: short zip64 extra field");
                *fields[i] = rd64(q);
                q += 8;
                left -= 8;
            }
            return MG_OK;
        }
        p += 4 + (size_t)len;
    }
    if (*size == 0xFFFFFFFFu || *comp == 0xFFFFFFFFu || *loc == 0xFFFFFFFFu)
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: saturated size without a zip64 extra field");
    return MG_OK;
}

static int cmp_names(const void *a, const void *b, void *arg) {
    const zip_archive *z = arg;
    return strcmp(z->entries[*(const size_t *)a].name, z->entries[*(const size_t *)b].name);
}

/* Locates the end of central directory (and its zip64 record): count, offset and size of the CD. */
static mg_status find_cd(const uint8_t *d, size_t size, uint64_t *n, uint64_t *cd_off,
                         uint64_t *cd_size, char *err, size_t err_len) {
    if (size < 22) return mg_err(err, err_len, MG_ERR_FORMAT, "zip: file too short (%zu bytes)", size);
    size_t lo = size > 22 + 65535 ? size - 22 - 65535 : 0, eocd = SIZE_MAX;
    for (size_t p = size - 22 + 1; p-- > lo;) {
        if (rd32(d + p) == SIG_EOCD && p + 22 + rd16(d + p + 20) == size) { eocd = p; break; }
    }
    if (eocd == SIZE_MAX) return mg_err(err, err_len, MG_ERR_FORMAT, "zip: no end-of-central-directory record");
    const uint8_t *e = d + eocd;
    if (rd16(e + 4) != 0 || rd16(e + 6) != 0)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "zip: multi-disk archives are not supported");
    *n = rd16(e + 10);
    *cd_size = rd32(e + 12);
    *cd_off = rd32(e + 16);
    if (*n == 0xFFFF || *cd_size == 0xFFFFFFFFu || *cd_off == 0xFFFFFFFFu) {
        if (eocd < 20 || rd32(d + eocd - 20) != SIG_LOC64)
            return mg_err(err, err_len, MG_ERR_FORMAT, "zip: saturated end record without a zip64 locator");
        uint64_t off64 = rd64(d + eocd - 20 + 8);
        if (!in_bounds(off64, 56, size) || rd32(d + off64) != SIG_EOCD64)
            return mg_err(err, err_len, MG_ERR_FORMAT, "zip: bad zip64 end-of-central-directory offset");
        const uint8_t *z = d + off64;
        *n = rd64(z + 32);
        *cd_size = rd64(z + 40);
        *cd_off = rd64(z + 48);
    }
    if (!in_bounds(*cd_off, *cd_size, size))
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: central directory outside the file");
    if (*n > ZIP_MAX_ENTRIES || *n > *cd_size / 46)
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: implausible entry count %llu", (unsigned long long)*n);
    return MG_OK;
}

/* Fills entry e from the central-directory header at *pos (advanced past it). */
static mg_status read_entry(zip_archive *z, uint64_t *pos, uint64_t cd_end, zip_entry *e, char *err,
                            size_t err_len) {
    const uint8_t *d = z->data;
    if (!in_bounds(*pos, 46, cd_end) || rd32(d + *pos) != SIG_CENTRAL)
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: bad central directory header");
    const uint8_t *c = d + *pos;
    uint16_t flags = rd16(c + 8), name_len = rd16(c + 28), extra_len = rd16(c + 30),
             comment_len = rd16(c + 32);
    uint64_t total = 46 + (uint64_t)name_len + extra_len + comment_len;
    if (!in_bounds(*pos, total, cd_end))
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: central directory header overruns");
    if (flags & 1) return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "zip: encrypted entries are not supported");
    if (name_len == 0 || name_len > ZIP_MAX_NAME || memchr(c + 46, 0, name_len))
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: bad entry name");
    e->method = rd16(c + 10);
    e->crc32 = rd32(c + 16);
    e->comp_size = rd32(c + 20);
    e->size = rd32(c + 24);
    uint64_t loc = rd32(c + 42);
    e->name = malloc((size_t)name_len + 1);
    if (!e->name) return mg_err(err, err_len, MG_ERR_NOMEM, "zip: out of memory");
    memcpy(e->name, c + 46, name_len);
    e->name[name_len] = 0;
    mg_status st = apply_zip64_extra(c + 46 + name_len, extra_len, &e->size, &e->comp_size, &loc, err, err_len);
    if (st != MG_OK) return st;
    *pos += total;
    if (!in_bounds(loc, 30, z->size) || rd32(d + loc) != SIG_LOCAL)
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: bad local header for '%s'", e->name);
    uint64_t data_off = loc + 30 + (uint64_t)rd16(d + loc + 26) + rd16(d + loc + 28);
    if (!in_bounds(data_off, e->comp_size, z->size))
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: data of '%s' outside the file", e->name);
    if (e->method != 0 && e->method != 8)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "zip: '%s' uses compression method %u", e->name,
                      e->method);
    if (e->method == 0 && e->comp_size != e->size)
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: stored entry '%s' has two sizes", e->name);
    e->data_offset = data_off;
    return MG_OK;
}

mg_status zip_open(zip_archive *z, const void *data, size_t size, char *err, size_t err_len) {
    memset(z, 0, sizeof *z);
    z->data = data;
    z->size = size;
    uint64_t n = 0, cd_off = 0, cd_size = 0;
    mg_status st = find_cd(z->data, size, &n, &cd_off, &cd_size, err, err_len);
    if (st != MG_OK) return st;
    z->entries = calloc(n ? (size_t)n : 1, sizeof *z->entries);
    z->sorted = malloc((n ? (size_t)n : 1) * sizeof *z->sorted);
    if (!z->entries || !z->sorted) return mg_err(err, err_len, MG_ERR_NOMEM, "zip: out of memory");
    uint64_t pos = cd_off, cd_end = cd_off + cd_size;
    for (uint64_t i = 0; i < n; i++) {
        z->n_entries = (size_t)i + 1;
        st = read_entry(z, &pos, cd_end, &z->entries[i], err, err_len);
        if (st != MG_OK) return st;
        z->sorted[i] = (size_t)i;
    }
    qsort_r(z->sorted, z->n_entries, sizeof *z->sorted, cmp_names, z);
    return MG_OK;
}

void zip_close(zip_archive *z) {
    if (!z) return;
    for (size_t i = 0; i < z->n_entries; i++) free(z->entries[i].name);
    free(z->entries);
    free(z->sorted);
    memset(z, 0, sizeof *z);
}

const zip_entry *zip_find(const zip_archive *z, const char *name) {
    size_t lo = 0, hi = z->n_entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const zip_entry *e = &z->entries[z->sorted[mid]];
        int c = strcmp(e->name, name);
        if (c == 0) return e;
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

/* Inflates a raw deflate stream of e into a new buffer of exactly e->size bytes. */
static mg_status inflate_entry(const zip_archive *z, const zip_entry *e, uint8_t **out, char *err,
                               size_t err_len) {
    uint64_t max_size;
    if (__builtin_mul_overflow(e->comp_size, (uint64_t)1032, &max_size) || e->size > max_size + 64)
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: '%s' claims an impossible compression ratio", e->name);
    if (e->size > SIZE_MAX - 1) return mg_err(err, err_len, MG_ERR_NOMEM, "zip: '%s' too large", e->name);
    uint8_t *buf = malloc(e->size ? (size_t)e->size : 1);
    if (!buf) return mg_err(err, err_len, MG_ERR_NOMEM, "zip: cannot allocate %llu bytes for '%s'",
                            (unsigned long long)e->size, e->name);
    z_stream s;
    memset(&s, 0, sizeof s);
    if (inflateInit2(&s, -15) != Z_OK) {
        free(buf);
        return mg_err(err, err_len, MG_ERR_NOMEM, "zip: inflateInit failed");
    }
    const uint8_t *src = z->data + e->data_offset;
    uint64_t src_left = e->comp_size, dst_done = 0;
    int rc = Z_OK;
    while (rc == Z_OK) {
        uInt in_chunk = (uInt)MG_MIN(src_left, (uint64_t)1 << 30);
        uInt out_chunk = (uInt)MG_MIN(e->size - dst_done, (uint64_t)1 << 30);
        s.next_in = (Bytef *)(uintptr_t)src;
        s.avail_in = in_chunk;
        s.next_out = buf + dst_done;
        s.avail_out = out_chunk;
        rc = inflate(&s, Z_NO_FLUSH);
        src += in_chunk - s.avail_in;
        src_left -= in_chunk - s.avail_in;
        dst_done += out_chunk - s.avail_out;
        if (rc == Z_OK && in_chunk == s.avail_in && out_chunk == s.avail_out) rc = Z_BUF_ERROR;
    }
    inflateEnd(&s);
    if (rc != Z_STREAM_END || dst_done != e->size) {
        free(buf);
        return mg_err(err, err_len, MG_ERR_FORMAT, "zip: corrupt deflate data in '%s'", e->name);
    }
    *out = buf;
    return MG_OK;
}

mg_status zip_entry_data(const zip_archive *z, const zip_entry *e, int check_crc,
                         const uint8_t **ptr, uint8_t **owned, char *err, size_t err_len) {
    *ptr = NULL;
    *owned = NULL;
    if (e->method == 0) {
        *ptr = z->data + e->data_offset;
    } else {
        mg_status st = inflate_entry(z, e, owned, err, err_len);
        if (st != MG_OK) return st;
        *ptr = *owned;
    }
    if (check_crc) {
        uLong crc = crc32(0L, Z_NULL, 0);
        const uint8_t *p = *ptr;
        for (uint64_t left = e->size; left > 0;) {
            uInt chunk = (uInt)MG_MIN(left, (uint64_t)1 << 30);
            crc = crc32(crc, p, chunk);
            p += chunk;
            left -= chunk;
        }
        if ((uint32_t)crc != e->crc32) {
            free(*owned);
            *owned = NULL;
            *ptr = NULL;
            return mg_err(err, err_len, MG_ERR_FORMAT, "zip: CRC mismatch in '%s'", e->name);
        }
    }
    return MG_OK;
}
