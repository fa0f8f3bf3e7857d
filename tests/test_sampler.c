/*
 * test_sampler.c - the sampler against tests/ref/sampler_ref.py (transformers' processors written
 * in PyTorch): the final distribution for penalty / temperature / top-k / top-p combinations,
 * greedy, seeded reproducibility and empirical draw frequencies.
 */
#include "test.h"

#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool write_raw(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* Runs the Python reference once for n_cases cases sharing one history: logits [n_cases, n],
 * params [n_cases]; fills probs [n_cases, n]. */
static bool ref_probs(int n_cases, const float *logits, int n, const int32_t *hist, int n_hist,
                      const mg_sampler_params *p, float *probs) {
    char hf[1024], mf[1024], lf[1024], of[1024];
    snprintf(hf, sizeof hf, "%s/sampler_hist.i32", test_data_dir());
    snprintf(mf, sizeof mf, "%s/sampler_cases.txt", test_data_dir());
    if (!write_raw(hf, hist, (size_t)n_hist * 4)) return false;
    FILE *m = fopen(mf, "w");
    if (!m) return false;
    for (int c = 0; c < n_cases; c++) {
        snprintf(lf, sizeof lf, "%s/sampler_logits_%d.f32", test_data_dir(), c);
        snprintf(of, sizeof of, "%s/sampler_probs_%d.f32", test_data_dir(), c);
        remove(of);
        if (!write_raw(lf, logits + (size_t)c * n, (size_t)n * 4)) {
            fclose(m);
            return false;
        }
        fprintf(m, "%s %s %.9g %d %.9g %.9g %s\n", lf, hf, (double)p[c].temperature, p[c].top_k,
                (double)p[c].top_p, (double)p[c].repeat_penalty, of);
    }
    fclose(m);
    int rc = test_run("%s tests/ref/sampler_ref.py %s", test_python(), mf);
    bool ok = rc == 0;
    for (int c = 0; ok && c < n_cases; c++) {
        snprintf(of, sizeof of, "%s/sampler_probs_%d.f32", test_data_dir(), c);
        size_t sz = 0;
        float *r = test_read_file(of, &sz);
        ok = r && sz == (size_t)n * 4;
        if (ok) memcpy(probs + (size_t)c * n, r, sz);
        free(r);
    }
    CHECK_MSG(ok, "sampler_ref.py failed (rc %d)", rc);
    return ok;
}

static void random_logits(float *x, int n, uint64_t seed, float scale) {
    uint64_t st = seed;
    for (int i = 0; i < n; i++) x[i] = scale * test_rng_float(&st);
}

TEST(sampler_greedy) {
    enum { N = 1000 };
    float x[N];
    random_logits(x, N, 11, 5.0f);
    int best = 0;
    for (int i = 1; i < N; i++)
        if (x[i] > x[best]) best = i;
    mg_sampler_params p = mg_sampler_default_params();
    p.temperature = 0;
    mg_sampler *s = NULL;
    CHECK(mg_sampler_create(&s, &p, N) == MG_OK);
    if (!s) return;
    CHECK_EQ_INT(mg_sampler_sample(s, x), best);
    CHECK_EQ_INT(mg_sampler_sample(s, x), best); /* sampling does not accept */
    x[7] = x[best]; /* a tie goes to the lower id, as torch.argmax */
    CHECK_EQ_INT(mg_sampler_sample(s, x), MG_MIN(7, best));
    mg_sampler_free(s);
    /* the penalty applies to greedy too: the penalised best loses to a close second */
    float y[4] = {2.0f, 1.9f, -1.0f, 0.5f};
    p.repeat_penalty = 1.1f;
    CHECK(mg_sampler_create(&s, &p, 4) == MG_OK);
    if (!s) return;
    CHECK_EQ_INT(mg_sampler_sample(s, y), 0);
    mg_sampler_accept(s, 0);
    CHECK_EQ_INT(mg_sampler_sample(s, y), 1);
    mg_sampler_accept(s, 99); /* out of range ids are ignored, not a crash */
    mg_sampler_accept(s, -1);
    mg_sampler_reset(s);
    CHECK_EQ_INT(mg_sampler_sample(s, y), 0);
    mg_sampler_free(s);
}

TEST(sampler_vs_transformers) {
    enum { N = 300 };
    static const struct {
        float temp, top_p, pen;
        int top_k;
    } cases[] = {
        {1.0f, 1.0f, 1.0f, 0},   {0.7f, 1.0f, 1.0f, 0},  {1.0f, 1.0f, 1.0f, 17}, {1.0f, 0.9f, 1.0f, 0},
        {0.6f, 0.9f, 1.05f, 50}, {1.3f, 0.5f, 1.3f, 0}, {0.8f, 0.95f, 1.2f, 5}, {0.0f, 1.0f, 1.5f, 0},
        {1.0f, 0.05f, 1.0f, 0},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    static float x[NC][N], ref[NC][N];
    float mine[N];
    mg_sampler_params ps[NC];
    int32_t hist[40];
    uint64_t st = 99;
    for (int i = 0; i < 40; i++) hist[i] = (int32_t)(test_rng_next(&st) % 60); /* repeats on purpose */
    for (size_t c = 0; c < NC; c++) {
        random_logits(x[c], N, 1000 + c, 4.0f);
        for (int i = 0; i < 60; i += 3) x[c][i] = -x[c][i]; /* penalised ids of both signs */
        ps[c] = mg_sampler_default_params();
        ps[c].temperature = cases[c].temp;
        ps[c].top_k = cases[c].top_k;
        ps[c].top_p = cases[c].top_p;
        ps[c].repeat_penalty = cases[c].pen;
    }
    if (!ref_probs(NC, &x[0][0], N, hist, 40, ps, &ref[0][0])) return;
    for (size_t c = 0; c < NC; c++) {
        mg_sampler *s = NULL;
        CHECK(mg_sampler_create(&s, &ps[c], N) == MG_OK);
        if (!s) continue;
        for (int i = 0; i < 40; i++) mg_sampler_accept(s, hist[i]);
        sampler_probs(s, x[c], mine);
        double md = 0;
        int support_diff = 0, n_kept = 0;
        for (int i = 0; i < N; i++) {
            md = fmax(md, fabs((double)mine[i] - ref[c][i]));
            support_diff += (mine[i] > 0) != (ref[c][i] > 0);
            n_kept += ref[c][i] > 0;
        }
        CHECK_MSG(md <= 2e-6 && support_diff == 0, "case %zu: max diff %.3g, %d ids differ in support (%d kept)", c,
                  md, support_diff, n_kept);
        mg_sampler_free(s);
    }
}

TEST(sampler_seeded) {
    enum { N = 50, T = 200 };
    float x[N];
    random_logits(x, N, 5, 2.0f);
    mg_sampler_params p = mg_sampler_default_params();
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    int32_t a[T], b[T], c[T];
    mg_sampler *s1 = NULL, *s2 = NULL, *s3 = NULL;
    p.seed = 42;
    CHECK(mg_sampler_create(&s1, &p, N) == MG_OK && mg_sampler_create(&s2, &p, N) == MG_OK);
    p.seed = 43;
    CHECK(mg_sampler_create(&s3, &p, N) == MG_OK);
    if (!s1 || !s2 || !s3) return;
    for (int i = 0; i < T; i++) {
        a[i] = mg_sampler_sample(s1, x);
        b[i] = mg_sampler_sample(s2, x);
        c[i] = mg_sampler_sample(s3, x);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
    mg_sampler_reset(s1); /* reset restarts the stream */
    for (int i = 0; i < T; i++) b[i] = mg_sampler_sample(s1, x);
    CHECK(memcmp(a, b, sizeof a) == 0);
    mg_sampler_free(s1);
    mg_sampler_free(s2);
    mg_sampler_free(s3);
}

TEST(sampler_frequencies) {
    enum { N = 8, DRAWS = 200000 };
    const float x[N] = {1.0f, 0.5f, 2.0f, -1.0f, 0.0f, 1.5f, 0.2f, -0.3f};
    static const struct {
        float temp, top_p;
        int top_k;
    } cases[] = {{1.0f, 1.0f, 0}, {0.7f, 1.0f, 5}, {1.0f, 0.8f, 0}};
    enum { NC = sizeof cases / sizeof cases[0] };
    mg_sampler_params ps[NC];
    float xs[NC][N], ref[NC][N];
    for (size_t c = 0; c < NC; c++) {
        ps[c] = mg_sampler_default_params();
        ps[c].temperature = cases[c].temp;
        ps[c].top_k = cases[c].top_k;
        ps[c].top_p = cases[c].top_p;
        ps[c].repeat_penalty = 1.0f;
        ps[c].seed = 2024 + c;
        memcpy(xs[c], x, sizeof x);
    }
    int32_t none = 0;
    if (!ref_probs(NC, &xs[0][0], N, &none, 0, ps, &ref[0][0])) return;
    for (size_t c = 0; c < NC; c++) {
        mg_sampler *s = NULL;
        CHECK(mg_sampler_create(&s, &ps[c], N) == MG_OK);
        if (!s) continue;
        long cnt[N] = {0}, bad = 0;
        for (int i = 0; i < DRAWS; i++) {
            int32_t id = mg_sampler_sample(s, x);
            if (id >= 0 && id < N) cnt[id]++;
            else bad++;
        }
        CHECK_EQ_INT(bad, 0);
        for (int i = 0; i < N; i++) {
            double f = (double)cnt[i] / DRAWS;
            /* 6 standard deviations of a binomial frequency, and filtered ids never drawn */
            double tol = 6 * sqrt(ref[c][i] * (1 - ref[c][i]) / DRAWS) + 1e-9;
            CHECK_MSG(fabs(f - ref[c][i]) <= tol, "case %zu id %d: frequency %.4f vs p %.4f", c, i, f,
                      (double)ref[c][i]);
        }
        mg_sampler_free(s);
    }
}

TEST(sampler_errors) {
    mg_sampler *s = NULL;
    mg_sampler_params p = mg_sampler_default_params();
    CHECK(mg_sampler_create(&s, &p, 0) == MG_ERR_INVALID_ARG && s == NULL);
    CHECK(mg_sampler_create(NULL, &p, 10) == MG_ERR_INVALID_ARG);
    p.repeat_penalty = 0.0f;
    CHECK(mg_sampler_create(&s, &p, 10) == MG_ERR_INVALID_ARG);
    p.repeat_penalty = 1.0f;
    p.temperature = NAN;
    CHECK(mg_sampler_create(&s, &p, 10) == MG_ERR_INVALID_ARG);
    CHECK(mg_sampler_create(&s, NULL, 10) == MG_OK);
    CHECK(mg_sampler_sample(s, NULL) == -1);
    mg_sampler_free(s);
    mg_sampler_free(NULL);
}
