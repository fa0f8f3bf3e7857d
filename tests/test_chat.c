/*
 * test_chat.c - conversation templates, history rules, the split at <ImageHere>, answer
 * post-processing, stop sequences, demo settings and task identifiers. Rendered prompts are
 * compared with the Conversation logic of conversation.py re-run by tests/ref/grounding_ref.py,
 * and the first turns also with the literal prompts printed in spec 4.5.
 */
#include "test.h"

#include "minigpt.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static json_t *run_ref(json_t *req, const char *tag) {
    char in[1024], out[1024];
    snprintf(in, sizeof in, "%s/chat_%s_req.json", test_data_dir(), tag);
    snprintf(out, sizeof out, "%s/chat_%s_out.json", test_data_dir(), tag);
    if (json_dump_file(req, in, 0) != 0) return NULL;
    if (test_run("%s tests/ref/grounding_ref.py %s %s", test_python(), in, out) != 0) return NULL;
    json_error_t je;
    return json_load_file(out, 0, &je);
}

/* One scripted conversation: ops "image", "ask TEXT", "prompt", "answer RAW". */
typedef struct {
    mg_chat_template tmpl;
    const char *ops[12][2];
} script;

static const script SCRIPTS[] = {
    {MG_CHAT_MINIGPT_V2,
     {{"image", NULL}, {"ask", "[grounding] describe this image in detail"}, {"prompt", NULL},
      {"answer", "<p>a man</p> {<1><2><3><4>} sits."}, {"ask", "[refer] the cup"}, {"prompt", NULL},
      {"answer", "{<10><20><30><40>}"}, {"ask", "[vqa] what colour is it?"}, {"prompt", NULL}}},
    {MG_CHAT_MINIGPT4_VICUNA,
     {{"image", NULL}, {"ask", "What is this?"}, {"prompt", NULL},
      {"answer", " Assistant: It is a cat.###Human: bla"}, {"ask", "Why?"}, {"prompt", NULL},
      {"answer", "###"}, {"ask", "Again?"}, {"prompt", NULL}}},
    {MG_CHAT_MINIGPT4_LLAMA2,
     {{"image", NULL}, {"ask", "Describe the image."}, {"prompt", NULL},
      {"answer", "It is a dog. \n"}, {"ask", "And the colour?"}, {"prompt", NULL}}},
    /* text only, then an image later (two images in one conversation) */
    {MG_CHAT_MINIGPT_V2,
     {{"ask", "hello"}, {"prompt", NULL}, {"answer", "hi"}, {"image", NULL}, {"ask", "and this?"},
      {"prompt", NULL}, {"answer", "x"}, {"image", NULL}, {"ask", "compare"}, {"prompt", NULL}}},
};

TEST(chat_prompts_match_reference) {
    int n_scripts = (int)(sizeof SCRIPTS / sizeof SCRIPTS[0]);
    json_t *req = json_object(), *convs = json_array();
    for (int s = 0; s < n_scripts; s++) {
        json_t *ops = json_array();
        for (int k = 0; k < 12 && SCRIPTS[s].ops[k][0]; k++) {
            json_t *op = json_array();
            json_array_append_new(op, json_string(SCRIPTS[s].ops[k][0]));
            if (SCRIPTS[s].ops[k][1]) json_array_append_new(op, json_string(SCRIPTS[s].ops[k][1]));
            json_array_append_new(ops, op);
        }
        json_array_append_new(convs, json_pack("{s:i,s:o}", "template", (int)SCRIPTS[s].tmpl, "ops", ops));
    }
    json_object_set_new(req, "conv", convs);
    json_t *ref = run_ref(req, "conv");
    json_decref(req);
    CHECK_MSG(ref != NULL, "reference script failed");
    if (!ref) return;
    for (int s = 0; s < n_scripts; s++) {
        json_t *want = json_array_get(json_object_get(ref, "conv"), (size_t)s);
        mg_chat *c = NULL;
        CHECK(mg_chat_create(&c, SCRIPTS[s].tmpl) == MG_OK);
        if (!c) continue;
        size_t n_prompt = 0;
        for (int k = 0; k < 12 && SCRIPTS[s].ops[k][0]; k++) {
            const char *op = SCRIPTS[s].ops[k][0], *arg = SCRIPTS[s].ops[k][1];
            if (strcmp(op, "image") == 0) CHECK(mg_chat_add_image(c) == MG_OK);
            else if (strcmp(op, "ask") == 0) CHECK(mg_chat_ask(c, arg) == MG_OK);
            else if (strcmp(op, "answer") == 0) CHECK(mg_chat_answer(c, arg, strlen(arg)) == MG_OK);
            else {
                mg_prompt p;
                char err[256];
                CHECK(mg_chat_prompt(c, &p, err, sizeof err) == MG_OK);
                json_t *w = json_array_get(want, n_prompt++);
                const char *wp = json_string_value(json_object_get(w, "prompt"));
                CHECK_MSG(wp && strcmp(p.text, wp) == 0 && p.len == strlen(wp),
                          "script %d prompt:\n  C  '%s'\n  py '%s'", s, p.text, wp ? wp : "");
                json_t *segs = json_object_get(w, "segments");
                CHECK_EQ_INT(p.n_segments, (long long)json_array_size(segs));
                CHECK_EQ_INT(p.n_segments, p.n_images + 1);
                for (int i = 0; i < p.n_segments && (size_t)i < json_array_size(segs); i++) {
                    const char *ws = json_string_value(json_array_get(segs, (size_t)i));
                    CHECK_MSG(ws && strcmp(p.segments[i].text, ws) == 0 &&
                                  p.segments[i].len == strlen(ws),
                              "script %d segment %d '%s'", s, i, p.segments[i].text);
                    CHECK_EQ_INT(p.segments[i].add_bos, i == 0);
                }
            }
        }
        CHECK_EQ_INT(n_prompt, (long long)json_array_size(want));
        mg_chat_free(c);
    }
    json_decref(ref);
}

/* The first turn of each template against the literal prompts of spec 4.5 (written out there from
 * conversation.py l.110-136), and the v2 second turn with the "</s>" history (demo_v2.py l.479). */
TEST(chat_first_turn_literal) {
    static const char *sys =
        "Give the following image: <Img>ImageContent</Img>. You will be able to see the image "
        "once I provide it to you. Please answer my questions.";
    char want[1024];
    mg_prompt p;
    mg_chat *c;

    CHECK(mg_chat_create(&c, MG_CHAT_MINIGPT4_VICUNA) == MG_OK);
    mg_chat_add_image(c);
    mg_chat_ask(c, "What is it?");
    CHECK(mg_chat_prompt(c, &p, NULL, 0) == MG_OK);
    snprintf(want, sizeof want, "%s###Human: <Img><ImageHere></Img> What is it?###Assistant: ", sys);
    CHECK(strcmp(p.text, want) == 0);
    snprintf(want, sizeof want, "%s###Human: <Img>", sys);
    CHECK(p.n_segments == 2 && strcmp(p.segments[0].text, want) == 0 &&
          strcmp(p.segments[1].text, "</Img> What is it?###Assistant: ") == 0);
    /* prompt again without an answer: the open turn is not doubled */
    CHECK(mg_chat_prompt(c, &p, NULL, 0) == MG_OK && strcmp(p.segments[1].text, "</Img> What is it?###Assistant: ") == 0);
    mg_chat_free(c);

    CHECK(mg_chat_create(&c, MG_CHAT_MINIGPT4_LLAMA2) == MG_OK);
    mg_chat_add_image(c);
    mg_chat_ask(c, "What is it?");
    CHECK(mg_chat_prompt(c, &p, NULL, 0) == MG_OK);
    snprintf(want, sizeof want, "%s<s>[INST] <Img><ImageHere></Img> What is it? [/INST] ", sys);
    CHECK(strcmp(p.text, want) == 0);
    CHECK(mg_chat_answer(c, "A cat.", 6) == MG_OK);
    mg_chat_ask(c, "Sure?");
    CHECK(mg_chat_prompt(c, &p, NULL, 0) == MG_OK);
    snprintf(want, sizeof want,
             "%s<s>[INST] <Img><ImageHere></Img> What is it? [/INST] A cat.<s>[INST] Sure? [/INST] ", sys);
    CHECK(strcmp(p.text, want) == 0);
    mg_chat_free(c);

    CHECK(mg_chat_create(&c, MG_CHAT_MINIGPT_V2) == MG_OK);
    mg_chat_add_image(c);
    mg_chat_ask(c, "[refer] the cup");
    CHECK(mg_chat_prompt(c, &p, NULL, 0) == MG_OK);
    CHECK(strcmp(p.text, "<s>[INST] <Img><ImageHere></Img> [refer] the cup [/INST]") == 0);
    CHECK(strcmp(p.segments[0].text, "<s>[INST] <Img>") == 0 && p.segments[0].add_bos == 1);
    CHECK(strcmp(p.segments[1].text, "</Img> [refer] the cup [/INST]") == 0 && p.segments[1].add_bos == 0);
    CHECK(mg_chat_answer(c, "{<1><2><3><4>}", 14) == MG_OK);
    CHECK(mg_chat_answer(c, "again", 5) == MG_ERR_INVALID_ARG); /* no open turn */
    mg_chat_ask(c, "[vqa] why?");
    CHECK(mg_chat_prompt(c, &p, NULL, 0) == MG_OK);
    CHECK(strcmp(p.text, "<s>[INST] <Img><ImageHere></Img> [refer] the cup [/INST]</s><s>[INST] "
                         "[vqa] why? [/INST]") == 0);
    /* reset starts over */
    mg_chat_reset(c);
    mg_chat_ask(c, "hi");
    CHECK(mg_chat_prompt(c, &p, NULL, 0) == MG_OK && strcmp(p.text, "<s>[INST] hi [/INST]") == 0 &&
          p.n_segments == 1 && p.n_images == 0);
    mg_chat_free(c);
}

TEST(chat_image_marker_mismatch) {
    mg_chat *c;
    mg_prompt p;
    char err[256] = "";
    CHECK(mg_chat_create(&c, MG_CHAT_MINIGPT_V2) == MG_OK);
    mg_chat_ask(c, "a literal <ImageHere> in the text");
    CHECK(mg_chat_prompt(c, &p, err, sizeof err) == MG_ERR_FORMAT && err[0] != 0);
    mg_chat_free(c);
    CHECK(mg_chat_create(&c, (mg_chat_template)7) == MG_ERR_INVALID_ARG && c == NULL);
    CHECK(mg_chat_ask(NULL, "x") == MG_ERR_INVALID_ARG);
    mg_chat_free(NULL);
}

TEST(chat_postprocess_matches_reference) {
    static const struct {
        mg_chat_template t;
        const char *raw;
    } cases[] = {
        {MG_CHAT_MINIGPT4_VICUNA, " It is a cat.###Human: more"},
        {MG_CHAT_MINIGPT4_VICUNA, "Assistant: one Assistant: two ###"},
        {MG_CHAT_MINIGPT4_LLAMA2, "\xc2\xa0\xe3\x80\x80 spaced \x1c\t\n"},
        {MG_CHAT_MINIGPT4_LLAMA2, "###"},
        {MG_CHAT_MINIGPT4_VICUNA, "no markers at all"},
        {MG_CHAT_MINIGPT4_VICUNA, "\xe2\x80\x8b zero width is not space \xe2\x80\x8b"},
        {MG_CHAT_MINIGPT_V2, " <p>cat</p> {<1><2><3><4>}</s>junk"},
        {MG_CHAT_MINIGPT_V2, "<s>[INST] q [/INST] the answer </s>"},
        {MG_CHAT_MINIGPT_V2, "<<s>s>x [/INST"},
        {MG_CHAT_MINIGPT_V2, "[/INST][/INST]  last\xe2\x80\xa8"},
        {MG_CHAT_MINIGPT_V2, ""},
    };
    json_t *req = json_object(), *arr = json_array();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        json_array_append_new(arr, json_pack("[is]", (int)cases[i].t, cases[i].raw));
    json_object_set_new(req, "post", arr);
    json_t *ref = run_ref(req, "post");
    json_decref(req);
    CHECK_MSG(ref != NULL, "reference script failed");
    for (size_t i = 0; ref && i < sizeof cases / sizeof cases[0]; i++) {
        char buf[256];
        int64_t n = mg_chat_postprocess(cases[i].t, cases[i].raw, strlen(cases[i].raw), buf, sizeof buf);
        const char *want = json_string_value(json_array_get(json_object_get(ref, "post"), i));
        CHECK_MSG(want && n == (int64_t)strlen(want) && strcmp(buf, want) == 0,
                  "post %zu: '%s' vs '%s'", i, buf, want ? want : "");
    }
    json_decref(ref);
    /* truncation keeps the full length as the return value */
    char small[4];
    CHECK(mg_chat_postprocess(MG_CHAT_MINIGPT_V2, "abcdef", 6, small, sizeof small) == 6 &&
          strcmp(small, "abc") == 0);
    CHECK(mg_chat_postprocess((mg_chat_template)9, "a", 1, small, sizeof small) == -1);
}

TEST(chat_stop_and_defaults) {
    /* demo.py: stop_words_ids = [[835], [2277, 29937]]; v2 stops on EOS only (spec 4.6) */
    const int32_t *const *s = mg_chat_stop_seqs(MG_CHAT_MINIGPT4_VICUNA);
    CHECK(s[0] && s[0][0] == 835 && s[0][1] == -1);
    CHECK(s[1] && s[1][0] == 2277 && s[1][1] == 29937 && s[1][2] == -1);
    CHECK(s[2] == NULL);
    CHECK(mg_chat_stop_seqs(MG_CHAT_MINIGPT4_LLAMA2) == s);
    CHECK(mg_chat_stop_seqs(MG_CHAT_MINIGPT_V2)[0] == NULL);
    mg_sampler_params sp = {0};
    mg_generate_params gp = {0};
    mg_chat_generation_defaults(MG_CHAT_MINIGPT_V2, &sp, &gp);
    CHECK_CLOSE(sp.temperature, 0.6, 1e-6);
    CHECK_CLOSE(sp.top_p, 0.9, 1e-6);
    CHECK_CLOSE(sp.repeat_penalty, 1.05, 1e-6);
    CHECK(gp.n_predict == 500 && gp.stop_seqs == NULL && gp.stop_at_eos == 1);
    mg_chat_generation_defaults(MG_CHAT_MINIGPT4_VICUNA, &sp, &gp);
    CHECK_CLOSE(sp.temperature, 1.0, 1e-6);
    CHECK(gp.n_predict == 300 && gp.stop_seqs == s);
}

TEST(chat_tasks) {
    /* demo_v2.py gradio_taskselect (l.498-506) and its examples (l.586-597) */
    char buf[128], err[128];
    CHECK(strcmp(mg_task_tag(MG_TASK_GROUNDING), "[grounding]") == 0);
    CHECK(strcmp(mg_task_tag(MG_TASK_CAPTION), "[caption]") == 0);
    CHECK(strcmp(mg_task_tag(MG_TASK_NONE), "") == 0 && mg_task_tag((mg_task)99) == NULL);
    CHECK(mg_task_from_name("[REFER]") == MG_TASK_REFER && mg_task_from_name("vqa") == MG_TASK_VQA);
    CHECK(mg_task_from_name("identify") == MG_TASK_IDENTIFY && mg_task_from_name("") == MG_TASK_NONE);
    CHECK(mg_task_from_name("[detection]") == MG_TASK_DETECTION && mg_task_from_name("foo") == -1);
    CHECK(mg_task_instruction(MG_TASK_GROUNDING, NULL, buf, sizeof buf, err, sizeof err) == MG_OK &&
          strcmp(buf, "[grounding] describe this image in detail") == 0);
    CHECK(mg_task_instruction(MG_TASK_REFER, "the world cup", buf, sizeof buf, NULL, 0) == MG_OK &&
          strcmp(buf, "[refer] the world cup") == 0);
    CHECK(mg_task_instruction(MG_TASK_DETECTION, "sofas", buf, sizeof buf, NULL, 0) == MG_OK &&
          strcmp(buf, "[detection] sofas") == 0);
    CHECK(mg_task_instruction(MG_TASK_IDENTIFY, "{<4><50><30><65>}", buf, sizeof buf, NULL, 0) == MG_OK &&
          strcmp(buf, "[identify] what is this {<4><50><30><65>}") == 0);
    CHECK(mg_task_instruction(MG_TASK_VQA, "where should I hide", buf, sizeof buf, NULL, 0) == MG_OK &&
          strcmp(buf, "[vqa] where should I hide") == 0);
    CHECK(mg_task_instruction(MG_TASK_CAPTION, "", buf, sizeof buf, NULL, 0) == MG_OK &&
          strcmp(buf, "[caption] Briefly describe this image.") == 0);
    CHECK(mg_task_instruction(MG_TASK_NONE, "Is the weapon fateful", buf, sizeof buf, NULL, 0) == MG_OK &&
          strcmp(buf, "Is the weapon fateful") == 0);
    CHECK(mg_task_instruction(MG_TASK_REFER, NULL, buf, sizeof buf, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(mg_task_instruction(MG_TASK_REFER, "x", buf, 5, err, sizeof err) == MG_ERR_INVALID_ARG);
}
