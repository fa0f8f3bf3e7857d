/*
 * kernels_avx2.c - AVX2 + FMA + F16C matmul kernels and Q8_0 activation quantizer, the fallback
 * for x86-64 CPUs without AVX-512 VNNI. Same tiling idea as kernels_avx512.c (each output owns
 * one accumulator and sees the same operations whatever the tile shape or thread split), with
 * 8-lane vectors and 4 x 2 tiles to fit in 16 registers. Integer block dots use
 * maddubs(|w|, sign(x, w)) for Q8_0 and maddubs(nibbles, x) - 8 * sum(x) for Q4_0; no pair sum
 * can saturate int16 (at most 2 * 128 * 127).
 */
#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "kernels_simd.h"

#include <immintrin.h>
#include <string.h>

#define TM 4
#define TN 2

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_w_f32(const void *w, int64_t k) { return _mm256_loadu_ps((const float *)w + k); }
static inline __m256 load_w_f16(const void *w, int64_t k) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + k)));
}
static inline __m256 load_w_bf16(const void *w, int64_t k) {
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Float tile: main loop over whole 8-element steps, the tail through zero-padded copies. */
#define FLOAT_TILE(NAME, LOADW, ESZ)                                                               \
    static inline __attribute__((always_inline)) void NAME(                                       \
        float *y, int64_t ldy, const float *x, int64_t ldx, const char *w, size_t ldw, int A,     \
        int B, int64_t K) {                                                                        \
        __m256 acc[TM][TN];                                                                        \
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++)                                       \
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) acc[a][b] = _mm256_setzero_ps(); \
        const int64_t K8 = K & ~(int64_t)7;                                                        \
        for (int64_t k = 0; k < K8; k += 8) {                                                      \
            __m256 wv[TN];                                                                         \
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) wv[b] =               \
                LOADW(w + (size_t)b * ldw, k);                                                     \
            _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A) {                      \
                __m256 xv = _mm256_loadu_ps(x + a * ldx + k);                                      \
                _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) acc[a][b] =       \
                    _mm256_fmadd_ps(xv, wv[b], acc[a][b]);                                         \
            }                                                                                      \
        }                                                                                          \
        if (K8 < K) {                                                                              \
            float xt[TM][8];                                                                       \
            unsigned char wt[TN][8 * 4];                                                           \
            memset(xt, 0, sizeof xt);                                                              \
            memset(wt, 0, sizeof wt);                                                              \
            for (int a = 0; a < A; a++) memcpy(xt[a], x + a * ldx + K8, (size_t)(K - K8) * 4);    \
            for (int b = 0; b < B; b++)                                                            \
                memcpy(wt[b], w + (size_t)b * ldw + (size_t)K8 * (ESZ), (size_t)(K - K8) * (ESZ)); \
            for (int b = 0; b < B; b++) {                                                          \
                __m256 wv = LOADW(wt[b], 0);                                                       \
                for (int a = 0; a < A; a++)                                                        \
                    acc[a][b] = _mm256_fmadd_ps(_mm256_loadu_ps(xt[a]), wv, acc[a][b]);            \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A)                            \
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) y[a * ldy + b] =      \
                hsum8(acc[a][b]);                                                                  \
    }

FLOAT_TILE(tile_f32, load_w_f32, 4)
FLOAT_TILE(tile_f16, load_w_f16, 2)
FLOAT_TILE(tile_bf16, load_w_bf16, 2)

static inline __m256i q4_w_load(const block_q4_0 *b) {
    const __m128i v = _mm_loadu_si128((const __m128i *)b->qs);
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

/* int32 lanes of the dot of u8 a with s8 b (pairs summed in int16, then in int32). */
static inline __m256i dot_u8s8(__m256i a, __m256i b) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
}

static inline __attribute__((always_inline)) void tile_q8_0(float *y, int64_t ldy, const char *xq,
                                                            size_t ldx, const char *w, size_t ldw,
                                                            int A, int B, int64_t K) {
    __m256 acc[TM][TN];
    _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++)
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) acc[a][b] = _mm256_setzero_ps();
    for (int64_t i = 0; i < K / QK8_0; i++) {
        __m256i wq[TN], wabs[TN];
        __m256 dw[TN];
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
            const block_q8_0 *wb = (const block_q8_0 *)(w + (size_t)b * ldw) + i;
            wq[b] = _mm256_loadu_si256((const __m256i *)wb->qs);
            wabs[b] = _mm256_sign_epi8(wq[b], wq[b]);
            dw[b] = _mm256_set1_ps(_cvtsh_ss(wb->d));
        }
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A) {
            const block_q8_0 *xb = (const block_q8_0 *)(xq + (size_t)a * ldx) + i;
            const __m256i xs = _mm256_loadu_si256((const __m256i *)xb->qs);
            const __m256 dx = _mm256_set1_ps(_cvtsh_ss(xb->d));
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
                const __m256i dp = dot_u8s8(wabs[b], _mm256_sign_epi8(xs, wq[b]));
                acc[a][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_mul_ps(dw[b], dx),
                                            acc[a][b]);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A)
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) y[a * ldy + b] =
            hsum8(acc[a][b]);
}

static inline __attribute__((always_inline)) void tile_q4_0(float *y, int64_t ldy, const char *xq,
                                                            size_t ldx, const char *w, size_t ldw,
                                                            int A, int B, int64_t K) {
    __m256 acc[TM][TN];
    _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++)
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) acc[a][b] = _mm256_setzero_ps();
    const __m256i k8 = _mm256_set1_epi8(8);
    for (int64_t i = 0; i < K / QK4_0; i++) {
        __m256i wq[TN];
        __m256 dw[TN];
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
            const block_q4_0 *wb = (const block_q4_0 *)(w + (size_t)b * ldw) + i;
            wq[b] = q4_w_load(wb);
            dw[b] = _mm256_set1_ps(_cvtsh_ss(wb->d));
        }
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A) {
            const block_q8_0 *xb = (const block_q8_0 *)(xq + (size_t)a * ldx) + i;
            const __m256i xs = _mm256_loadu_si256((const __m256i *)xb->qs);
            const __m256i bias = dot_u8s8(k8, xs);
            const __m256 dx = _mm256_set1_ps(_cvtsh_ss(xb->d));
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
                const __m256i dp = _mm256_sub_epi32(dot_u8s8(wq[b], xs), bias);
                acc[a][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_mul_ps(dw[b], dx),
                                            acc[a][b]);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A)
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) y[a * ldy + b] =
            hsum8(acc[a][b]);
}

#define TILE_SWITCH(FN, ...)                                                                       \
    switch (A * 8 + B) {                                                                           \
    case 011: FN(__VA_ARGS__, 1, 1, K); break;                                                     \
    case 012: FN(__VA_ARGS__, 1, 2, K); break;                                                     \
    case 021: FN(__VA_ARGS__, 2, 1, K); break;                                                     \
    case 022: FN(__VA_ARGS__, 2, 2, K); break;                                                     \
    case 031: FN(__VA_ARGS__, 3, 1, K); break;                                                     \
    case 032: FN(__VA_ARGS__, 3, 2, K); break;                                                     \
    case 041: FN(__VA_ARGS__, 4, 1, K); break;                                                     \
    case 042: FN(__VA_ARGS__, 4, 2, K); break;                                                     \
    default: break;                                                                                \
    }

#define NBLOCK 64

#define MM(NAME, TILE, XPTR, LDX)                                                                  \
    static void NAME(const mg_mm_args *g, int64_t n0, int64_t n1) {                                \
        const size_t ldw = mg_row_size(g->wtype, g->K);                                            \
        const int64_t K = g->K;                                                                    \
        for (int64_t nb = n0; nb < n1; nb += NBLOCK) {                                             \
            const int64_t ne = MG_MIN(nb + NBLOCK, n1);                                            \
            for (int64_t m = 0; m < g->M; m += TM) {                                               \
                const int A = (int)MG_MIN((int64_t)TM, g->M - m);                                  \
                for (int64_t n = nb; n < ne; n += TN) {                                            \
                    const int B = (int)MG_MIN((int64_t)TN, ne - n);                                \
                    float *y = g->y + m * g->N + n;                                                \
                    const char *w = (const char *)g->w + (size_t)n * ldw;                          \
                    TILE_SWITCH(TILE, y, g->N, XPTR, LDX, w, ldw)                                  \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

MM(mm_f32, tile_f32, g->x + m * K, K)
MM(mm_f16, tile_f16, g->x + m * K, K)
MM(mm_bf16, tile_bf16, g->x + m * K, K)
MM(mm_q8_0, tile_q8_0, (const char *)g->xq + (size_t)m * g->xq_stride, g->xq_stride)
MM(mm_q4_0, tile_q4_0, (const char *)g->xq + (size_t)m * g->xq_stride, g->xq_stride)

/* roundf of each lane, exact: trunc, then add the sign when |frac| >= 0.5. */
static inline __m256 round_away(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
    const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
    const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(_mm256_set1_ps(1.0f), sign)));
}

static void quantize_q8_0(const float *x, void *yv, int64_t k) {
    block_q8_0 *y = yv;
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
    for (int64_t i = 0; i < k / QK8_0; i++) {
        __m256 v[4];
        __m256 mx = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(x + i * 32 + j * 8);
            mx = _mm256_max_ps(mx, _mm256_and_ps(v[j], absm));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = mg_fp32_to_fp16(d);
        __m256i q[4];
        for (int j = 0; j < 4; j++) {
            __m256 t = _mm256_mul_ps(v[j], _mm256_set1_ps(id));
            t = _mm256_and_ps(t, _mm256_cmp_ps(t, t, _CMP_ORD_Q)); /* NaN -> 0 */
            t = _mm256_max_ps(_mm256_min_ps(round_away(t), lim), nlim);
            q[j] = _mm256_cvtps_epi32(t);
        }
        /* int32 -> int16 -> int8 packs work per 128-bit lane; undo the interleave */
        __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[i].qs, p);
    }
}

/* ==== C += op(A) . B (the trainer's backward products) ==== */

/* As the AVX-512 version: tiles of 6 rows x 16 columns (two 8-lane vectors, 12 accumulators),
 * k in blocks of 256; a strip narrower than 16 columns goes through the plain loop, which keeps
 * the per-element order (C, then k ascending). */
#define G2M 6
#define G2KC 256

static inline __attribute__((always_inline)) void gemm_tile2(float *C, int64_t ldc, const float *A, int64_t sam,
                                                             int64_t sak, const float *B, int64_t ldb, int64_t kn,
                                                             int R) {
    __m256 c0[G2M], c1[G2M];
    _Pragma("GCC unroll 8") for (int r = 0; r < G2M; r++) if (r < R) {
        c0[r] = _mm256_loadu_ps(C + r * ldc);
        c1[r] = _mm256_loadu_ps(C + r * ldc + 8);
    }
    for (int64_t k = 0; k < kn; k++) {
        const __m256 b0 = _mm256_loadu_ps(B + k * ldb), b1 = _mm256_loadu_ps(B + k * ldb + 8);
        const float *a = A + k * sak;
        _Pragma("GCC unroll 8") for (int r = 0; r < G2M; r++) if (r < R) {
            const __m256 av = _mm256_broadcast_ss(a + r * sam);
            c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
        }
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < G2M; r++) if (r < R) {
        _mm256_storeu_ps(C + r * ldc, c0[r]);
        _mm256_storeu_ps(C + r * ldc + 8, c1[r]);
    }
}

static void gemm_acc(float *C, const float *A, const float *B, int64_t M, int64_t N, int64_t K, bool a_trans,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const int64_t sam = a_trans ? 1 : K, sak = a_trans ? M : 1; /* A(m, k) = A[m * sam + k * sak] */
    for (int64_t k0 = 0; k0 < K; k0 += G2KC) {
        const int64_t kn = K - k0 < G2KC ? K - k0 : G2KC;
        for (int64_t n = n0; n < n1; n += 16) {
            if (n1 - n < 16) { /* narrow strip */
                for (int64_t m = m0; m < m1; m++)
                    for (int64_t k = k0; k < k0 + kn; k++) {
                        const float a = A[m * sam + k * sak];
                        for (int64_t j = n; j < n1; j++) C[m * N + j] += a * B[k * N + j];
                    }
                continue;
            }
            for (int64_t m = m0; m < m1; m += G2M) {
                float *c = C + m * N + n;
                const float *a = A + m * sam + k0 * sak, *b = B + k0 * N + n;
                switch ((int)(m1 - m < G2M ? m1 - m : G2M)) {
                case 1: gemm_tile2(c, N, a, sam, sak, b, N, kn, 1); break;
                case 2: gemm_tile2(c, N, a, sam, sak, b, N, kn, 2); break;
                case 3: gemm_tile2(c, N, a, sam, sak, b, N, kn, 3); break;
                case 4: gemm_tile2(c, N, a, sam, sak, b, N, kn, 4); break;
                case 5: gemm_tile2(c, N, a, sam, sak, b, N, kn, 5); break;
                default: gemm_tile2(c, N, a, sam, sak, b, N, kn, 6); break;
                }
            }
        }
    }
}

/* Fills t with the AVX2 kernels. */
bool mg_kernels_fill_avx2(mg_kernel_table *t) {
    t->name = "avx2";
    t->mm_f32 = mm_f32;
    t->mm_f16 = mm_f16;
    t->mm_bf16 = mm_bf16;
    t->mm_q8_0 = mm_q8_0;
    t->mm_q4_0 = mm_q4_0;
    t->quantize_q8_0 = quantize_q8_0;
    t->gemm_acc = gemm_acc;
    return true;
}

#else
#include "kernels_simd.h"

/* This build has no AVX2 kernels. */
bool mg_kernels_fill_avx2(mg_kernel_table *t) {
    (void)t;
    return false;
}
#endif
