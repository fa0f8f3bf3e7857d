/*
 * minigpt.h - the one public header of libminigpt.
 *
 * A plain-C11 engine for grounded vision-language models (MiniGPT-4, MiniGPT-v2) and the
 * LLaMA-family language models they are built on. Everything is loaded from one GGUF file.
 *
 * Usage (text generation):
 *
 *     char err[256];
 *     mg_model *m;
 *     mg_model_params mp = mg_model_default_params();
 *     if (mg_model_open(&m, "model.gguf", &mp, err, sizeof err) != MG_OK) { puts(err); return 1; }
 *     mg_session *s;
 *     mg_session_params sp = mg_session_default_params();
 *     mg_session_create(&s, m, &sp, err, sizeof err);
 *     int32_t ids[64]; int n;
 *     mg_tokenize(mg_model_tokenizer(m), "Hello", 5, 1, 1, ids, 64, &n);
 *     mg_session_eval_tokens(s, ids, n);
 *     const float *logits = mg_session_logits(s);     // [n_vocab]
 *     ...
 *     mg_session_free(s); mg_model_close(m);
 *
 * Threading: an mg_model is immutable after open and may be shared by any number of threads.
 * An mg_session (KV cache, logits, scratch) is used by one thread at a time.
 * Errors: every fallible call returns an mg_status; open/create calls also write a one-line
 * message into the caller's buffer, sessions keep the last message (mg_session_errmsg).
 * The library never prints, exits or aborts on bad input.
 */
#ifndef MINIGPT_H
#define MINIGPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MG_VERSION "0.1.0"

/* ==== Status ==== */

typedef enum {
    MG_OK = 0,
    MG_ERR_IO = -1,          /* file missing, unreadable, short read/write */
    MG_ERR_FORMAT = -2,      /* malformed or inconsistent input data */
    MG_ERR_UNSUPPORTED = -3, /* valid but not supported (type, architecture, version) */
    MG_ERR_NOMEM = -4,       /* allocation failed or a size would overflow */
    MG_ERR_INVALID_ARG = -5, /* caller passed a bad argument */
    MG_ERR_CANCELLED = -6,   /* a callback asked to stop */
    MG_ERR_CTX_FULL = -7,    /* the session's context (KV cache) is full */
    MG_ERR_INTERNAL = -8     /* a bug: please report */
} mg_status;

/* Returns a static English name for a status ("ok", "I/O error", ...). Never NULL. */
const char *mg_status_str(mg_status st);

/* ==== Tensor types (numbering identical to ggml's ggml_type, so GGUF files interoperate) ==== */

typedef enum {
    MG_TYPE_F32 = 0,
    MG_TYPE_F16 = 1,
    MG_TYPE_Q4_0 = 2,
    MG_TYPE_Q4_1 = 3,
    MG_TYPE_Q5_0 = 6,
    MG_TYPE_Q5_1 = 7,
    MG_TYPE_Q8_0 = 8,
    MG_TYPE_I8 = 24,
    MG_TYPE_I16 = 25,
    MG_TYPE_I32 = 26,
    MG_TYPE_I64 = 27,
    MG_TYPE_F64 = 28,
    MG_TYPE_BF16 = 30,
    MG_TYPE_COUNT = 40 /* one past the largest ggml type id we know of */
} mg_type;

/* Name of a tensor type as llama.cpp spells it ("f32", "q4_0", ...), or NULL if unknown. */
const char *mg_type_name(int type);
/* Parses a type name (case-insensitive); returns -1 if unknown. */
int mg_type_from_name(const char *name);

/* ==== Tokenizer ==== */

typedef struct mg_tokenizer mg_tokenizer;

/* Loads a LLaMA SentencePiece-BPE tokenizer from: a GGUF file (tokenizer.ggml.* keys), a Hugging Face
 * folder (tokenizer.json or tokenizer.model inside), a tokenizer.json file or a tokenizer.model
 * (SentencePiece protobuf) file. On success *out owns the tokenizer; free it with mg_tokenizer_free. */
mg_status mg_tokenizer_load(mg_tokenizer **out, const char *path, char *err, size_t err_len);
void mg_tokenizer_free(mg_tokenizer *tok);

/* Number of pieces in the vocabulary. */
int mg_tokenizer_n_vocab(const mg_tokenizer *tok);
int32_t mg_token_bos(const mg_tokenizer *tok);
int32_t mg_token_eos(const mg_tokenizer *tok);
int32_t mg_token_unk(const mg_tokenizer *tok);

/* Encodes len bytes of UTF-8 text. add_bos prepends BOS. parse_special makes literal "<s>", "</s>"
 * and "<unk>" (and other control pieces) map to their ids, each run of ordinary text between them
 * being encoded separately with its own dummy-prefix space, as the reference slow tokenizer does.
 * Writes at most n_max ids; *n_out receives the number needed (may exceed n_max: then the call
 * returns MG_ERR_INVALID_ARG and the caller retries with a larger buffer). */
mg_status mg_tokenize(const mg_tokenizer *tok, const char *text, size_t len, int add_bos,
                      int parse_special, int32_t *ids, int n_max, int *n_out);

/* The raw piece of a token (e.g. "▁Hello", "<0x0A>"), or NULL if id is out of range.
 * Owned by the tokenizer. */
const char *mg_token_piece(const mg_tokenizer *tok, int32_t id);

/* Decodes ids into text (byte-fallback pieces joined into UTF-8, '▁' -> ' ', the leading space of
 * the first piece dropped when strip_leading_space is set, as SentencePiece's decode does).
 * skip_special drops BOS/EOS/control pieces. Writes a NUL-terminated string of at most
 * buf_len-1 bytes; returns the full length needed (excluding NUL), or -1 on error. */
int64_t mg_detokenize(const mg_tokenizer *tok, const int32_t *ids, int n, int skip_special,
                      int strip_leading_space, char *buf, size_t buf_len);

/* Appends the text of one token given the previous one (for streaming): handles the leading
 * space rule and byte-fallback sequences that span tokens. state must be zeroed before the first
 * call. Returns the number of bytes written into buf (NUL-terminated), or -1 on error. */
typedef struct {
    unsigned char pending[8];
    int n_pending;
    int n_emitted;
} mg_detok_state;
int mg_detokenize_stream(const mg_tokenizer *tok, mg_detok_state *st, int32_t id, int skip_special,
                         char *buf, size_t buf_len);

/* ==== Model ==== */

typedef struct mg_model mg_model;

typedef struct {
    int n_threads;  /* worker threads for compute (>= 1); default: number of online cores, max 8 */
    int use_ref;    /* 1: force the scalar reference kernels (also env MINIGPT_FORCE_REF=1) */
    int use_mmap;   /* 1 (default): weights used in place from a read-only mapping */
} mg_model_params;

mg_model_params mg_model_default_params(void);

/* Opens a GGUF model file. On success *out owns the model; close with mg_model_close. */
mg_status mg_model_open(mg_model **out, const char *path, const mg_model_params *params,
                        char *err, size_t err_len);
void mg_model_close(mg_model *model);

/* The model's tokenizer (owned by the model). */
const mg_tokenizer *mg_model_tokenizer(const mg_model *model);
int mg_model_n_vocab(const mg_model *model); /* rows of the output head */
int mg_model_n_embd(const mg_model *model);
int mg_model_n_layer(const mg_model *model);
int mg_model_n_ctx_train(const mg_model *model);
/* A short description, e.g. "llama 2 layers, d=4096, q8_0". Owned by the model. */
const char *mg_model_desc(const mg_model *model);

/* ==== Session: KV cache and decoding state ==== */

typedef struct mg_session mg_session;

typedef struct {
    int n_ctx;   /* KV cache size in positions; 0 = the model's training context */
    int n_batch; /* max positions per forward chunk during prefill (default 512) */
} mg_session_params;

mg_session_params mg_session_default_params(void);

mg_status mg_session_create(mg_session **out, const mg_model *model, const mg_session_params *params,
                            char *err, size_t err_len);
void mg_session_free(mg_session *s);

/* Runs the model on n tokens at the next positions, appending to the KV cache.
 * Afterwards mg_session_logits gives the logits of the last of them. */
mg_status mg_session_eval_tokens(mg_session *s, const int32_t *ids, int n);
/* Same with input embeddings supplied directly: embd is [n, n_embd] row-major
 * (how image embeddings enter the prompt). */
mg_status mg_session_eval_embd(mg_session *s, const float *embd, int n);
/* Logits of the last evaluated position, [n_vocab]; owned by the session, valid until the next eval. */
const float *mg_session_logits(const mg_session *s);
/* Number of positions held in the KV cache. */
int mg_session_n_past(const mg_session *s);
int mg_session_n_ctx(const mg_session *s);
/* Forgets every position >= n_past (0 <= n_past <= current). */
mg_status mg_session_rewind(mg_session *s, int n_past);
/* Last error message of this session ("" if none). */
const char *mg_session_errmsg(const mg_session *s);

/* ==== Sampling ==== */

typedef struct {
    float temperature;    /* <= 0: greedy (argmax) */
    int top_k;            /* <= 0: disabled */
    float top_p;          /* >= 1: disabled */
    float repeat_penalty; /* 1: disabled; transformers' rule: logit>0 ? logit/p : logit*p */
    uint64_t seed;
} mg_sampler_params;

mg_sampler_params mg_sampler_default_params(void);

typedef struct mg_sampler mg_sampler;
mg_status mg_sampler_create(mg_sampler **out, const mg_sampler_params *params, int n_vocab);
void mg_sampler_free(mg_sampler *smp);
/* Picks the next token from logits [n_vocab] (not modified), applying the penalty to the tokens
 * accepted so far. Does not accept it. */
int32_t mg_sampler_sample(mg_sampler *smp, const float *logits);
/* Records a token as generated (for the repetition penalty). */
void mg_sampler_accept(mg_sampler *smp, int32_t id);
void mg_sampler_reset(mg_sampler *smp);

/* ==== Generation ==== */

/* Called for each generated token with its decoded text piece (may be "" while a UTF-8 sequence
 * is incomplete). Return non-zero to stop. */
typedef int (*mg_token_cb)(void *user, int32_t id, const char *piece, const float *logits, int n_vocab);

typedef struct {
    int n_predict;                   /* max new tokens (default 256) */
    const char *const *stop_strings; /* NULL-terminated list, or NULL: stop when the text ends with one */
    const int32_t *const *stop_seqs; /* token sequences, each terminated by -1; NULL-terminated list */
    int stop_at_eos;                 /* default 1 */
    mg_token_cb on_token;
    void *user;
} mg_generate_params;

mg_generate_params mg_generate_default_params(void);

/* Generates after whatever the session holds (the prompt must already be evaluated).
 * Writes the generated text (stop string removed) into out (may be NULL), NUL-terminated.
 * *n_generated receives the token count. */
mg_status mg_generate(mg_session *s, mg_sampler *smp, const mg_generate_params *gp, char *out,
                      size_t out_len, int *n_generated);

#ifdef __cplusplus
}
#endif
#endif /* MINIGPT_H */
