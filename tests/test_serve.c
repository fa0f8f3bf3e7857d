/*
 * test_serve.c - `minigpt serve` end to end: starts the real binary (MG_BIN) on a free loopback
 * port with the tiny random MiniGPT-v2 and LLaMA models of tests/ref/e2e_ref.py, and drives it
 * from node (tests/node/serve_client.mjs: the `openai` npm client and raw fetch;
 * tests/node/serve_browser.mjs: the web demo in headless Chromium via playwright-core). The node
 * scripts print what they saw as JSON; the checks are made here. Covers: OpenAI responses and
 * SSE streaming with images, the grounding field (via the --fake-answer test hook, since a random
 * model writes no boxes), the image embedding cache across turns, KV reuse, text-only models,
 * every kind of bad request (4xx in OpenAI's shape), 401s, 503 when the queue is full, FIFO
 * order, cancellation of abandoned requests, 16 clients x 50 requests with RSS before/after,
 * clean shutdown on SIGTERM.
 */
#include "test.h"

#include "minigpt.h"
#include "evalscore.h"
#include "world.h"

#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FAKE "<p>red circle</p> {<10><20><40><60>}<delim>{<50><50><70><90>} and <p>blue square</p> {<55><10><90><45>}"
#define KEY "test-key-123"

typedef struct {
    pid_t pid;
    int port;
    char log[1024];
    char url[64];
} srv_proc;

static const char *bin(void) {
    const char *b = getenv("MG_BIN");
    return b && *b ? b : "build/minigpt";
}

static const char *dpath(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", test_data_dir(), name);
    return buf;
}

static bool file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && st.st_size > 0;
}

/* The tiny models and image of e2e_ref.py (shared with test_e2e: generated once per data dir). */
static bool ensure_models(void) {
    static int state = 0;
    if (state) return state > 0;
    char a[1024], b[1024], c[1024];
    if (!file_exists(dpath(a, sizeof a, "e2e_v2.gguf")) || !file_exists(dpath(b, sizeof b, "e2e_v2_llm.gguf")) ||
        !file_exists(dpath(c, sizeof c, "e2e_img.png")))
        test_run("'%s' tests/ref/e2e_ref.py '%s' > /dev/null", test_python(), test_data_dir());
    state = file_exists(a) && file_exists(b) && file_exists(c) ? 1 : -1;
    return state > 0;
}

static bool have_node(void) {
    return test_run("node --version > /dev/null 2>&1") == 0 && file_exists("tests/node/node_modules/openai/package.json");
}

/* Starts `minigpt serve -m MODEL --port 0 ARGS` with stderr in a log file; waits for its
 * "listening on" line. */
static bool server_start(srv_proc *s, const char *name, const char *model, const char *args) {
    memset(s, 0, sizeof s[0]);
    char mp[1024], cmd[4096];
    dpath(s->log, sizeof s->log, name);
    /* a bare name is one of the test data dir's models; a path is used as it is */
    snprintf(cmd, sizeof cmd, "exec '%s' serve -m '%s' --port 0 -t 2 %s 2> '%s'", bin(),
             strchr(model, '/') ? model : dpath(mp, sizeof mp, model), args, s->log);
    unlink(s->log);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    for (int i = 0; i < 300; i++) { /* 15 s */
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            s->pid = 0;
            break;
        }
        char *log = test_read_file(s->log, NULL);
        const char *p = log ? strstr(log, "listening on http://127.0.0.1:") : NULL;
        if (p) s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
        free(log);
        if (s->port > 0) {
            snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
            return true;
        }
    }
    char *log = test_read_file(s->log, NULL);
    printf("    server did not start: %s\n", log ? log : "(no log)");
    free(log);
    if (s->pid) kill(s->pid, SIGKILL), waitpid(s->pid, NULL, 0);
    s->pid = 0;
    return false;
}

/* SIGTERM, then waits (5 s) for a clean exit; returns the exit status (-1: had to be killed). */
static int server_stop(srv_proc *s) {
    if (!s->pid) return -1;
    kill(s->pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    return -1;
}

static bool server_alive(const srv_proc *s) { return s->pid > 0 && kill(s->pid, 0) == 0 && waitpid(s->pid, NULL, WNOHANG) == 0; }

/* VmRSS of a process in KiB (-1 if unknown). */
static long rss_kb(pid_t pid) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "r"); /* procfs files have no size: read line by line */
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* Runs a node script (command built printf-style) and parses the last line of its stdout as
 * JSON. *rc receives the exit status. */
static json_t *node_json(int *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static json_t *node_json(int *rc, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    fflush(stdout);
    FILE *f = popen(cmd, "r");
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    char tmp[8192];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            char *q = realloc(buf, cap);
            if (!q) break;
            buf = q;
        }
        memcpy(buf + len, tmp, n);
        len += n;
        buf[len] = 0;
    }
    int st = pclose(f);
    if (rc) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (!buf) return NULL;
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = 0;
    char *last = strrchr(buf, '\n');
    json_error_t e;
    json_t *j = json_loads(last ? last + 1 : buf, 0, &e);
    if (!j) printf("    node output is not JSON: %.500s\n", last ? last + 1 : buf);
    else if (json_object_get(j, "error")) printf("    node error: %.2000s\n", json_string_value(json_object_get(j, "error")));
    free(buf);
    return j;
}

/* json_path(j, "a.b.0.c"): object keys and array indexes. */
static json_t *jp(json_t *j, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *tok = strtok(buf, "."); tok && j; tok = strtok(NULL, "."))
        j = (tok[0] >= '0' && tok[0] <= '9') ? json_array_get(j, (size_t)atoi(tok)) : json_object_get(j, tok);
    return j;
}
static long long jint(json_t *j, const char *path) { return json_integer_value(jp(j, path)); }
static double jnum(json_t *j, const char *path) { return json_number_value(jp(j, path)); }
static const char *jstr(json_t *j, const char *path) {
    const char *s = json_string_value(jp(j, path));
    return s ? s : "";
}

static void client_cmd(char *cmd, size_t n, const char *mode, const srv_proc *s, const char *model, const char *extra) {
    char img[1024];
    snprintf(cmd, n, "MG_API_KEY=%s node tests/node/serve_client.mjs %s %s %s '%s' %s", KEY, mode, s->url, model,
             dpath(img, sizeof img, "e2e_img.png"), extra ? extra : "");
}

#define REQUIRE_SETUP()                                                                                 \
    do {                                                                                                \
        if (!have_node()) SKIP("node or tests/node/node_modules/openai missing (npm ci in tests/node)"); \
        if (!ensure_models()) SKIP("tests/ref/e2e_ref.py could not build the tiny models");             \
    } while (0)

/* The openai client: a grounded answer (fake-answer hook) non-streamed and streamed, with an image. */
TEST(serve_openai_client) {
    REQUIRE_SETUP();
    srv_proc s;
    CHECK(server_start(&s, "serve_openai.log", "e2e_v2.gguf", "--api-key " KEY " --fake-answer '" FAKE "'"));
    if (!s.pid) return;
    char cmd[4096];
    client_cmd(cmd, sizeof cmd, "openai", &s, "e2e_v2.gguf", NULL);
    int rc;
    json_t *r = node_json(&rc, "%s", cmd);
    CHECK_EQ_INT(rc, 0);
    CHECK(r != NULL);
    if (r) {
        CHECK(strcmp(jstr(r, "nonstream.content"), FAKE) == 0);
        CHECK(strcmp(jstr(r, "nonstream.finish"), "stop") == 0);
        CHECK(jint(r, "nonstream.usage.prompt_tokens") > 256); /* 256 image rows + text */
        CHECK(jint(r, "nonstream.usage.completion_tokens") > 0);
        CHECK_EQ_INT(jint(r, "nonstream.usage.total_tokens"),
                     jint(r, "nonstream.usage.prompt_tokens") + jint(r, "nonstream.usage.completion_tokens"));
        json_t *g = jp(r, "nonstream.grounding");
        CHECK(json_is_object(g));
        CHECK_EQ_INT(json_array_size(jp(g, "entities")), 2);
        CHECK(strcmp(jstr(g, "entities.0.phrase"), "red circle") == 0);
        CHECK(strcmp(jstr(g, "entities.1.phrase"), "blue square") == 0);
        CHECK_EQ_INT(json_array_size(jp(g, "entities.0.boxes")), 2);
        CHECK(strcmp(jstr(g, "clean_text"), "red circle  and blue square ") == 0 ||
              strncmp(jstr(g, "clean_text"), "red circle", 10) == 0);
        /* e2e_img.png is 320 x 240: {<10><20><40><60>} -> (32, 48) - (128, 144) pixels */
        CHECK_EQ_INT(jint(g, "image.0"), 320);
        CHECK_EQ_INT(jint(g, "image.1"), 240);
        CHECK_CLOSE(jnum(g, "entities.0.boxes.0.px.0"), 32, 1e-9);
        CHECK_CLOSE(jnum(g, "entities.0.boxes.0.px.1"), 48, 1e-9);
        CHECK_CLOSE(jnum(g, "entities.0.boxes.0.px.2"), 128, 1e-9);
        CHECK_CLOSE(jnum(g, "entities.0.boxes.0.px.3"), 144, 1e-9);
        CHECK_EQ_INT(jint(g, "entities.0.span.0"), 0);
        CHECK_EQ_INT(jint(g, "entities.0.span.1"), 10);
        /* streaming: the deltas add up to the answer; the last chunk carries the grounding */
        CHECK(strcmp(jstr(r, "stream.text"), FAKE) == 0);
        CHECK(jint(r, "stream.chunks") >= 5);
        CHECK(strcmp(jstr(r, "stream.finish"), "stop") == 0);
        CHECK_EQ_INT(json_array_size(jp(r, "stream.grounding.entities")), 2);
        CHECK(jint(r, "stream.usage.prompt_tokens") > 256);
        CHECK(strcmp(jstr(r, "models.0"), "e2e_v2.gguf") == 0);
    }
    json_decref(r);
    char *log = test_read_file(s.log, NULL);
    CHECK(log && strstr(log, "POST /v1/chat/completions 200"));
    CHECK(log && strstr(log, "GET /v1/models 200"));
    free(log);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* Real generation with the random model: the image is encoded once across turns and requests,
 * the KV cache prefix is reused, streaming works token by token. */
TEST(serve_real_model) {
    REQUIRE_SETUP();
    srv_proc s;
    CHECK(server_start(&s, "serve_real.log", "e2e_v2.gguf", "--api-key " KEY));
    if (!s.pid) return;
    char cmd[4096];
    client_cmd(cmd, sizeof cmd, "multiturn", &s, "e2e_v2.gguf", NULL);
    json_t *r = node_json(NULL, "%s", cmd);
    CHECK(r != NULL);
    if (r) {
        /* 3 images received (1 + 2 in the second request), all the same: encoded once */
        CHECK_EQ_INT(jint(r, "h1.images.received") - jint(r, "h0.images.received"), 3);
        CHECK_EQ_INT(jint(r, "h1.images.encoded") - jint(r, "h0.images.encoded"), 1);
        CHECK_EQ_INT(jint(r, "h1.images.cache_hits") - jint(r, "h0.images.cache_hits"), 2);
        CHECK_EQ_INT(jint(r, "timings.images_cached"), 2);
        /* the second request evaluates only what follows the first one's prompt */
        CHECK(jint(r, "usage.prompt_tokens") > 512);
        CHECK(jint(r, "timings.prompt_evaluated") < jint(r, "usage.prompt_tokens") - 256);
    }
    json_decref(r);
    client_cmd(cmd, sizeof cmd, "openai", &s, "e2e_v2.gguf", NULL);
    r = node_json(NULL, "%s", cmd);
    CHECK(r != NULL);
    if (r) {
        CHECK(jint(r, "nonstream.usage.completion_tokens") >= 1 && jint(r, "nonstream.usage.completion_tokens") <= 16);
        CHECK(json_is_array(jp(r, "nonstream.grounding.entities"))); /* present even without boxes */
        CHECK(json_is_string(jp(r, "stream.text")));
        CHECK(jint(r, "stream.usage.completion_tokens") >= 1 && jint(r, "stream.usage.completion_tokens") <= 16);
        CHECK(strcmp(jstr(r, "stream.finish"), "length") == 0 || strcmp(jstr(r, "stream.finish"), "stop") == 0);
    }
    json_decref(r);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* A LLaMA GGUF: text chat, greedy answers identical with and without KV reuse, image parts and
 * prompts beyond the context refused. */
TEST(serve_text_model) {
    REQUIRE_SETUP();
    srv_proc s;
    CHECK(server_start(&s, "serve_text.log", "e2e_v2_llm.gguf", "--api-key " KEY " -c 96"));
    if (!s.pid) return;
    char cmd[4096];
    client_cmd(cmd, sizeof cmd, "text", &s, "e2e_v2_llm.gguf", NULL);
    json_t *r = node_json(NULL, "%s", cmd);
    CHECK(r != NULL);
    if (r) {
        CHECK(json_is_string(jp(r, "content")));
        CHECK(strcmp(jstr(r, "content"), jstr(r, "again")) == 0); /* greedy: same answer, KV reused or not */
        CHECK(json_is_false(jp(r, "grounding")));
        CHECK(jint(r, "usage.completion_tokens") >= 1);
        CHECK(json_is_string(jp(r, "stream")));
        CHECK_EQ_INT(jint(r, "image.status"), 400);
        CHECK(strcmp(jstr(r, "image.code"), "images_unsupported") == 0);
        CHECK_EQ_INT(jint(r, "long.status"), 400);
        CHECK(strcmp(jstr(r, "long.code"), "context_length_exceeded") == 0);
    }
    json_decref(r);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* Every kind of bad request gets its 4xx in OpenAI's shape, and the server goes on serving. */
TEST(serve_bad_requests) {
    REQUIRE_SETUP();
    /* an image over --max-pixels 100000 (400 x 400); e2e_img.png (320 x 240) stays under */
    char big[1024], err[256];
    mg_image im = {400, 400, calloc(400 * 400, 3)};
    CHECK(im.rgb && mg_image_write_png(&im, dpath(big, sizeof big, "serve_big.png"), err, sizeof err) == MG_OK);
    mg_image_free(&im);
    srv_proc s;
    CHECK(server_start(&s, "serve_bad.log", "e2e_v2.gguf",
                       "--api-key " KEY " --max-pixels 100000 --max-body 1048576 --max-tokens 64 --allow-remote-images "
                       "--fake-answer '" FAKE "'"));
    if (!s.pid) return;
    char cmd[4096];
    client_cmd(cmd, sizeof cmd, "bad", &s, "e2e_v2.gguf", big);
    json_t *r = node_json(NULL, "%s", cmd);
    CHECK(r != NULL);
    static const struct {
        const char *name;
        int status;
        const char *code; /* NULL: any */
    } want[] = {
        {"malformed_json", 400, "invalid_json"},      {"not_object", 400, "invalid_type"},
        {"empty_body", 400, "invalid_json"},          {"messages_missing", 400, "invalid_type"},
        {"messages_wrong_type", 400, "invalid_type"}, {"role_unknown", 400, "invalid_value"},
        {"content_wrong_type", 400, "invalid_type"},  {"part_unknown", 400, "invalid_type"},
        {"last_not_user", 400, "invalid_request"},    {"unknown_model", 404, "model_not_found"},
        {"temperature_type", 400, "invalid_type"},    {"temperature_range", 400, "invalid_value"},
        {"max_tokens_cap", 400, "max_tokens_too_large"}, {"max_tokens_type", 400, "invalid_type"},
        {"stop_type", 400, "invalid_type"},           {"stream_type", 400, "invalid_type"},
        {"n_two", 400, "invalid_value"},              {"bad_base64", 400, "invalid_base64"},
        {"not_an_image", 400, "invalid_image"},       {"remote_url", 400, "remote_images_unsupported"},
        {"image_too_large", 400, "image_too_large"},  {"body_too_large", 413, "request_too_large"},
        {"no_auth", 401, "invalid_api_key"},          {"wrong_auth", 401, "invalid_api_key"},
        {"not_found", 404, NULL},                     {"wrong_method", 405, NULL},
    };
    if (r) {
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            json_t *x = jp(jp(r, "results"), want[i].name);
            CHECK_MSG(x != NULL, "%s: no result", want[i].name);
            long long st = jint(x, "status");
            CHECK_MSG(st == want[i].status, "%s: status %lld, want %d", want[i].name, st, want[i].status);
            if (want[i].code) {
                CHECK_MSG(strcmp(jstr(x, "code"), want[i].code) == 0, "%s: code '%s', want '%s'", want[i].name,
                          jstr(x, "code"), want[i].code);
                CHECK_MSG(json_is_true(jp(x, "has_message")), "%s: no error.message", want[i].name);
                CHECK_MSG(strcmp(jstr(x, "type"), st == 401 ? "authentication_error" : "invalid_request_error") == 0,
                          "%s: type '%s'", want[i].name, jstr(x, "type"));
            }
        }
        CHECK_EQ_INT(jint(r, "good"), 200); /* still serving */
        CHECK_EQ_INT(jint(r, "page.status"), 200);
        CHECK(strncmp(jstr(r, "page.type"), "text/html", 9) == 0);
        CHECK(json_is_true(jp(r, "page.has_chips")));
        CHECK_EQ_INT(jint(r, "js"), 200);
        CHECK(jint(r, "health.requests.errors") >= 24);
    }
    json_decref(r);
    CHECK(server_alive(&s));
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* A full queue answers 503 (queue_full); the requests let in are served in arrival order; an
 * abandoned request is cancelled (skipped or stopped) so the worker moves on. */
TEST(serve_queue_and_cancel) {
    REQUIRE_SETUP();
    srv_proc s;
    CHECK(server_start(&s, "serve_busy.log", "e2e_v2_llm.gguf", "--api-key " KEY " --queue 2 --fake-delay-ms 300 --fake-answer ok"));
    if (!s.pid) return;
    char cmd[4096];
    client_cmd(cmd, sizeof cmd, "busy", &s, "e2e_v2_llm.gguf", "8");
    json_t *r = node_json(NULL, "%s", cmd);
    CHECK(r != NULL);
    if (r) {
        int ok = 0, busy = 0;
        for (size_t i = 0; i < json_array_size(jp(r, "results")); i++) {
            json_t *x = json_array_get(jp(r, "results"), i);
            if (jint(x, "status") == 200) ok++;
            if (jint(x, "status") == 503) {
                busy++;
                CHECK(strcmp(jstr(x, "code"), "queue_full") == 0);
            }
        }
        CHECK_MSG(ok >= 3 && busy >= 1 && ok + busy == 8, "ok %d, busy %d", ok, busy);
        json_t *order = jp(r, "order");
        for (size_t i = 1; i < json_array_size(order); i++)
            CHECK(json_integer_value(json_array_get(order, i)) > json_integer_value(json_array_get(order, i - 1)));
        CHECK_EQ_INT(jint(r, "health.requests.busy"), busy);
    }
    json_decref(r);
    CHECK_EQ_INT(server_stop(&s), 0);

    CHECK(server_start(&s, "serve_cancel.log", "e2e_v2_llm.gguf", "--api-key " KEY " --fake-delay-ms 1500 --fake-answer ok"));
    if (!s.pid) return;
    client_cmd(cmd, sizeof cmd, "cancel", &s, "e2e_v2_llm.gguf", NULL);
    r = node_json(NULL, "%s", cmd);
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_INT(jint(r, "h1.requests.cancelled") - jint(r, "h0.requests.cancelled"), 2);
        CHECK_EQ_INT(jint(r, "after"), 200);
        /* not cancelled, the two abandoned requests would hold the worker ~3 s before it */
        CHECK_MSG(jint(r, "after_ms") < 2600, "next request took %lld ms", jint(r, "after_ms"));
    }
    json_decref(r);
    char *log = test_read_file(s.log, NULL);
    CHECK(log && strstr(log, "client gone: cancelled"));
    free(log);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* 16 concurrent clients x 50 requests, one in four malformed: no crash, every valid request
 * answered 200, every malformed one a 4xx, RSS stable. */
TEST(serve_load) {
    REQUIRE_SETUP();
    srv_proc s;
    CHECK(server_start(&s, "serve_load.log", "e2e_v2.gguf", "--api-key " KEY " --queue 64 --fake-answer '" FAKE "'"));
    if (!s.pid) return;
    char cmd[4096];
    client_cmd(cmd, sizeof cmd, "load", &s, "e2e_v2.gguf", "16 5"); /* warm-up */
    json_decref(node_json(NULL, "%s", cmd));
    long rss0 = rss_kb(s.pid);
    int clients = 16, per = test_quick() ? 10 : 50;
    char extra[32];
    snprintf(extra, sizeof extra, "%d %d", clients, per);
    client_cmd(cmd, sizeof cmd, "load", &s, "e2e_v2.gguf", extra);
    json_t *r = node_json(NULL, "%s", cmd);
    long rss1 = rss_kb(s.pid);
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_INT(jint(r, "valid_sent") + jint(r, "malformed_sent"), clients * per);
        CHECK_EQ_INT(jint(r, "ok"), jint(r, "valid_sent"));
        CHECK_EQ_INT(jint(r, "bad_4xx"), jint(r, "malformed_sent"));
        CHECK_EQ_INT(jint(r, "unexpected"), 0);
        if (jint(r, "unexpected")) printf("    failures: %s\n", json_dumps(jp(r, "failures"), 0));
        printf("    %d requests in %.2f s; RSS %ld -> %ld KiB\n", clients * per, jnum(r, "seconds"), rss0, rss1);
    }
    json_decref(r);
    CHECK(server_alive(&s));
    CHECK(rss0 > 0 && rss1 > 0);
    /* AddressSanitizer runs (MG_TEST_QUICK) keep up to 256 MiB of freed memory in quarantine */
    long bound_kb = test_quick() ? 512 * 1024 : 48 * 1024;
    CHECK_MSG(rss1 - rss0 < bound_kb, "RSS grew from %ld to %ld KiB", rss0, rss1);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* The web demo in headless Chromium: upload, [detection], send, boxes drawn, screenshot. */
TEST(serve_browser) {
    REQUIRE_SETUP();
    if (access("/usr/bin/chromium", X_OK) != 0) SKIP("Debian's chromium is not installed (/usr/bin/chromium)");
    if (!file_exists("tests/node/node_modules/playwright-core/package.json")) SKIP("playwright-core missing (npm ci in tests/node)");
    srv_proc s;
    CHECK(server_start(&s, "serve_browser.log", "e2e_v2.gguf", "--fake-answer '" FAKE "'"));
    if (!s.pid) return;
    char img[1024], shot[1024];
    dpath(img, sizeof img, "e2e_img.png");
    dpath(shot, sizeof shot, "serve_browser.png");
    unlink(shot);
    int rc;
    json_t *r = node_json(&rc, "timeout 60 node tests/node/serve_browser.mjs %s '%s' '%s'", s.url, img, shot);
    if (rc == 3) {
        json_decref(r);
        server_stop(&s);
        SKIP("chromium cannot be launched");
    }
    CHECK_EQ_INT(rc, 0);
    CHECK(r != NULL);
    if (r) {
        CHECK(strcmp(jstr(r, "prompt_after_chip"), "[detection] ") == 0);
        json_t *boxes = jp(r, "boxes");
        CHECK_EQ_INT(json_array_size(boxes), 3); /* red circle x2, blue square x1 */
        CHECK(strcmp(jstr(boxes, "0.label"), "red circle") == 0);
        CHECK(strcmp(jstr(boxes, "2.label"), "blue square") == 0);
        CHECK(strcmp(jstr(boxes, "0.color"), jstr(boxes, "1.color")) == 0);
        CHECK(strcmp(jstr(boxes, "0.color"), jstr(boxes, "2.color")) != 0);
        CHECK(strcmp(jstr(boxes, "0.left"), "10%") == 0 && strcmp(jstr(boxes, "0.top"), "20%") == 0);
        json_t *ph = jp(r, "phrases");
        CHECK_EQ_INT(json_array_size(ph), 2);
        CHECK(strcmp(jstr(ph, "0.text"), "red circle") == 0);
        CHECK(strcmp(jstr(ph, "0.color"), jstr(boxes, "0.color")) == 0); /* phrase coloured like its boxes */
        CHECK(strcmp(jstr(ph, "1.color"), jstr(boxes, "2.color")) == 0);
        CHECK(strcmp(jstr(r, "active_chip"), "identify") == 0);
        int v[4] = {-1, -1, -1, -1};
        CHECK(sscanf(jstr(r, "identify_prompt"), "[identify] what is this {<%d><%d><%d><%d>}", &v[0], &v[1], &v[2], &v[3]) == 4);
        CHECK_MSG(abs(v[0] - 10) <= 1 && abs(v[1] - 20) <= 1 && abs(v[2] - 50) <= 1 && abs(v[3] - 50) <= 1,
                  "region {%d %d %d %d}", v[0], v[1], v[2], v[3]);
        CHECK_EQ_INT(json_array_size(jp(r, "outside_requests")), 0); /* works offline */
        CHECK_EQ_INT(json_array_size(jp(r, "console_errors")), 0);
    }
    json_decref(r);
    CHECK(file_exists(shot));
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* ==== The shipped demo model (models/demo.gguf; docs/DEMO_MODEL.md) ==== */

/* MG_DEMO_MODEL overrides the path (a candidate model) */
static const char *demo_model(void) {
    const char *e = getenv("MG_DEMO_MODEL");
    return e && *e ? e : "models/demo.gguf";
}
#define DEMO_MODEL demo_model()

/* Held-out scene k of the demo world as a PNG in the data dir; phrase = "colour shape" of its
 * first object; gt = the inclusive pixel corners (x0, y0, x1, y1) of every object the phrase names,
 * as the official evaluation's computeIoU takes them (eval_iou_plus1). */
static int demo_scene_png(uint64_t k, char *png, size_t png_len, char *phrase, size_t ph_len, double gt[][4]) {
    world_opts o;
    world_scene sc;
    char err[256], name[64];
    if (world_opts_parse(WORLD_DEMO_SCENE, &o, err, sizeof err) != MG_OK) return -1;
    if (world_scene_generate_opts(&sc, 7, k, 96, true, &o, err, sizeof err) != MG_OK) return -1;
    snprintf(name, sizeof name, "demo_scene_%d.png", (int)k);
    dpath(png, png_len, name);
    const world_object *a = &sc.objects[0];
    snprintf(phrase, ph_len, "%s %s", world_color_name(a->color), world_shape_name(a->shape));
    int n = 0;
    for (int i = 0; i < sc.n_objects; i++)
        if (sc.objects[i].color == a->color && sc.objects[i].shape == a->shape) {
            const world_object *b = &sc.objects[i];
            gt[n][0] = b->x0, gt[n][1] = b->y0, gt[n][2] = b->x1, gt[n][3] = b->y1;
            n++;
        }
    mg_status st = mg_image_write_png(&sc.image, png, err, sizeof err);
    world_scene_free(&sc);
    return st == MG_OK ? n : -1;
}

/* The openai client against the demo model: [detection] of an object in each of 6 held-out
 * scenes, greedy, non-streamed and streamed: every answer carries boxes in the grounding field,
 * the streamed text equals the non-streamed one, and most boxes hit the object (IoU > 0.5). */
TEST(serve_demo_model_detection) {
    if (!file_exists(DEMO_MODEL)) SKIP("%s not present", DEMO_MODEL);
    if (!have_node()) SKIP("node or tests/node/node_modules/openai missing (npm ci in tests/node)");
    srv_proc s;
    CHECK(server_start(&s, "serve_demo.log", DEMO_MODEL, "--api-key " KEY));
    if (!s.pid) return;
    int answered = 0, hits = 0;
    for (uint64_t k = 0; k < 6; k++) {
        char png[1024], phrase[64], cmd[4096];
        double gt[WORLD_MAX_OBJECTS][4];
        const int n_gt = demo_scene_png(k, png, sizeof png, phrase, sizeof phrase, gt);
        CHECK(n_gt >= 1);
        if (n_gt < 1) continue;
        const char *slash = strrchr(DEMO_MODEL, '/');
        snprintf(cmd, sizeof cmd, "MG_API_KEY=%s node tests/node/serve_client.mjs detect %s '%s' '%s' '%s'", KEY,
                 s.url, slash ? slash + 1 : DEMO_MODEL, png, phrase);
        int rc;
        json_t *r = node_json(&rc, "%s", cmd);
        CHECK_EQ_INT(rc, 0);
        if (!r) continue;
        printf("  [detection] %s -> %s\n", phrase, jstr(r, "nonstream.content"));
        CHECK(strcmp(jstr(r, "nonstream.content"), jstr(r, "stream.text")) == 0);
        json_t *boxes = jp(r, "nonstream.grounding.entities.0.boxes");
        CHECK_MSG(json_array_size(boxes) >= 1, "no box in '%s'", jstr(r, "nonstream.content"));
        CHECK(json_array_size(jp(r, "stream.grounding.entities.0.boxes")) == json_array_size(boxes));
        answered += json_array_size(boxes) >= 1;
        for (size_t b = 0; b < json_array_size(boxes); b++) {
            double px[4];
            char path[64];
            for (int c = 0; c < 4; c++) {
                snprintf(path, sizeof path, "%zu.px.%d", b, c);
                px[c] = jnum(boxes, path);
            }
            bool hit = false;
            for (int g = 0; g < n_gt; g++) {
                double v = 0;
                hit |= eval_iou_plus1(px, gt[g], &v) && v > 0.5;
            }
            hits += hit;
            if (b == 0) break; /* the first box of each answer is scored */
        }
        json_decref(r);
    }
    CHECK_EQ_INT(answered, 6);
    CHECK_MSG(hits >= 4, "%d of 6 first boxes with IoU > 0.5", hits);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* The web demo with the demo model: upload a held-out scene, [detection] of its object, a box
 * labelled with the model's phrase is drawn over the image; screenshot in the data dir. */
TEST(serve_browser_demo_model) {
    if (!file_exists(DEMO_MODEL)) SKIP("%s not present", DEMO_MODEL);
    if (!have_node()) SKIP("node or tests/node/node_modules/openai missing (npm ci in tests/node)");
    if (access("/usr/bin/chromium", X_OK) != 0) SKIP("Debian's chromium is not installed (/usr/bin/chromium)");
    if (!file_exists("tests/node/node_modules/playwright-core/package.json")) SKIP("playwright-core missing (npm ci in tests/node)");
    srv_proc s;
    CHECK(server_start(&s, "serve_browser_demo.log", DEMO_MODEL, ""));
    if (!s.pid) return;
    char png[1024], phrase[64], shot[1024];
    double gt[WORLD_MAX_OBJECTS][4];
    CHECK(demo_scene_png(0, png, sizeof png, phrase, sizeof phrase, gt) >= 1);
    dpath(shot, sizeof shot, "serve_browser_demo.png");
    unlink(shot);
    int rc;
    json_t *r = node_json(&rc, "timeout 60 node tests/node/serve_browser.mjs %s '%s' '%s' '%s'", s.url, png, shot, phrase);
    if (rc == 3) {
        json_decref(r);
        server_stop(&s);
        SKIP("chromium cannot be launched");
    }
    CHECK_EQ_INT(rc, 0);
    if (r) {
        printf("  answer: %s\n", jstr(r, "answer"));
        CHECK(json_array_size(jp(r, "boxes")) >= 1);
        CHECK(jstr(r, "boxes.0.label")[0] != 0); /* the phrase the model wrote */
        CHECK_EQ_INT(json_array_size(jp(r, "console_errors")), 0);
    }
    json_decref(r);
    CHECK(file_exists(shot));
    CHECK_EQ_INT(server_stop(&s), 0);
}
