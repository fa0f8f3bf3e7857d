/*
 * kernels_avx512.c - AVX-512 (F/BW/VL/DQ + VNNI) matmul kernels and Q8_0 activation quantizer.
 * Compiled alone with the AVX-512 flags; used only when CPUID/XGETBV say the CPU and OS can.
 *
 * Every output y[m, n] is produced by a register tile of up to 4 activation rows x 4 weight
 * rows. Each (m, n) pair owns one accumulator and sees the same instruction sequence whatever
 * the tile shape, so results do not depend on M, on the thread split or on the tile position:
 *   float types : 16-lane fp32 FMA accumulator over k (masked tail), then a fixed tree reduce;
 *   Q8_0, Q4_0  : per 32-element block an exact int32 dot with VNNI (vpdpbusd), converted to
 *                 fp32 and accumulated into 8 lanes scaled by d_w * d_x, then a fixed reduce.
 * The signed x signed int8 product uses (x + 128) as the unsigned operand with the bias term
 * -128 * sum(w) as the accumulator start; Q4_0's nibbles are already unsigned, so its bias is
 * -8 * sum(x).
 */
#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__)
#include "kernels_simd.h"

#include <immintrin.h>
#include <string.h>

#define TM 4 /* activation rows per tile */
#define TN 4 /* weight rows per tile */

/* ==== float weights ==== */

static inline __m512 load_w_f32(const void *w, int64_t k, __mmask16 msk) {
    return _mm512_maskz_loadu_ps(msk, (const float *)w + k);
}
static inline __m512 load_w_f16(const void *w, int64_t k, __mmask16 msk) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(msk, (const uint16_t *)w + k));
}
static inline __m512 load_w_bf16(const void *w, int64_t k, __mmask16 msk) {
    __m256i h = _mm256_maskz_loadu_epi16(msk, (const uint16_t *)w + k);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* One tile for float weights: y[m, n] for A rows of x and B weight rows, full K. */
#define FLOAT_TILE(NAME, LOADW)                                                                    \
    static inline __attribute__((always_inline)) void NAME(                                       \
        float *y, int64_t ldy, const float *x, int64_t ldx, const char *w, size_t ldw, int A,     \
        int B, int64_t K) {                                                                        \
        __m512 acc[TM][TN];                                                                        \
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++)                                       \
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) acc[a][b] = _mm512_setzero_ps(); \
        for (int64_t k = 0; k < K; k += 16) {                                                      \
            __mmask16 msk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);   \
            __m512 wv[TN];                                                                         \
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) wv[b] =               \
                LOADW(w + (size_t)b * ldw, k, msk);                                                \
            _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) {                                 \
                if (a < A) {                                                                       \
                    __m512 xv = _mm512_maskz_loadu_ps(msk, x + a * ldx + k);                       \
                    _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) acc[a][b] =   \
                        _mm512_fmadd_ps(xv, wv[b], acc[a][b]);                                     \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A)                            \
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) y[a * ldy + b] =      \
                _mm512_reduce_add_ps(acc[a][b]);                                                   \
    }

FLOAT_TILE(tile_f32, load_w_f32)
FLOAT_TILE(tile_f16, load_w_f16)
FLOAT_TILE(tile_bf16, load_w_bf16)

/* Instantiates the tile for constant A, B so the accumulators stay in registers. */
#define TILE_SWITCH(FN, ...)                                                                       \
    switch (A * 8 + B) {                                                                           \
    case 011: FN(__VA_ARGS__, 1, 1, K); break;                                                     \
    case 012: FN(__VA_ARGS__, 1, 2, K); break;                                                     \
    case 013: FN(__VA_ARGS__, 1, 3, K); break;                                                     \
    case 014: FN(__VA_ARGS__, 1, 4, K); break;                                                     \
    case 021: FN(__VA_ARGS__, 2, 1, K); break;                                                     \
    case 022: FN(__VA_ARGS__, 2, 2, K); break;                                                     \
    case 023: FN(__VA_ARGS__, 2, 3, K); break;                                                     \
    case 024: FN(__VA_ARGS__, 2, 4, K); break;                                                     \
    case 031: FN(__VA_ARGS__, 3, 1, K); break;                                                     \
    case 032: FN(__VA_ARGS__, 3, 2, K); break;                                                     \
    case 033: FN(__VA_ARGS__, 3, 3, K); break;                                                     \
    case 034: FN(__VA_ARGS__, 3, 4, K); break;                                                     \
    case 041: FN(__VA_ARGS__, 4, 1, K); break;                                                     \
    case 042: FN(__VA_ARGS__, 4, 2, K); break;                                                     \
    case 043: FN(__VA_ARGS__, 4, 3, K); break;                                                     \
    case 044: FN(__VA_ARGS__, 4, 4, K); break;                                                     \
    default: break;                                                                                \
    }

/* Weight rows per cache block: a block of weights is reused by every activation tile. */
#define NBLOCK 64

#define FLOAT_MM(NAME, TILE)                                                                       \
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
                    const float *x = g->x + m * K;                                                 \
                    const char *w = (const char *)g->w + (size_t)n * ldw;                          \
                    TILE_SWITCH(TILE, y, g->N, x, K, w, ldw)                                       \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

FLOAT_MM(mm_f32, tile_f32)
FLOAT_MM(mm_f16, tile_f16)
FLOAT_MM(mm_bf16, tile_bf16)

/* ==== quantized weights (activations in Q8_0) ==== */

static inline float fp16_scalar(uint16_t h) { return _cvtsh_ss(h); }

/* Q8_0 weight block -> (signed quants, bias -128*sum(w) per lane). */
static inline __m256i q8_w_load(const block_q8_0 *b) {
    return _mm256_loadu_si256((const __m256i *)b->qs);
}
/* Q4_0 weight block -> unsigned nibbles 0..15 in element order. */
static inline __m256i q4_w_load(const block_q4_0 *b) {
    const __m128i v = _mm_loadu_si128((const __m128i *)b->qs);
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

/* Tile for Q8_0 weights: x as (x + 128) unsigned, start -128 * sum(w). */
static inline __attribute__((always_inline)) void tile_q8_0(float *y, int64_t ldy, const char *xq,
                                                            size_t ldx, const char *w, size_t ldw,
                                                            int A, int B, int64_t K) {
    __m256 acc[TM][TN];
    _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++)
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) acc[a][b] = _mm256_setzero_ps();
    const __m256i k128 = _mm256_set1_epi8((char)0x80);
    const int64_t nb = K / QK8_0;
    for (int64_t i = 0; i < nb; i++) {
        __m256i wq[TN], bias[TN];
        __m256 dw[TN];
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
            const block_q8_0 *wb = (const block_q8_0 *)(w + (size_t)b * ldw) + i;
            wq[b] = q8_w_load(wb);
            bias[b] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                       _mm256_dpbusd_epi32(_mm256_setzero_si256(), k128, wq[b]));
            dw[b] = _mm256_set1_ps(fp16_scalar(wb->d));
        }
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A) {
            const block_q8_0 *xb = (const block_q8_0 *)(xq + (size_t)a * ldx) + i;
            const __m256i xu = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)xb->qs), k128);
            const __m256 dx = _mm256_set1_ps(fp16_scalar(xb->d));
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
                const __m256i dp = _mm256_dpbusd_epi32(bias[b], xu, wq[b]);
                acc[a][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_mul_ps(dw[b], dx),
                                            acc[a][b]);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A)
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
            __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[a][b]), _mm256_extractf128_ps(acc[a][b], 1));
            s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            s = _mm_add_ss(s, _mm_movehdup_ps(s));
            y[a * ldy + b] = _mm_cvtss_f32(s);
        }
}

/* Tile for Q4_0 weights: nibbles as the unsigned operand, start -8 * sum(x). */
static inline __attribute__((always_inline)) void tile_q4_0(float *y, int64_t ldy, const char *xq,
                                                            size_t ldx, const char *w, size_t ldw,
                                                            int A, int B, int64_t K) {
    __m256 acc[TM][TN];
    _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++)
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) acc[a][b] = _mm256_setzero_ps();
    const __m256i k8 = _mm256_set1_epi8(8);
    const int64_t nb = K / QK4_0;
    for (int64_t i = 0; i < nb; i++) {
        __m256i wq[TN];
        __m256 dw[TN];
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
            const block_q4_0 *wb = (const block_q4_0 *)(w + (size_t)b * ldw) + i;
            wq[b] = q4_w_load(wb);
            dw[b] = _mm256_set1_ps(fp16_scalar(wb->d));
        }
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A) {
            const block_q8_0 *xb = (const block_q8_0 *)(xq + (size_t)a * ldx) + i;
            const __m256i xs = _mm256_loadu_si256((const __m256i *)xb->qs);
            const __m256i bias = _mm256_sub_epi32(_mm256_setzero_si256(),
                                                  _mm256_dpbusd_epi32(_mm256_setzero_si256(), k8, xs));
            const __m256 dx = _mm256_set1_ps(fp16_scalar(xb->d));
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
                const __m256i dp = _mm256_dpbusd_epi32(bias, wq[b], xs);
                acc[a][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_mul_ps(dw[b], dx),
                                            acc[a][b]);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A)
        _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {
            __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[a][b]), _mm256_extractf128_ps(acc[a][b], 1));
            s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            s = _mm_add_ss(s, _mm_movehdup_ps(s));
            y[a * ldy + b] = _mm_cvtss_f32(s);
        }
}

#define QUANT_MM(NAME, TILE)                                                                       \
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
                    const char *x = (const char *)g->xq + (size_t)m * g->xq_stride;                \
                    const char *w = (const char *)g->w + (size_t)n * ldw;                          \
                    TILE_SWITCH(TILE, y, g->N, x, g->xq_stride, w, ldw)                            \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

QUANT_MM(mm_q8_0, tile_q8_0)
QUANT_MM(mm_q4_0, tile_q4_0)

/* ==== Q8_0 activation quantizer (bytes identical to the reference) ==== */

/* roundf (half away from zero) of v, exact: trunc, then add the sign when |frac| >= 0.5. */
static inline __m512 round_away(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    const __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_or_ps(_mm512_set1_ps(1.0f),
                                    _mm512_and_ps(v, _mm512_castsi512_ps(_mm512_set1_epi32(INT32_MIN))));
    return _mm512_mask_add_ps(t, up, t, one);
}

static void quantize_q8_0(const float *x, void *yv, int64_t k) {
    block_q8_0 *y = yv;
    const __m512 lim = _mm512_set1_ps(127.0f);
    for (int64_t i = 0; i < k / QK8_0; i++) {
        const __m512 v0 = _mm512_loadu_ps(x + i * 32), v1 = _mm512_loadu_ps(x + i * 32 + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = mg_fp32_to_fp16(d);
        const __m512 vid = _mm512_set1_ps(id);
        __m512 q0 = _mm512_mul_ps(v0, vid), q1 = _mm512_mul_ps(v1, vid);
        /* NaN -> 0 and clamp, as the reference (never active for finite input) */
        q0 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(q0, q0, _CMP_ORD_Q), q0);
        q1 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(q1, q1, _CMP_ORD_Q), q1);
        q0 = _mm512_max_ps(_mm512_min_ps(round_away(q0), lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
        q1 = _mm512_max_ps(_mm512_min_ps(round_away(q1), lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
        _mm_storeu_si128((__m128i *)y[i].qs, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(q0)));
        _mm_storeu_si128((__m128i *)(y[i].qs + 16), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(q1)));
    }
}

/* Fills t with the AVX-512 kernels. */
bool mg_kernels_fill_avx512(mg_kernel_table *t) {
    t->name = "avx512";
    t->mm_f32 = mm_f32;
    t->mm_f16 = mm_f16;
    t->mm_bf16 = mm_bf16;
    t->mm_q8_0 = mm_q8_0;
    t->mm_q4_0 = mm_q4_0;
    t->quantize_q8_0 = quantize_q8_0;
    return true;
}

#else
#include "kernels_simd.h"

/* This build has no AVX-512 kernels. */
bool mg_kernels_fill_avx512(mg_kernel_table *t) {
    (void)t;
    return false;
}
#endif
