/*
 * grounding.h - internal helpers shared by grounding.c, chat.c and draw.c: a growable byte string
 * that remembers an allocation failure (so callers check once at the end), and the UTF-8 decoder
 * used for JSON output, whitespace stripping and label text.
 */
#ifndef MG_GROUNDING_H
#define MG_GROUNDING_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *p;    /* NUL-terminated when len > 0 or after gr_str_finish */
    size_t len;
    size_t cap;
    bool oom;   /* an append failed: p holds a prefix, the result must be discarded */
} gr_str;

/* Appends n bytes (may include NULs); on failure sets s->oom and returns false. */
bool gr_str_add(gr_str *s, const char *b, size_t n);
/* Appends a NUL-terminated string. */
bool gr_str_adds(gr_str *s, const char *z);
/* Appends printf-formatted text (short pieces only: at most 127 bytes). */
bool gr_str_addf(gr_str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Makes sure p is a NUL-terminated string (allocating "" when empty); false on failure. */
bool gr_str_finish(gr_str *s);
void gr_str_free(gr_str *s);

/* Decodes one UTF-8 sequence at s[0..n) (n >= 1). Returns its length (1..4) and the code point in
 * *cp, or 0 when the bytes are not valid UTF-8 (overlong, surrogate, > U+10FFFF, truncated). */
int gr_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

#endif
