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

/* ==== Grounded answers and prompts ==== */

/* MiniGPT-v2 writes locations as "{<x1><y1><x2><y2>}": integer corners on a 0..100 grid of the
 * original image (x relative to the width, y to the height). Answers mix them with phrases:
 * "<p>a red circle</p> {<12><30><45><60>}<delim>{<50><50><70><90>}". See docs/grounding.md. */

typedef struct {
    int x1, y1, x2, y2;         /* corners on the 0..100 grid; x1 <= x2, y1 <= y2 */
    double px1, py1, px2, py2;  /* in pixels of the original image: v / 100 * W (or H), unrounded,
                                   as demo_v2.py and eval_ref.py compute them; 0 without a size */
} mg_box;

typedef struct {
    char *phrase;                 /* the span's bytes, NUL-terminated; "" for boxes with no phrase
                                     ([refer] answers) */
    size_t span_begin, span_end;  /* byte range of the phrase in clean_text (empty range at the
                                     place of the boxes when there is no phrase) */
    mg_box *boxes;                /* n_boxes boxes (0 for a phrase with no valid box) */
    int n_boxes;
} mg_entity;

typedef struct {
    size_t offset, len; /* byte range in mg_grounding.text */
    char *text;         /* NUL-terminated copy of that range */
} mg_fragment;

/* A parsed answer. Every pointer inside is owned by it; free with mg_grounding_free. */
typedef struct {
    char *text;             /* copy of the input (NUL-terminated; may hold NULs: use text_len) */
    size_t text_len;
    char *clean_text;       /* display text: box text and <delim> removed, <p>x</p> -> x */
    size_t clean_len;
    int image_w, image_h;   /* the size given to the parser (0: pixel fields are 0) */
    mg_entity *entities;    /* in order of appearance */
    int n_entities;
    mg_fragment *unparsed;  /* malformed box/tag text, in order: never turned into boxes */
    int n_unparsed;
} mg_grounding;

/* Parses len bytes of model output. image_w/image_h (both > 0, or both 0) give the original image
 * size for the pixel fields. Never fails on malformed text (it lands in unparsed); fails only on
 * bad arguments or memory. On success *out owns the result. */
mg_status mg_grounding_parse(mg_grounding **out, const char *text, size_t len, int image_w,
                             int image_h, char *err, size_t err_len);
void mg_grounding_free(mg_grounding *g);

/* Renders g as one line of JSON: {"text","clean_text","image":[w,h],"entities":[{"phrase",
 * "span":[a,b],"boxes":[{"x1","y1","x2","y2","px":[..]}]}],"unparsed":["..."]}. Invalid UTF-8
 * becomes U+FFFD. *out receives a malloc'd NUL-terminated string: release it with free(). */
mg_status mg_grounding_to_json(const mg_grounding *g, char **out);

/* Writes the region text "{<x1><y1><x2><y2>}" of a pixel box on a w x h image, each corner
 * int(v / W * 100) as the training data does (coco_dataset.py). Requires 0 <= x1 < x2 <= w and
 * 0 <= y1 < y2 <= h. buf needs 20 bytes at most. */
mg_status mg_region_text(double x1, double y1, double x2, double y2, int w, int h, char *buf,
                         size_t buf_len, char *err, size_t err_len);

/* The three conversation templates of the official demos (spec 4.5). */
typedef enum {
    MG_CHAT_MINIGPT4_VICUNA = 0, /* "###Human: ...###Assistant: " */
    MG_CHAT_MINIGPT4_LLAMA2 = 1, /* "<s>[INST] ... [/INST] " after the MiniGPT-4 system text */
    MG_CHAT_MINIGPT_V2 = 2       /* "<s>[INST] ... [/INST]", system "" */
} mg_chat_template;

/* MiniGPT-v2 task identifiers. */
typedef enum {
    MG_TASK_NONE = 0,
    MG_TASK_GROUNDING = 1,
    MG_TASK_REFER = 2,
    MG_TASK_DETECTION = 3,
    MG_TASK_IDENTIFY = 4,
    MG_TASK_VQA = 5,
    MG_TASK_CAPTION = 6
} mg_task;

/* "[grounding]", ... ("" for MG_TASK_NONE, NULL when out of range). Static. */
const char *mg_task_tag(mg_task task);
/* "grounding" or "[grounding]" (any case) -> task; "none" or "" -> MG_TASK_NONE; -1 if unknown. */
int mg_task_from_name(const char *name);
/* Builds the instruction the demo sends for a task: the demo's task-shortcut prefix followed by
 * text ("[refer] " + "the cup", "[identify] what is this " + a region text), or the task's default
 * instruction when text is NULL or "" ("[grounding] describe this image in detail",
 * "[caption] Briefly describe this image."). Tasks that need text fail without it. */
mg_status mg_task_instruction(mg_task task, const char *text, char *buf, size_t buf_len,
                              char *err, size_t err_len);

/* One piece of a rendered prompt, cut at "<ImageHere>": tokenize each with mg_tokenize(text,
 * len, add_bos, parse_special=1) and put image i's embeddings between segments i and i+1. */
typedef struct {
    const char *text; /* NUL-terminated */
    size_t len;
    int add_bos;      /* 1 for segment 0 only */
} mg_prompt_segment;

typedef struct {
    const char *text;                  /* the whole prompt, NUL-terminated */
    size_t len;
    const mg_prompt_segment *segments; /* n_segments = n_images + 1 */
    int n_segments;
    int n_images;
} mg_prompt;

/* A conversation (history of messages), as minigpt4/conversation/conversation.py keeps it. */
typedef struct mg_chat mg_chat;

mg_status mg_chat_create(mg_chat **out, mg_chat_template tmpl);
void mg_chat_free(mg_chat *c);
/* Forgets every message (a new image starts a new conversation in the demos). */
void mg_chat_reset(mg_chat *c);
/* Adds the user message "<Img><ImageHere></Img>" (Chat.upload_img). */
mg_status mg_chat_add_image(mg_chat *c);
/* Adds a user message; joined with one space to a preceding image message (Chat.ask). */
mg_status mg_chat_ask(mg_chat *c, const char *text);
/* Opens the assistant turn (unless one is already open) and renders the prompt. *out points
 * into the chat: valid until the next call on c. Fails (MG_ERR_FORMAT) when "<ImageHere>" occurs
 * other than once per image. */
mg_status mg_chat_prompt(mg_chat *c, mg_prompt *out, char *err, size_t err_len);
/* Closes the open assistant turn with the generated text (raw, before post-processing). What the
 * history keeps follows the template's demo: MiniGPT-4 the post-processed answer (Chat.answer),
 * MiniGPT-v2 the string "</s>" (demo_v2.py l.479: the model never sees its own answers). */
mg_status mg_chat_answer(mg_chat *c, const char *raw, size_t len);

/* Post-processes generated text the way the reference does. MiniGPT-4: split("###")[0], then
 * split("Assistant:")[-1].strip() (Chat.answer); MiniGPT-v2: split("</s>")[0], remove "<s>",
 * split("[/INST]")[-1].strip() (MiniGPTBase.generate). strip() removes Python's whitespace set.
 * Writes a NUL-terminated result of at most buf_len-1 bytes; returns the full length (the result
 * is never longer than the input), or -1 on bad arguments. */
int64_t mg_chat_postprocess(mg_chat_template tmpl, const char *raw, size_t len, char *buf,
                            size_t buf_len);

/* The extra stop sequences of a template's demo, in mg_generate_params.stop_seqs form (static;
 * LLaMA vocabulary ids): MiniGPT-4 [835] ("▁###") and [2277, 29937] ("##", "#"); none for v2
 * (EOS only). */
const int32_t *const *mg_chat_stop_seqs(mg_chat_template tmpl);

/* Sets the demo's generation settings (spec 4.6) in sp (temperature, top_p, top_k,
 * repeat_penalty) and gp (n_predict, stop_seqs, stop_at_eos); other fields are left alone. */
void mg_chat_generation_defaults(mg_chat_template tmpl, mg_sampler_params *sp,
                                 mg_generate_params *gp);

/* Drawing entities on an RGB8 image (no file I/O besides the font). */
typedef struct {
    const char *font_path; /* NULL: /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf */
    int draw_labels;       /* 1 (default): phrase on a filled plate above each box */
    int thickness;         /* box outline in pixels; 0 (default) = max(2, min(w,h) / 200) */
    int font_px;           /* label text size in pixels; 0 (default) = max(10, min(w,h) / 40) */
} mg_draw_params;

mg_draw_params mg_draw_default_params(void);

/* The outline colour of entity i (a fixed palette of 16 colours, cycled). */
void mg_draw_color(int i, uint8_t rgb[3]);

/* Draws every box of g on rgb (w x h pixels, stride bytes per row, 3 bytes per pixel), entity i
 * in mg_draw_color(i); corners v/100*size truncated, clipped to the image; inverted boxes are
 * skipped. Returns MG_OK with err set to "" when all was drawn, or MG_OK with a one-line warning
 * in err when labels could not be drawn (font missing or unreadable: boxes are still drawn). */
mg_status mg_draw_grounding(uint8_t *rgb, int w, int h, size_t stride, const mg_grounding *g,
                            const mg_draw_params *p, char *err, size_t err_len);

/* ==== Images ==== */

/* An 8-bit RGB image: rgb is [h, w, 3] row-major, malloc'd, owned by the struct (mg_image_free). */
typedef struct {
    int w, h;
    uint8_t *rgb;
} mg_image;

/* Pixel cap (w * h) used when a call passes max_pixels = 0. */
#define MG_IMAGE_MAX_PIXELS_DEFAULT ((uint64_t)64 * 1024 * 1024)

/* Decodes a JPEG, PNG, WebP or BMP image (format from its first bytes, never the file name) into
 * RGB exactly as Pillow 9.4's Image.open(path).convert('RGB') does (alpha dropped, palette
 * expanded, no EXIF rotation). Images over max_pixels (0: the default) fail with
 * MG_ERR_UNSUPPORTED; corrupt or truncated data with MG_ERR_FORMAT. On success *out owns its
 * pixels; on failure *out is zeroed. Thread-safe. */
mg_status mg_image_load_file(mg_image *out, const char *path, uint64_t max_pixels, char *err,
                             size_t err_len);
mg_status mg_image_load_mem(mg_image *out, const void *data, size_t size, uint64_t max_pixels,
                            char *err, size_t err_len);

/* Resizes src to w x h exactly as Pillow's src.resize((w, h), Image.BICUBIC) (antialiased when
 * shrinking; same bytes). *dst receives a new image; src is not modified. */
mg_status mg_image_resize_bicubic(mg_image *dst, const mg_image *src, int w, int h, char *err,
                                  size_t err_len);

/* out [3, h, w] = (rgb / 255 - mean[c]) / std[c] in float32, the same operations in the same order
 * as torchvision's ToTensor + Normalize. mean/std NULL: the CLIP statistics MiniGPT uses. */
void mg_image_to_tensor(const mg_image *img, const float mean[3], const float std[3], float *out);

/* MiniGPT's whole image preprocessing (spec §6): load, squash to size x size with Pillow bicubic,
 * normalise with the CLIP statistics. out is [3, size, size] float32, caller-owned. */
mg_status mg_image_preprocess_file(const char *path, int size, uint64_t max_pixels, float *out,
                                   char *err, size_t err_len);

/* Writes img as an 8-bit RGB PNG file. */
mg_status mg_image_write_png(const mg_image *img, const char *path, char *err, size_t err_len);

/* Frees the pixels and zeroes the struct; NULL and zeroed structs are fine. */
void mg_image_free(mg_image *img);

/* ==== Vision-language (MiniGPT-4 / MiniGPT-v2 end to end) ==== */

/* Opens a MiniGPT vision GGUF whose language model and tokenizer come from llm_path, a llama.cpp
 * GGUF (general.architecture "llama"); llm_path NULL = mg_model_open. */
mg_status mg_model_open_llm(mg_model **out, const char *path, const char *llm_path,
                            const mg_model_params *params, char *err, size_t err_len);
/* 1 when the model has a vision tower (architectures "minigpt4" and "minigptv2"). */
int mg_model_has_vision(const mg_model *model);
/* "minigpt4-vicuna", "minigpt4-llama2", "minigptv2" or "llama" (static string). */
const char *mg_model_variant(const mg_model *model);
/* The conversation template of the variant (minigpt.chat_template; MiniGPT-v2's for "llama"). */
mg_chat_template mg_model_chat_template(const mg_model *model);
/* Side S of the square model input (224 / 448); 0 without vision. */
int mg_model_image_size(const mg_model *model);
/* Embedding rows one image takes in the prompt (32 / 64 / 256); 0 without vision. */
int mg_model_n_image_tokens(const mg_model *model);
/* The variant's default generation settings (spec 4.6, overridable by minigpt.generation.* keys):
 * sets temperature, top_p, top_k, repeat_penalty of sp and n_predict, stop_seqs, stop_at_eos of gp. */
void mg_model_generation_defaults(const mg_model *model, mg_sampler_params *sp,
                                  mg_generate_params *gp);

/* Intermediate tensors of one image encode (for --dump and tests). Sizes: see mg_vl_stage_dims. */
typedef struct {
    int image_size;         /* S */
    int n_vit_tok, vit_dim; /* ViT output incl. CLS, after ln_vision: [n_vit_tok, vit_dim] */
    int n_qf, qf_dim;       /* Q-Former output [n_qf, qf_dim]; 0 without a Q-Former */
    int n_img_tok, llm_dim; /* projected image embeddings [n_img_tok, llm_dim] */
} mg_vl_dims;

/* Fills dims for model; MG_ERR_INVALID_ARG without vision. */
mg_status mg_vl_stage_dims(const mg_model *model, mg_vl_dims *dims);
/* Squashes img to S x S (Pillow bicubic) and normalises it: pixels [3, S, S], caller-owned. */
mg_status mg_vl_preprocess(const mg_model *model, const mg_image *img, float *pixels, char *err,
                           size_t err_len);
/* Runs the vision side on pixels [3, S, S]; every output pointer may be NULL (qformer_out is
 * ignored without a Q-Former). tokens receives [n_img_tok, llm_dim]. */
mg_status mg_vl_encode_stages(const mg_model *model, const float *pixels, float *vit_out,
                              float *qformer_out, float *tokens, char *err, size_t err_len);

/* A vision-language conversation: owns a session (KV cache), the conversation (mg_chat with the
 * model's template), the images of the conversation and a cache of image embeddings keyed by a
 * 64-bit hash of the preprocessed pixels (an image asked about again is not re-encoded). Each
 * turn renders the whole prompt, tokenizes it per segment (spec 4.4) and evaluates only what
 * differs from what the KV cache already holds (common prefix kept, the rest rewound).
 * Turns are atomic: a turn is what was added since the last answer (or reset); when
 * mg_vl_eval_prompt, mg_vl_generate (cancellation included), mg_vl_force_answer or mg_vl_ask
 * fails (bad arguments to the step calls excepted: they change nothing), the conversation returns
 * to where the turn began (its images and messages dropped, no open assistant turn left behind)
 * and the next turn works as if it had not happened.
 * One thread at a time; the model must outlive it. */
typedef struct mg_vl mg_vl;

/* The outcome of one turn. Strings and grounding are owned by the result: mg_vl_result_free. */
typedef struct {
    char *raw;                /* generated text (stop sequence / EOS excluded) */
    char *text;               /* post-processed answer (mg_chat_postprocess) */
    mg_grounding *grounding;  /* text parsed with the size of the conversation's last image */
    int n_prompt;             /* positions of the evaluated prompt (image rows included; after
                                 trimming, the kept rows only) */
    int n_prompt_eval;        /* of those, evaluated this turn (the rest came from the cache) */
    int n_generated;          /* tokens generated */
    int image_cache_hit;      /* 1 when this turn's image embedding came from the cache */
    double t_image_ms, t_prompt_ms, t_gen_ms; /* image encode, prompt evaluation, generation */
    int n_prompt_trimmed;     /* rows of the rendered prompt dropped from the left (mg_vl_ask) */
} mg_vl_result;

void mg_vl_result_free(mg_vl_result *r);

/* Creates a conversation on model (which must have vision) with a new session of params sp. */
mg_status mg_vl_create(mg_vl **out, const mg_model *model, const mg_session_params *sp, char *err,
                       size_t err_len);
void mg_vl_free(mg_vl *vl);
/* The session (owned by vl). Rewinding it directly is allowed: vl notices and re-evaluates. */
mg_session *mg_vl_session(mg_vl *vl);
/* The conversation (owned by vl); read it, or render it with mg_chat_prompt. Change it only
 * through mg_vl_* (vl replays its own record of the changes when it rolls a turn back). */
mg_chat *mg_vl_chat(mg_vl *vl);
/* Starts a new conversation (history and images forgotten; the embedding cache and the KV cache
 * are kept and reused where the next prompt allows). */
void mg_vl_reset(mg_vl *vl);
/* Adds an image to the conversation (Chat.upload_img): encoded now, or found in the cache
 * (*cache_hit = 1; may be NULL). Its size is what grounding boxes are scaled to. */
mg_status mg_vl_add_image(mg_vl *vl, const mg_image *img, int *cache_hit);
/* Adds a user message (Chat.ask). Adding an image or a message while an evaluated prompt's
 * assistant turn is still open (not answered) withdraws that open turn first. */
mg_status mg_vl_add_text(mg_vl *vl, const char *text);
/* Renders the prompt with the assistant turn open and evaluates it whole, untrimmed (reusing
 * the KV cache); afterwards mg_session_logits gives the last position's logits. r (may be NULL)
 * receives n_prompt, n_prompt_eval and t_prompt_ms. A prompt longer than the context fails
 * with MG_ERR_CTX_FULL (and the turn is rolled back). */
mg_status mg_vl_eval_prompt(mg_vl *vl, mg_vl_result *r);
/* The rows of the last evaluated prompt: ids[i] is the token id, or -1 for an image row; embd
 * (may be NULL) receives the input embeddings [n, n_embd]. Returns the row count, -1 on error;
 * writes at most n_max rows. */
int mg_vl_prompt_rows(mg_vl *vl, int32_t *ids, float *embd, int n_max);
/* Generates after mg_vl_eval_prompt with smp and gp (gp->on_token streams; gp NULL: the model's
 * defaults), post-processes, closes the assistant turn and parses the grounding into r (NULL, or
 * zero-initialised / holding an earlier result, whose strings are replaced). When the callback
 * stops it (MG_ERR_CANCELLED), r still gets the partial answer but the turn is rolled back. */
mg_status mg_vl_generate(mg_vl *vl, mg_sampler *smp, const mg_generate_params *gp,
                         mg_vl_result *r);
/* One whole turn: image (may be NULL: keep talking about the current one) + question ->
 * answer, i.e. add_image, add_text, eval_prompt, generate. r must be freed by the caller.
 * Context trimming as Chat.answer_prepare: only the last min(2000, n_ctx) - reserve rows of the
 * rendered prompt are evaluated (dropped from the left, BOS included; the kept rows take
 * positions 0..), reserve = gp->n_predict (the model's default when gp is NULL or n_predict <= 0),
 * capped at half of min(2000, n_ctx). So a long conversation never fails with MG_ERR_CTX_FULL;
 * r->n_prompt_trimmed tells how many rows were dropped. Atomic (see mg_vl). */
mg_status mg_vl_ask(mg_vl *vl, const mg_image *image, const char *question, mg_sampler *smp,
                    const mg_generate_params *gp, mg_vl_result *r);
/* Closes the open assistant turn with a given answer instead of generating (debugging, tests):
 * fills r as mg_vl_generate would (n_generated 0). */
mg_status mg_vl_force_answer(mg_vl *vl, const char *answer, mg_vl_result *r);
/* Last error message of vl ("" if none). */
const char *mg_vl_errmsg(const mg_vl *vl);

#ifdef __cplusplus
}
#endif
#endif /* MINIGPT_H */
