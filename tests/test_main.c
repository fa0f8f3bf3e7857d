/*
 * test_main.c - the test runner. Runs every registered test (or those whose name starts with one of
 * the arguments), prints PASS/FAIL/SKIP per test and closes with "N passed, N failed, N skipped".
 * --list prints the names. Exit status is 1 if any test failed.
 *
 * A watchdog thread gives each test MG_TEST_TIMEOUT seconds (default 600): a test that hangs
 * (a deadlock, a child process that never exits) is reported as FAIL, its child processes are
 * killed and the runner exits with status 3, so CI fails at once instead of waiting out its
 * own limit.
 */
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_TESTS 1024

static struct {
    const char *name;
    test_fn fn;
} tests[MAX_TESTS];
static int n_tests;

static int cur_checks, cur_failed, cur_skipped;
static const char *cur_name;
static const char *runner_path = "build/test_runner";

const char *test_runner_path(void) { return runner_path; }

void test_register(const char *name, test_fn fn) {
    if (n_tests < MAX_TESTS) {
        tests[n_tests].name = name;
        tests[n_tests].fn = fn;
        n_tests++;
    }
}

void test_check(bool ok, const char *file, int line, const char *expr) {
    cur_checks++;
    if (!ok) {
        cur_failed++;
        if (cur_failed <= 20) printf("    %s:%d: check failed: %s\n", file, line, expr);
    }
}

void test_checkf(bool ok, const char *file, int line, const char *fmt, ...) {
    cur_checks++;
    if (!ok) {
        cur_failed++;
        if (cur_failed <= 20) {
            printf("    %s:%d: check failed: ", file, line);
            va_list ap;
            va_start(ap, fmt);
            vprintf(fmt, ap);
            va_end(ap);
            printf("\n");
        }
    }
}

void test_skip(const char *why) {
    cur_skipped = 1;
    printf("    skip: %s\n", why);
}

static void mkdirs(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    mkdir(tmp, 0755);
}

const char *test_data_dir(void) {
    static char dir[4096];
    if (!dir[0]) {
        const char *e = getenv("MG_TESTDATA");
        snprintf(dir, sizeof dir, "%s", e && *e ? e : "build/testdata");
        mkdirs(dir);
    }
    return dir;
}

const char *test_python(void) {
    const char *e = getenv("MG_PYTHON");
    return e && *e ? e : "/usr/bin/python3";
}

bool test_quick(void) {
    const char *e = getenv("MG_TEST_QUICK");
    return e && *e && strcmp(e, "0") != 0;
}

int test_run(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    fflush(stdout);
    int st = system(cmd);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void *test_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
    long n = ftell(f);
    if (n < 0) { fclose(f); return NULL; }
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[n] = 0; if (size) *size = (size_t)n; }
    return buf;
}

float *test_read_npy_f32(const char *path, int64_t *shape, int *ndim) {
    size_t n;
    unsigned char *b = test_read_file(path, &n);
    if (!b) return NULL;
    if (n < 10 || memcmp(b, "\x93NUMPY", 6) != 0) { free(b); return NULL; }
    size_t hlen, hoff;
    if (b[6] == 1) { hlen = (size_t)b[8] | ((size_t)b[9] << 8); hoff = 10; }
    else { if (n < 12) { free(b); return NULL; } hlen = (size_t)b[8] | ((size_t)b[9] << 8) | ((size_t)b[10] << 16) | ((size_t)b[11] << 24); hoff = 12; }
    if (hoff + hlen > n) { free(b); return NULL; }
    char hdr[4096];
    size_t hl = hlen < sizeof hdr - 1 ? hlen : sizeof hdr - 1;
    memcpy(hdr, b + hoff, hl);
    hdr[hl] = 0;
    if (!strstr(hdr, "'<f4'") || strstr(hdr, "'fortran_order': True")) { free(b); return NULL; }
    char *sp = strstr(hdr, "'shape': (");
    if (!sp) { free(b); return NULL; }
    sp += 10;
    int nd = 0;
    int64_t total = 1;
    while (*sp && *sp != ')' && nd < 4) {
        while (*sp == ' ' || *sp == ',') sp++;
        if (*sp == ')') break;
        long long v = strtoll(sp, &sp, 10);
        shape[nd++] = v;
        total *= v;
    }
    *ndim = nd;
    size_t off = hoff + hlen;
    if (off + (size_t)total * 4 > n) { free(b); return NULL; }
    float *out = malloc((size_t)(total ? total : 1) * 4);
    if (out) memcpy(out, b + off, (size_t)total * 4);
    free(b);
    return out;
}

uint64_t test_rng_next(uint64_t *s) {
    uint64_t x = *s += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

float test_rng_float(uint64_t *s) { return (float)((test_rng_next(s) >> 40) * (1.0 / 8388608.0)) - 1.0f; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ==== Watchdog ==== */

static pthread_mutex_t wd_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cv = PTHREAD_COND_INITIALIZER;
static double wd_deadline; /* 0: no test running */
static double wd_limit = 600;
static bool wd_fired; /* the watchdog is ending the run: the main thread must not go on */

/* Parent pid of pid from /proc/pid/stat, or -1. */
static long proc_ppid(long pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *c = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    long ppid;
    char state;
    if (!c || sscanf(c + 1, " %c %ld", &state, &ppid) != 2) return -1;
    return ppid;
}

/* SIGKILLs every descendant of this process (children first found, repeated until none is left,
 * so grandchildren re-parented on the way are caught on a later pass). */
static void kill_descendants(void) {
    const long self = (long)getpid();
    for (int pass = 0; pass < 20; pass++) {
        long pids[4096], ppids[4096];
        int n = 0;
        DIR *d = opendir("/proc");
        if (!d) return;
        struct dirent *e;
        while ((e = readdir(d)) && n < 4096) {
            char *end;
            long pid = strtol(e->d_name, &end, 10);
            if (*end || pid <= 0 || pid == self) continue;
            long pp = proc_ppid(pid);
            if (pp > 0) pids[n] = pid, ppids[n++] = pp;
        }
        closedir(d);
        /* mark the descendants of self: repeat until no new one is found */
        static char mark[4096];
        memset(mark, 0, sizeof mark);
        int found = 0, grew = 1;
        while (grew) {
            grew = 0;
            for (int i = 0; i < n; i++) {
                if (mark[i]) continue;
                int up = ppids[i] == self;
                for (int j = 0; j < n && !up; j++) up = mark[j] && pids[j] == ppids[i];
                if (up) mark[i] = 1, grew = 1, found++;
            }
        }
        if (!found) return;
        for (int i = 0; i < n; i++)
            if (mark[i]) kill((pid_t)pids[i], SIGKILL);
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void *watchdog_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&wd_mu);
    for (;;) {
        if (wd_deadline > 0 && now_s() >= wd_deadline) {
            wd_fired = true;
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&wd_cv, &wd_mu, &ts);
    }
    pthread_mutex_unlock(&wd_mu);
    printf("FAIL %s (timed out after %.0f s: MG_TEST_TIMEOUT; its child processes are killed, "
           "the remaining tests are not run)\n", cur_name ? cur_name : "?", wd_limit);
    fflush(stdout);
    kill_descendants();
    _exit(3);
    return NULL;
}

static void watchdog_arm(bool on) {
    pthread_mutex_lock(&wd_mu);
    while (wd_fired) pthread_cond_wait(&wd_cv, &wd_mu); /* the watchdog exits the process */
    wd_deadline = on ? now_s() + wd_limit : 0;
    pthread_cond_signal(&wd_cv);
    pthread_mutex_unlock(&wd_mu);
}

static int cmp_tests(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    return strcmp(x, y);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 0 && argv[0]) runner_path = argv[0];
    qsort(tests, (size_t)n_tests, sizeof tests[0], cmp_tests);
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < n_tests; i++) printf("%s\n", tests[i].name);
        return 0;
    }
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: %s [--list] [NAME_OR_PREFIX ...]\n"
               "Runs the registered tests (all, or those whose name starts with an argument).\n"
               "env: MG_TESTDATA (generated data dir), MG_PYTHON (python with torch), MG_TEST_QUICK=1,\n"
               "     MG_TEST_TIMEOUT (seconds a test may take, default 600)\n",
               argv[0]);
        return 0;
    }
    const char *tl = getenv("MG_TEST_TIMEOUT");
    if (tl && atof(tl) > 0) wd_limit = atof(tl);
    pthread_t wd;
    if (pthread_create(&wd, NULL, watchdog_main, NULL) == 0) pthread_detach(wd);
    int passed = 0, failed = 0, skipped = 0, matched = 0;
    for (int i = 0; i < n_tests; i++) {
        if (argc > 1) {
            int ok = 0;
            for (int a = 1; a < argc; a++)
                if (strncmp(tests[i].name, argv[a], strlen(argv[a])) == 0) ok = 1;
            if (!ok) continue;
        }
        matched++;
        cur_name = tests[i].name;
        cur_checks = cur_failed = cur_skipped = 0;
        printf("RUN  %s\n", cur_name);
        double t0 = now_s();
        watchdog_arm(true);
        tests[i].fn();
        watchdog_arm(false);
        double dt = now_s() - t0;
        if (cur_failed) {
            printf("FAIL %s (%d of %d checks failed, %.2fs)\n", cur_name, cur_failed, cur_checks, dt);
            failed++;
        } else if (cur_skipped) {
            printf("SKIP %s\n", cur_name);
            skipped++;
        } else if (cur_checks == 0) {
            printf("FAIL %s (made no check)\n", cur_name);
            failed++;
        } else {
            printf("PASS %s (%d checks, %.2fs)\n", cur_name, cur_checks, dt);
            passed++;
        }
    }
    if (argc > 1 && matched == 0) {
        printf("no test matches the given names (try --list)\n");
        failed++;
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
