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

#endif
