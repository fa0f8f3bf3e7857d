/*
 * tokenizer.h - internal entry points of the LLaMA SentencePiece-BPE tokenizer (the public calls
 * are in minigpt.h). Loading from GGUF metadata is used by the model loader; export to a GGUF
 * writer is used by convert/quantize and the tests.
 */
#ifndef MG_TOKENIZER_H
#define MG_TOKENIZER_H

#include "gguf.h"

/* Reads tokenizer.ggml.{model,tokens,scores,token_type,bos_token_id,eos_token_id,
 * unknown_token_id,add_bos_token,...} (llama.cpp keys; model must be "llama"). */
mg_status tok_load_gguf(mg_tokenizer **out, const gguf_file *f, char *err, size_t err_len);
/* Writes the same keys (llama.cpp conventions) into w. */
mg_status tok_write_gguf(const mg_tokenizer *tok, gguf_writer *w);

/* ---- Additions (tokenizer engineer): vocabulary building shared by the loaders, extra
 * accessors, and loaders over memory buffers (fuzzing, tests). ---- */

/* Piece types: SentencePiece / llama.cpp numbering (0 = undefined, read as normal). */
enum {
    TOK_TYPE_UNDEFINED = 0,
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6
};

/* Where the dummy-prefix '▁' goes: nowhere, before every run of text, or only before the run
 * that starts the input (Hugging Face Metaspace prepend_scheme "first"). */
enum { TOK_PREFIX_NEVER = 0, TOK_PREFIX_ALWAYS = 1, TOK_PREFIX_FIRST = 2 };

typedef struct {
    int32_t bos, eos, unk, pad; /* -1: none */
    bool add_bos, add_eos;
    int prefix_mode;            /* TOK_PREFIX_* */
    bool escape_ws;             /* ' ' -> U+2581 */
    bool remove_extra_ws;       /* strip and collapse ASCII spaces (SentencePiece option) */
    bool byte_fallback;         /* unknown symbols -> <0xXX> pieces */
} tok_options;

/* Builder: create with n pieces, set each piece, set options, then finish (which frees the
 * tokenizer and clears *t on failure). */
mg_status tok_vocab_create(mg_tokenizer **out, int64_t n, char *err, size_t err_len);
mg_status tok_vocab_set(mg_tokenizer *t, int32_t id, const char *s, size_t n, float score, int type,
                        char *err, size_t err_len);
void tok_vocab_set_options(mg_tokenizer *t, const tok_options *o);
mg_status tok_vocab_finish(mg_tokenizer **t, char *err, size_t err_len);

/* Id of the piece with these bytes, or -1. */
int32_t tok_find(const mg_tokenizer *tok, const char *s, size_t n);
/* Byte value of a "<0xXX>" piece, or -1. */
int tok_byte_piece_value(const char *s, size_t n);
/* Type (TOK_TYPE_*) / score of a piece; -1 / 0 when id is out of range. */
int tok_token_type(const mg_tokenizer *tok, int32_t id);
float tok_token_score(const mg_tokenizer *tok, int32_t id);
/* Whether the model asks for BOS / EOS around a prompt. */
bool tok_add_bos(const mg_tokenizer *tok);
bool tok_add_eos(const mg_tokenizer *tok);

/* Loads a SentencePiece tokenizer.model (ModelProto protobuf) from memory. */
mg_status tok_load_spm_buffer(mg_tokenizer **out, const void *buf, size_t size, char *err, size_t err_len);
/* Loads a Hugging Face tokenizer.json (model.type "BPE") from memory. */
mg_status tok_load_json_buffer(mg_tokenizer **out, const void *buf, size_t size, char *err, size_t err_len);

#endif
