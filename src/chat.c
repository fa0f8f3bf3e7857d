/*
 * chat.c - the conversation templates of MiniGPT-4 (Vicuna v0, LLaMA-2) and MiniGPT-v2, their
 * history rules, the prompt's split at "<ImageHere>" into tokenizer segments, answer
 * post-processing, stop sequences and demo generation settings, and the v2 task identifiers.
 *
 * Everything mirrors minigpt4/conversation/conversation.py (Conversation.get_prompt with
 * SeparatorStyle.SINGLE, Chat.ask/answer), demo.py and demo_v2.py; see spec 4.4-4.6 and 5.
 * Tokenization is not done here: each segment goes to mg_tokenize(parse_special=1).
 */
#include "grounding.h"

#include <stdlib.h>
#include <string.h>

#define MINIGPT4_SYSTEM                                                                            \
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once "  \
    "I provide it to you. Please answer my questions."

static const struct {
    const char *system;
    const char *roles[2]; /* user, assistant */
    const char *sep;
} TEMPLATES[3] = {
    [MG_CHAT_MINIGPT4_VICUNA] = {MINIGPT4_SYSTEM, {"Human: ", "Assistant: "}, "###"},
    [MG_CHAT_MINIGPT4_LLAMA2] = {MINIGPT4_SYSTEM, {"<s>[INST] ", " [/INST] "}, ""},
    [MG_CHAT_MINIGPT_V2] = {"", {"<s>[INST] ", " [/INST]"}, ""},
};

#define IMAGE_MESSAGE "<Img><ImageHere></Img>"
#define IMAGE_MARK "<ImageHere>"

typedef struct {
    int role;   /* 0 user, 1 assistant */
    char *text; /* NULL: the open assistant turn */
} message;

struct mg_chat {
    mg_chat_template tmpl;
    message *msgs;
    int n_msgs, cap_msgs;
    int n_images;
    gr_str prompt;
    char *seg_text;            /* copy of the prompt with a NUL at each "<ImageHere>" */
    mg_prompt_segment *segs;
};

static bool valid_template(mg_chat_template t) {
    return (int)t >= 0 && (int)t < (int)MG_ARRAY_LEN(TEMPLATES);
}

/* Creates an empty conversation for a template; free with mg_chat_free. */
mg_status mg_chat_create(mg_chat **out, mg_chat_template tmpl) {
    if (!out) return MG_ERR_INVALID_ARG;
    *out = NULL;
    if (!valid_template(tmpl)) return MG_ERR_INVALID_ARG;
    mg_chat *c = calloc(1, sizeof *c);
    if (!c) return MG_ERR_NOMEM;
    c->tmpl = tmpl;
    *out = c;
    return MG_OK;
}

/* Forgets all messages and images. */
void mg_chat_reset(mg_chat *c) {
    if (!c) return;
    for (int i = 0; i < c->n_msgs; i++) free(c->msgs[i].text);
    c->n_msgs = 0;
    c->n_images = 0;
}

/* Frees a conversation; NULL is a no-op. */
void mg_chat_free(mg_chat *c) {
    if (!c) return;
    mg_chat_reset(c);
    free(c->msgs);
    gr_str_free(&c->prompt);
    free(c->seg_text);
    free(c->segs);
    free(c);
}

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* Appends a message; takes ownership of text (may be NULL for the open assistant turn). */
static mg_status append(mg_chat *c, int role, char *text) {
    if (c->n_msgs == c->cap_msgs) {
        if (c->cap_msgs > (1 << 24)) return MG_ERR_NOMEM;
        int cap = c->cap_msgs ? c->cap_msgs * 2 : 8;
        message *m = realloc(c->msgs, (size_t)cap * sizeof *m);
        if (!m) return MG_ERR_NOMEM;
        c->msgs = m;
        c->cap_msgs = cap;
    }
    c->msgs[c->n_msgs++] = (message){role, text};
    return MG_OK;
}

/* Adds the image placeholder message of Chat.upload_img. */
mg_status mg_chat_add_image(mg_chat *c) {
    if (!c) return MG_ERR_INVALID_ARG;
    if (c->n_images >= (1 << 20)) return MG_ERR_INVALID_ARG;
    char *t = dup_n(IMAGE_MESSAGE, strlen(IMAGE_MESSAGE));
    if (!t) return MG_ERR_NOMEM;
    mg_status st = append(c, 0, t);
    if (st != MG_OK) {
        free(t);
        return st;
    }
    c->n_images++;
    return MG_OK;
}

static bool ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && memcmp(s + n - k, suf, k) == 0;
}

/* Adds a user message as Chat.ask does: joined to an image message that ends in "</Img>". */
mg_status mg_chat_ask(mg_chat *c, const char *text) {
    if (!c || !text) return MG_ERR_INVALID_ARG;
    size_t n = strlen(text);
    message *last = c->n_msgs ? &c->msgs[c->n_msgs - 1] : NULL;
    if (last && last->role == 0 && last->text && ends_with(last->text, "</Img>")) {
        size_t old = strlen(last->text), total;
        if (!mg_add_ok(old, n, &total) || !mg_add_ok(total, 2, &total)) return MG_ERR_NOMEM;
        char *t = malloc(total);
        if (!t) return MG_ERR_NOMEM;
        memcpy(t, last->text, old);
        t[old] = ' ';
        memcpy(t + old + 1, text, n + 1);
        free(last->text);
        last->text = t;
        return MG_OK;
    }
    char *t = dup_n(text, n);
    if (!t) return MG_ERR_NOMEM;
    mg_status st = append(c, 0, t);
    if (st != MG_OK) free(t);
    return st;
}

/* Renders (get_prompt) and cuts the prompt into segments (get_context_emb); see minigpt.h. */
mg_status mg_chat_prompt(mg_chat *c, mg_prompt *out, char *err, size_t err_len) {
    if (!c || !out) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "chat: NULL argument");
    memset(out, 0, sizeof *out);
    const message *last = c->n_msgs ? &c->msgs[c->n_msgs - 1] : NULL;
    if (!last || last->role != 1 || last->text) {
        mg_status st = append(c, 1, NULL);
        if (st != MG_OK) return mg_err(err, err_len, st, "chat: out of memory");
    }
    const char *sep = TEMPLATES[c->tmpl].sep;
    c->prompt.len = 0;
    c->prompt.oom = false;
    gr_str_adds(&c->prompt, TEMPLATES[c->tmpl].system);
    gr_str_adds(&c->prompt, sep);
    for (int i = 0; i < c->n_msgs; i++) {
        const message *m = &c->msgs[i];
        gr_str_adds(&c->prompt, TEMPLATES[c->tmpl].roles[m->role]);
        /* Python: "if message:" - None and "" both render the role alone */
        if (m->text && m->text[0]) {
            gr_str_adds(&c->prompt, m->text);
            gr_str_adds(&c->prompt, sep);
        }
    }
    if (!gr_str_finish(&c->prompt)) return mg_err(err, err_len, MG_ERR_NOMEM, "chat: out of memory");

    const char *p = c->prompt.p;
    size_t len = c->prompt.len, mark = strlen(IMAGE_MARK);
    int n_marks = 0;
    for (const char *q = p; (q = strstr(q, IMAGE_MARK)) != NULL; q += mark) n_marks++;
    if (n_marks != c->n_images)
        return mg_err(err, err_len, MG_ERR_FORMAT,
                      "chat: the prompt holds %d \"<ImageHere>\" for %d image(s)", n_marks,
                      c->n_images);
    char *seg_text = dup_n(p, len);
    mg_prompt_segment *segs = calloc((size_t)n_marks + 1, sizeof *segs);
    if (!seg_text || !segs) {
        free(seg_text);
        free(segs);
        return mg_err(err, err_len, MG_ERR_NOMEM, "chat: out of memory");
    }
    char *s = seg_text;
    for (int i = 0; i <= n_marks; i++) {
        char *hit = i < n_marks ? strstr(s, IMAGE_MARK) : NULL;
        size_t n = hit ? (size_t)(hit - s) : strlen(s);
        s[n] = 0;
        segs[i] = (mg_prompt_segment){s, n, i == 0};
        s += n + (hit ? mark : 0);
    }
    free(c->seg_text);
    free(c->segs);
    c->seg_text = seg_text;
    c->segs = segs;
    out->text = c->prompt.p;
    out->len = len;
    out->segments = segs;
    out->n_segments = n_marks + 1;
    out->n_images = c->n_images;
    return MG_OK;
}

/* Closes the open assistant turn following the template's demo history rule. */
mg_status mg_chat_answer(mg_chat *c, const char *raw, size_t len) {
    if (!c || (!raw && len)) return MG_ERR_INVALID_ARG;
    message *last = c->n_msgs ? &c->msgs[c->n_msgs - 1] : NULL;
    if (!last || last->role != 1 || last->text) return MG_ERR_INVALID_ARG;
    char *t;
    if (c->tmpl == MG_CHAT_MINIGPT_V2) {
        t = dup_n("</s>", 4);
    } else {
        t = malloc(len + 1);
        if (t) mg_chat_postprocess(c->tmpl, raw ? raw : "", len, t, len + 1);
    }
    if (!t) return MG_ERR_NOMEM;
    last->text = t;
    return MG_OK;
}

/* ==== Post-processing ==== */

/* Python's str.isspace() for one code point. */
static bool py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* str.strip(): narrows [*b, *e) past leading and trailing whitespace. */
static void py_strip(const char *s, size_t *b, size_t *e) {
    size_t i = *b, first = *e, last = *b;
    bool seen = false;
    while (i < *e) {
        uint32_t cp;
        int l = gr_utf8_decode((const unsigned char *)s + i, *e - i, &cp);
        bool sp = l > 0 && py_space(cp);
        size_t adv = l > 0 ? (size_t)l : 1;
        if (!sp) {
            if (!seen) first = i;
            seen = true;
            last = i + adv;
        }
        i += adv;
    }
    if (!seen) {
        *b = *e;
        return;
    }
    *b = first;
    *e = last;
}

/* First occurrence of lit in s[b..e), or e. */
static size_t find_first(const char *s, size_t b, size_t e, const char *lit) {
    size_t k = strlen(lit);
    for (size_t i = b; i + k <= e; i++)
        if (memcmp(s + i, lit, k) == 0) return i;
    return e;
}

/* Position just after the last occurrence of lit in s[b..e), or b (split(lit)[-1]). */
static size_t after_last(const char *s, size_t b, size_t e, const char *lit) {
    size_t k = strlen(lit), r = b;
    for (size_t i = b; i + k <= e; i++)
        if (memcmp(s + i, lit, k) == 0) r = i + k;
    return r;
}

/* Copies s[b..e) into buf (snprintf-style truncation). */
static void emit(char *buf, size_t buf_len, size_t *w, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++, (*w)++)
        if (*w + 1 < buf_len) buf[*w] = s[i];
}

/* Post-processes generated text per template (see minigpt.h); returns the full length. */
int64_t mg_chat_postprocess(mg_chat_template tmpl, const char *raw, size_t len, char *buf,
                            size_t buf_len) {
    if (!valid_template(tmpl) || (!raw && len) || (!buf && buf_len)) return -1;
    if (!raw) raw = "";
    size_t w = 0;
    if (tmpl == MG_CHAT_MINIGPT_V2) {
        /* split('</s>')[0]; replace('<s>', ''); split('[/INST]')[-1].strip() - the removal of
         * "<s>" happens before the split, so work on a copy without it */
        size_t e = find_first(raw, 0, len, "</s>");
        char *tmp = malloc(e + 1);
        if (!tmp) return -1;
        size_t n = 0;
        for (size_t i = 0; i < e;) {
            if (i + 3 <= e && memcmp(raw + i, "<s>", 3) == 0) {
                i += 3;
                continue;
            }
            tmp[n++] = raw[i++];
        }
        size_t b = after_last(tmp, 0, n, "[/INST]"), en = n;
        py_strip(tmp, &b, &en);
        emit(buf, buf_len, &w, tmp + b, en - b);
        free(tmp);
    } else {
        /* split('###')[0]; split('Assistant:')[-1].strip() */
        size_t e = find_first(raw, 0, len, "###");
        size_t b = after_last(raw, 0, e, "Assistant:");
        py_strip(raw, &b, &e);
        emit(buf, buf_len, &w, raw + b, e - b);
    }
    if (buf_len) buf[w < buf_len ? w : buf_len - 1] = 0;
    return (int64_t)w;
}

/* ==== Stop rules and demo settings ==== */

static const int32_t STOP_HASH3[] = {835, -1};          /* "▁###" */
static const int32_t STOP_HASH2_1[] = {2277, 29937, -1}; /* "##", "#" */
static const int32_t *const STOPS_MINIGPT4[] = {STOP_HASH3, STOP_HASH2_1, NULL};
static const int32_t *const STOPS_NONE[] = {NULL};

/* The demo's extra stop sequences (demo.py stop_words_ids); EOS is separate. */
const int32_t *const *mg_chat_stop_seqs(mg_chat_template tmpl) {
    if (tmpl == MG_CHAT_MINIGPT4_VICUNA || tmpl == MG_CHAT_MINIGPT4_LLAMA2) return STOPS_MINIGPT4;
    return STOPS_NONE;
}

/* Fills the demo's sampling settings (Chat.answer_prepare defaults, demo sliders). */
void mg_chat_generation_defaults(mg_chat_template tmpl, mg_sampler_params *sp,
                                 mg_generate_params *gp) {
    bool v2 = tmpl == MG_CHAT_MINIGPT_V2;
    if (sp) {
        sp->temperature = v2 ? 0.6f : 1.0f;
        sp->top_p = 0.9f;
        sp->top_k = 50; /* transformers' default when sampling (spec 4.6: UNCONFIRMED) */
        sp->repeat_penalty = 1.05f;
    }
    if (gp) {
        gp->n_predict = v2 ? 500 : 300;
        gp->stop_seqs = v2 ? NULL : STOPS_MINIGPT4;
        gp->stop_at_eos = 1;
    }
}

/* ==== Task identifiers ==== */

static const struct {
    const char *name;
    const char *tag;
    const char *prefix;  /* demo_v2.py gradio_taskselect shortcut text (l.498-506) */
    const char *deflt;   /* instruction used when no text is given, or NULL */
} TASKS[] = {
    [MG_TASK_NONE] = {"none", "", "", NULL},
    [MG_TASK_GROUNDING] = {"grounding", "[grounding]", "[grounding] ",
                           "[grounding] describe this image in detail"},
    [MG_TASK_REFER] = {"refer", "[refer]", "[refer] ", NULL},
    [MG_TASK_DETECTION] = {"detection", "[detection]", "[detection] ", NULL},
    [MG_TASK_IDENTIFY] = {"identify", "[identify]", "[identify] what is this ", NULL},
    [MG_TASK_VQA] = {"vqa", "[vqa]", "[vqa] ", NULL},
    /* no demo shortcut: the first prompt of the caption training pool (caption_datasets.py) */
    [MG_TASK_CAPTION] = {"caption", "[caption]", "[caption] ", "[caption] Briefly describe this image."},
};

/* The identifier text of a task. */
const char *mg_task_tag(mg_task task) {
    if ((int)task < 0 || (int)task >= (int)MG_ARRAY_LEN(TASKS)) return NULL;
    return TASKS[task].tag;
}

static bool same_ci(const char *a, const char *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (char)(y - 'A' + 'a');
        if (x != y) return false;
    }
    return true;
}

/* Task from its name, with or without brackets, any case. */
int mg_task_from_name(const char *name) {
    if (!name) return -1;
    size_t n = strlen(name);
    if (n >= 2 && name[0] == '[' && name[n - 1] == ']') {
        name++;
        n -= 2;
    }
    if (n == 0) return MG_TASK_NONE;
    for (size_t i = 0; i < MG_ARRAY_LEN(TASKS); i++)
        if (strlen(TASKS[i].name) == n && same_ci(TASKS[i].name, name, n)) return (int)i;
    return -1;
}

/* The demo's instruction for a task and optional user text. */
mg_status mg_task_instruction(mg_task task, const char *text, char *buf, size_t buf_len,
                              char *err, size_t err_len) {
    if (!buf || buf_len == 0) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "task: no buffer");
    buf[0] = 0;
    if ((int)task < 0 || (int)task >= (int)MG_ARRAY_LEN(TASKS))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "task: unknown task %d", (int)task);
    const char *a, *b;
    if (!text || !text[0]) {
        if (!TASKS[task].deflt)
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "task %s needs a text",
                          TASKS[task].name);
        a = TASKS[task].deflt;
        b = "";
    } else {
        a = TASKS[task].prefix;
        b = text;
    }
    size_t na = strlen(a), nb = strlen(b);
    if (na + nb + 1 > buf_len)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "task: buffer of %zu bytes too small",
                      buf_len);
    memcpy(buf, a, na);
    memcpy(buf + na, b, nb + 1);
    return MG_OK;
}
