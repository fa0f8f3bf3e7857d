/*
 * serve.h - internals shared by the files of `minigpt serve` (tools/cmd_serve.c, tools/serve_req.c):
 * the embedded web demo, a parsed and validated chat-completion request, and errors in OpenAI's
 * shape {"error":{"message","type","code"}}. Not part of the library.
 */
#ifndef MG_SERVE_H
#define MG_SERVE_H

#include "minigpt.h"

#include <stddef.h>
#include <stdint.h>

/* One file of tools/web, embedded by the Makefile ($(BUILD)/gen/web_assets.c). The table ends
 * with a {NULL, NULL, 0} entry. */
typedef struct {
    const char *name;
    const unsigned char *data;
    size_t size;
} serve_asset;

extern const serve_asset serve_web_assets[];

/* An HTTP error answered as {"error":{"message","type","code","param":null}}. */
typedef struct {
    int status;       /* 400, 401, 404, 413, 503, ... */
    const char *type; /* "invalid_request_error", "authentication_error", "server_error" */
    const char *code; /* machine-readable: "invalid_json", "image_too_large", ... */
    char message[512];
} serve_error;

/* Fills e and returns -1 (for `return serve_fail(...)`). */
int serve_fail(serve_error *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The JSON text of e (malloc'd; free()). */
char *serve_error_json(const serve_error *e);

typedef enum { SERVE_SYSTEM = 0, SERVE_USER = 1, SERVE_ASSISTANT = 2 } serve_role;

/* One message: its images (decoded, in order) go before its text, as MiniGPT's demos ask. */
typedef struct {
    serve_role role;
    char *text;       /* text parts joined with "\n" (malloc'd, never NULL) */
    mg_image *images; /* n_images decoded images */
    int n_images;
} serve_msg;

typedef struct {
    serve_msg *msgs;
    int n_msgs, n_images;
    int stream, include_usage;
    int has_temperature, has_top_p, has_seed;
    double temperature, top_p;
    uint64_t seed;
    int max_tokens;  /* 0: the server's default */
    char **stop;     /* NULL-terminated (malloc'd strings), NULL when none */
} serve_request;

/* What the parser checks a request against. */
typedef struct {
    const char *model_id;    /* the only model name accepted ("model" may also be absent) */
    int has_vision;          /* 0: image parts are refused */
    int max_tokens_cap;      /* max_tokens above it is refused */
    uint64_t max_pixels;     /* per image (w * h) */
    int allow_remote_images; /* http(s) URLs: still refused (no network), with another message */
} serve_limits;

/* Parses an OpenAI chat-completion body (len bytes of JSON) into req, decoding data: URL images
 * (base64) with the pixel cap. Returns 0, or -1 with e filled (4xx). req is owned by the caller
 * (serve_request_free) in both cases. Thread-safe. */
int serve_parse_request(const char *body, size_t len, const serve_limits *lim, serve_request *req,
                        serve_error *e);
void serve_request_free(serve_request *req);

/* Strict base64 (RFC 4648 alphabet, '=' padding optional, ASCII whitespace ignored). *out is
 * malloc'd. Returns 0, or -1 on a bad character, bad padding or no memory. */
int serve_base64_decode(const char *s, size_t n, unsigned char **out, size_t *out_len);

#endif
