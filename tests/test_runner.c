/*
 * test_runner.c - the runner's own watchdog: a test that hangs in a child process is reported as
 * FAIL within MG_TEST_TIMEOUT, its child processes are killed and the runner exits with 3.
 */
#include "test.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* True while pid runs (a zombie or a missing /proc entry counts as gone). */
static bool pid_alive(long pid) {
    char path[64], st[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r"); /* read, not sized: /proc files report a size of 0 */
    if (!f) return false;
    size_t n = fread(st, 1, sizeof st - 1, f);
    fclose(f);
    st[n] = 0;
    const char *c = strrchr(st, ')');
    return c && c[1] == ' ' && c[2] != 'Z' && c[2] != 'X';
}

TEST(runner_watchdog_kills_a_hung_test) {
    char pidfile[1024], log[1024];
    snprintf(pidfile, sizeof pidfile, "%s/watchdog_child.pid", test_data_dir());
    if (getenv("MG_WATCHDOG_SELFTEST")) {
        /* the inner run: hang in a child process, as a deadlocked command would */
        test_run("sh -c 'echo $$ > \"%s\"; exec sleep 120'", pidfile);
        CHECK(!"the watchdog should have ended this run");
        return;
    }
    snprintf(log, sizeof log, "%s/watchdog_log.txt", test_data_dir());
    unlink(pidfile);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = test_run("MG_WATCHDOG_SELFTEST=1 MG_TEST_TIMEOUT=1 '%s' runner_watchdog_kills_a_hung_test > '%s' 2>&1",
                      test_runner_path(), log);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    CHECK_EQ_INT(rc, 3);
    CHECK_MSG(secs < 60, "the inner run took %.1f s (the hang is 120 s, the limit 1 s)", secs);
    char *out = test_read_file(log, NULL);
    CHECK_MSG(out && strstr(out, "FAIL runner_watchdog_kills_a_hung_test (timed out after 1 s"), "log: %s",
              out ? out : "(none)");
    CHECK(out && !strstr(out, "passed,")); /* ended by the watchdog, not by the summary */
    free(out);
    char *pid = test_read_file(pidfile, NULL);
    CHECK(pid != NULL);
    if (pid) {
        long p = atol(pid);
        CHECK(p > 1);
        /* killed with SIGKILL; give the kernel a moment to finish it */
        for (int i = 0; i < 50 && p > 1 && pid_alive(p); i++) {
            struct timespec ts = {0, 20 * 1000000L};
            nanosleep(&ts, NULL);
        }
        CHECK_MSG(p > 1 && !pid_alive(p), "the hung child %ld still runs", p);
        if (p > 1 && pid_alive(p)) kill((pid_t)p, SIGKILL);
        free(pid);
    }
    unlink(pidfile);
    unlink(log);
}
