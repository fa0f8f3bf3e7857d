/*
 * sampler.c - next-token selection with transformers' processing order: repetition penalty ->
 * temperature -> top-k -> top-p -> softmax -> draw (greedy = argmax after the penalty). Each
 * sampler owns its PRNG state (xoshiro256**, seeded by splitmix64) and every buffer it needs,
 * allocated at create; sampling never allocates and touches no global state.
 */
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float score;
    int32_t id;
} mg_cand;

struct mg_sampler {
    mg_sampler_params p;
    int n_vocab;
    uint64_t rng[4];     /* xoshiro256** state */
    float *scores;       /* [n_vocab] processed logits */
    mg_cand *cand;       /* [n_vocab] candidates, sorted by score when filtering */
    uint8_t *seen;       /* [n_vocab] 1 if the id was accepted */
    int32_t *seen_ids;   /* [n_vocab] the distinct accepted ids */
    int n_seen;
};

/* Defaults as llama.cpp's CLI: temperature 0.8, top-k 40, top-p 0.95, no penalty, fixed seed. */
mg_sampler_params mg_sampler_default_params(void) {
    mg_sampler_params p;
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.repeat_penalty = 1.0f;
    p.seed = 0x5eed;
    return p;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform double in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t *s) { return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

static void seed_rng(mg_sampler *smp) {
    uint64_t x = smp->p.seed;
    for (int i = 0; i < 4; i++) smp->rng[i] = splitmix64(&x);
}

/* Validates the parameters and allocates every buffer for n_vocab ids up front. */
mg_status mg_sampler_create(mg_sampler **out, const mg_sampler_params *params, int n_vocab) {
    if (!out) return MG_ERR_INVALID_ARG;
    *out = NULL;
    if (n_vocab < 1) return MG_ERR_INVALID_ARG;
    mg_sampler_params p = params ? *params : mg_sampler_default_params();
    if (isnan(p.temperature) || isnan(p.top_p) || !(p.repeat_penalty > 0.0f) || !isfinite(p.repeat_penalty))
        return MG_ERR_INVALID_ARG;
    mg_sampler *smp = calloc(1, sizeof *smp);
    if (!smp) return MG_ERR_NOMEM;
    smp->p = p;
    smp->n_vocab = n_vocab;
    smp->scores = malloc((size_t)n_vocab * sizeof(float));
    smp->cand = malloc((size_t)n_vocab * sizeof(mg_cand));
    smp->seen = calloc((size_t)n_vocab, 1);
    smp->seen_ids = malloc((size_t)n_vocab * sizeof(int32_t));
    if (!smp->scores || !smp->cand || !smp->seen || !smp->seen_ids) {
        mg_sampler_free(smp);
        return MG_ERR_NOMEM;
    }
    seed_rng(smp);
    *out = smp;
    return MG_OK;
}

/* Frees a sampler (NULL accepted). */
void mg_sampler_free(mg_sampler *smp) {
    if (!smp) return;
    free(smp->scores);
    free(smp->cand);
    free(smp->seen);
    free(smp->seen_ids);
    free(smp);
}

/* Internal (model.h): the vocabulary size the sampler was made for. */
int sampler_n_vocab(const mg_sampler *smp) { return smp->n_vocab; }

/* Marks id as generated for the repetition penalty (ids out of range are ignored). */
void mg_sampler_accept(mg_sampler *smp, int32_t id) {
    if (!smp || id < 0 || id >= smp->n_vocab || smp->seen[id]) return;
    smp->seen[id] = 1;
    smp->seen_ids[smp->n_seen++] = id;
}

/* Forgets the accepted ids and restarts the random stream from the seed. */
void mg_sampler_reset(mg_sampler *smp) {
    if (!smp) return;
    for (int i = 0; i < smp->n_seen; i++) smp->seen[smp->seen_ids[i]] = 0;
    smp->n_seen = 0;
    seed_rng(smp);
}

/* Descending score; ties keep the lower id first, so the order is deterministic. */
static int cmp_desc(const void *a, const void *b) {
    const mg_cand *x = a, *y = b;
    if (x->score > y->score) return -1;
    if (x->score < y->score) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Draws an index i of c[0..n) with probability exp(score_i - max) / sum (any order). */
static int draw(mg_sampler *smp, const mg_cand *c, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = c[i].score > mx ? c[i].score : mx;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((double)c[i].score - mx);
    double u = rng_uniform(smp->rng) * sum, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += exp((double)c[i].score - mx);
        if (u < acc) return i;
    }
    return n - 1; /* u rounded to the total */
}

/* Applies penalty, temperature, top-k and top-p; leaves the surviving candidates in
 * smp->cand[0..n_keep) and returns n_keep, or 0 for greedy (the argmax id is in *greedy_id). */
static int process(mg_sampler *smp, const float *logits, int32_t *greedy_id) {
    const int n = smp->n_vocab;
    float *sc = smp->scores;
    memcpy(sc, logits, (size_t)n * sizeof(float));
    /* repetition penalty, once per distinct accepted id (transformers' gather/scatter rule) */
    if (smp->p.repeat_penalty != 1.0f) {
        const float rp = smp->p.repeat_penalty;
        for (int i = 0; i < smp->n_seen; i++) {
            float *v = &sc[smp->seen_ids[i]];
            *v = *v < 0.0f ? *v * rp : *v / rp;
        }
    }
    if (!(smp->p.temperature > 0.0f)) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (sc[i] > sc[best]) best = i;
        *greedy_id = best;
        return 0;
    }
    mg_cand *c = smp->cand;
    const float t = smp->p.temperature;
    for (int i = 0; i < n; i++) {
        c[i].score = sc[i] / t;
        c[i].id = i;
    }
    int n_keep = n;
    const bool use_k = smp->p.top_k > 0 && smp->p.top_k < n, use_p = smp->p.top_p < 1.0f;
    if (use_k || use_p) qsort(c, (size_t)n, sizeof *c, cmp_desc);
    if (use_k) {
        /* keep every candidate scoring at least the k-th score (ties at the boundary stay) */
        const float kth = c[smp->p.top_k - 1].score;
        n_keep = smp->p.top_k;
        while (n_keep < n && c[n_keep].score >= kth) n_keep++;
    }
    if (use_p) {
        /* transformers: ascending cumulative probability <= 1 - top_p is removed; the best stays */
        const float thr = (float)(1.0 - (double)smp->p.top_p);
        const float mx = c[0].score;
        float sum = 0.0f;
        for (int i = 0; i < n_keep; i++) sum += expf(c[i].score - mx);
        float cum = 0.0f;
        int first_kept = 0;
        for (int i = n_keep - 1; i > 0; i--) {
            cum += expf(c[i].score - mx) / sum;
            if (cum > thr) {
                first_kept = i;
                break;
            }
        }
        n_keep = first_kept + 1;
    }
    return n_keep;
}

/* Picks the next id from logits [n_vocab] (not modified); -1 on a NULL argument. */
int32_t mg_sampler_sample(mg_sampler *smp, const float *logits) {
    if (!smp || !logits) return -1;
    int32_t id = -1;
    int n_keep = process(smp, logits, &id);
    return n_keep == 0 ? id : smp->cand[draw(smp, smp->cand, n_keep)].id;
}

/* Internal (model.h): the final distribution, for tests. */
void sampler_probs(mg_sampler *smp, const float *logits, float *probs) {
    int32_t id = -1;
    int n_keep = process(smp, logits, &id);
    memset(probs, 0, (size_t)smp->n_vocab * sizeof(float));
    if (n_keep == 0) {
        probs[id] = 1.0f;
        return;
    }
    const mg_cand *c = smp->cand;
    float mx = -INFINITY;
    for (int i = 0; i < n_keep; i++) mx = c[i].score > mx ? c[i].score : mx;
    double sum = 0.0;
    for (int i = 0; i < n_keep; i++) sum += exp((double)c[i].score - mx);
    for (int i = 0; i < n_keep; i++) probs[c[i].id] = (float)(exp((double)c[i].score - mx) / sum);
}
