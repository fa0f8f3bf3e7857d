/*
 * kernels_avx512.c - AVX-512 (F/BW/VL/DQ + VNNI + VBMI) matmul kernels, Q8_0 activation
 * quantizer, attention loops and elementwise ops. Compiled alone with the AVX-512 flags; used
 * only when CPUID/XGETBV say the CPU and OS can.
 *
 * Every output y[m, n] is produced by a register tile of up to 6 (float) or 4 (quantized)
 * activation rows x 4 weight rows. Each (m, n) pair owns one accumulator and sees the same
 * instruction sequence whatever the tile shape, so results do not depend on M, on the thread
 * split or on the tile position:
 *   float types : 16-lane fp32 FMA accumulator over k (masked tail), then a fixed tree reduce;
 *   Q8_0, Q4_0  : per group of 4 blocks two chained vpdpbusd give 4 exact int32 lanes per
 *                 block, converted to fp32 and FMA-accumulated in 16 lanes scaled by
 *                 d_w * d_x, then a fixed reduce.
 * The signed x signed int8 product of Q8_0 uses (w + 128) as the unsigned operand with
 * -128 * sum(x) as the accumulator start; Q4_0's nibbles are already unsigned, its start is
 * -8 * sum(x). The activation side (permuted quants, start, scales) is prepared once per row
 * tile and weight block and shared by all the weight rows of the block (QBLOCK_BYTES).
 */
/* The quantized kernels use VBMI byte permutes (vpermb / vpermt2b): every AVX-512 VNNI CPU
 * but Cascade/Cooper Lake has them, and the dispatcher checks the CPUID bit. */
#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512VBMI__)
#include "kernels_simd.h"

#include <immintrin.h>
#include <math.h>
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

/* The sums of four accumulators at once, each summed in exactly the order of
 * _mm512_reduce_add_ps (GCC's tree: lanes i + i+8, then j + j+4 of those, then 0+2 and 1+3, then
 * the two), so a tile's outputs keep the bits of the one-row path, which reduces one at a time:
 * returns the four sums in lanes 0-3. The one-at-a-time reduce costs about as much as the FMAs of
 * a 128-wide dot product; this costs a third of it. */
static inline __attribute__((always_inline)) __m128 reduce4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    /* lanes 0-7: v0[i] + v0[i + 8], lanes 8-15: the same of v1 */
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x44), _mm512_shuffle_f32x4(v0, v1, 0xEE));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, 0x44), _mm512_shuffle_f32x4(v2, v3, 0xEE));
    /* 128-bit lane q: s[j] + s[j + 4] of v_q */
    const __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
    /* lanes 4q, 4q+1: t0 + t2, t1 + t3; then lane 4q: (t0 + t2) + (t1 + t3) */
    const __m512 u = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));
    const __m512 r = _mm512_add_ps(u, _mm512_permute_ps(u, 0xB1));
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), r));
}

/* Float tiles are FTM activation rows x FTN weight rows: 24 accumulators + FTN weight vectors
 * + 1 activation vector fit the 32 registers, and per 16 k a tile does FTN weight loads
 * (converted) + FTM activation loads for FTM * FTN FMAs. */
#define FTM 6
#define FTN 4 /* reduce4 sums the accumulators of one activation row: exactly 4 */

/* One tile for float weights: y[m, n] for A rows of x and B weight rows, full K. */
#define FLOAT_TILE(NAME, LOADW)                                                                    \
    static inline __attribute__((always_inline)) void NAME(                                       \
        float *y, int64_t ldy, const float *x, int64_t ldx, const char *w, size_t ldw, int A,     \
        int B, int64_t K) {                                                                        \
        __m512 acc[FTM][FTN];                                                                        \
        _Pragma("GCC unroll 8") for (int a = 0; a < FTM; a++)                                       \
            _Pragma("GCC unroll 8") for (int b = 0; b < FTN; b++) acc[a][b] = _mm512_setzero_ps(); \
        for (int64_t k = 0; k < K; k += 16) {                                                      \
            __mmask16 msk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);   \
            __m512 wv[FTN];                                                                         \
            _Pragma("GCC unroll 8") for (int b = 0; b < FTN; b++) if (b < B) wv[b] =               \
                LOADW(w + (size_t)b * ldw, k, msk);                                                \
            _Pragma("GCC unroll 8") for (int a = 0; a < FTM; a++) {                                 \
                if (a < A) {                                                                       \
                    __m512 xv = _mm512_maskz_loadu_ps(msk, x + a * ldx + k);                       \
                    _Pragma("GCC unroll 8") for (int b = 0; b < FTN; b++) if (b < B) acc[a][b] =   \
                        _mm512_fmadd_ps(xv, wv[b], acc[a][b]);                                     \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 8") for (int a = 0; a < FTM; a++) if (a < A) {                          \
            const __m128 r = reduce4(acc[a][0], acc[a][B > 1], acc[a][B > 2 ? 2 : 0], acc[a][B > 3 ? 3 : 0]); \
            if (B == 4) _mm_storeu_ps(y + a * ldy, r);                                               \
            else _mm_mask_storeu_ps(y + a * ldy, (__mmask8)((1u << B) - 1), r);                     \
        }                                                                                          \
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

/* The same for the float tiles, A <= FTM (up to 8), B <= FTN (up to 4). */
#define FTS_ROW(FN, a, ...)                                                                        \
    case a * 8 + 1: FN(__VA_ARGS__, a, 1, K); break;                                               \
    case a * 8 + 2: FN(__VA_ARGS__, a, 2, K); break;                                               \
    case a * 8 + 3: FN(__VA_ARGS__, a, 3, K); break;                                               \
    case a * 8 + 4: FN(__VA_ARGS__, a, 4, K); break;
#if FTM > 8 || FTN > 4
#error "FTILE_SWITCH covers FTM <= 8, FTN <= 4"
#endif
#define FTILE_SWITCH(FN, ...)                                                                      \
    switch (A * 8 + B) {                                                                           \
    FTS_ROW(FN, 1, __VA_ARGS__)                                                                    \
    FTS_ROW(FN, 2, __VA_ARGS__)                                                                    \
    FTS_ROW(FN, 3, __VA_ARGS__)                                                                    \
    FTS_ROW(FN, 4, __VA_ARGS__)                                                                    \
    FTS_ROW(FN, 5, __VA_ARGS__)                                                                    \
    FTS_ROW(FN, 6, __VA_ARGS__)                                                                    \
    FTS_ROW(FN, 7, __VA_ARGS__)                                                                    \
    FTS_ROW(FN, 8, __VA_ARGS__)                                                                    \
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
            for (int64_t m = 0; m < g->M; m += FTM) {                                               \
                const int A = (int)MG_MIN((int64_t)FTM, g->M - m);                                  \
                for (int64_t n = nb; n < ne; n += FTN) {                                            \
                    const int B = (int)MG_MIN((int64_t)FTN, ne - n);                                \
                    float *y = g->y + m * g->N + n;                                                \
                    const float *x = g->x + m * K;                                                 \
                    const char *w = (const char *)g->w + (size_t)n * ldw;                          \
                    FTILE_SWITCH(TILE, y, g->N, x, K, w, ldw)                                       \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

FLOAT_MM(mm_f32_tiles, tile_f32)
FLOAT_MM(mm_f16_tiles, tile_f16)
FLOAT_MM(mm_bf16_tiles, tile_bf16)

/* M = 1 (decode) with float weights: FGEMV_R weight rows streamed side by side, each with a
 * software prefetch FGEMV_PF bytes ahead (wrapped past the row's end to the row it reads next,
 * as in the quantized one-row path below). Each row's accumulator sees exactly the operations
 * of the tile above (16-lane FMA over k with the same masked tail, the same final reduce), so
 * the outputs are bit-identical to the many-row path. The tile path keeps only 4 rows' worth of
 * loads in flight and no prefetch: F16 decode of LLaMA-7B streamed its weights at 18 GB/s. */
#define FGEMV_R 8 /* 4 to 16 rows and 1-4 KiB ahead measured within the run-to-run spread */
#define FGEMV_PF 2048

#define FLOAT_GEMV(NAME, LOADW, ESIZE)                                                             \
    static inline __attribute__((always_inline)) void NAME##_rows(                                \
        float *y, const float *x, const char *w, size_t ldw, int R, int64_t K) {                   \
        __m512 acc[FGEMV_R];                                                                       \
        _Pragma("GCC unroll 16") for (int b = 0; b < FGEMV_R; b++) acc[b] = _mm512_setzero_ps();  \
        const size_t wrap = (size_t)(R - 1) * ldw;                                                 \
        for (int64_t k = 0; k < K; k += 16) {                                                      \
            const __mmask16 msk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1); \
            const __m512 xv = _mm512_maskz_loadu_ps(msk, x + k);                                   \
            size_t po = (size_t)k * ESIZE + FGEMV_PF;                                              \
            if (po >= ldw) po += wrap;                                                             \
            _Pragma("GCC unroll 16") for (int b = 0; b < FGEMV_R; b++) if (b < R) {                \
                if (ESIZE == 4 || (k & 31) == 0) _mm_prefetch(w + (size_t)b * ldw + po, _MM_HINT_T0); \
                acc[b] = _mm512_fmadd_ps(xv, LOADW(w + (size_t)b * ldw, k, msk), acc[b]);          \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 16") for (int b = 0; b < FGEMV_R; b++) if (b < R)                      \
            y[b] = _mm512_reduce_add_ps(acc[b]);                                                   \
    }                                                                                              \
    static void NAME(const mg_mm_args *g, int64_t n0, int64_t n1) {                                \
        if (g->M != 1) {                                                                           \
            NAME##_tiles(g, n0, n1);                                                               \
            return;                                                                                \
        }                                                                                          \
        const size_t ldw = mg_row_size(g->wtype, g->K);                                            \
        int64_t n = n0;                                                                            \
        for (; n + FGEMV_R <= n1; n += FGEMV_R)                                                    \
            NAME##_rows(g->y + n, g->x, (const char *)g->w + (size_t)n * ldw, ldw, FGEMV_R, g->K); \
        for (; n < n1; n++) NAME##_rows(g->y + n, g->x, (const char *)g->w + (size_t)n * ldw, ldw, 1, g->K); \
    }

FLOAT_GEMV(mm_f32, load_w_f32, 4)
FLOAT_GEMV(mm_f16, load_w_f16, 2)
FLOAT_GEMV(mm_bf16, load_w_bf16, 2)

/* ==== quantized weights (activations in Q8_0) ==== */

static inline float hsum16(__m512 v) { return _mm512_reduce_add_ps(v); }

/* Blocks go four at a time: quants 0..15 of blocks 0..3 in one register and quants 16..31
 * (for Q4_0: the low and the high nibbles) in another, so two chained vpdpbusd leave 4 int32
 * lanes per block (each the exact sum of 8 products) and the fp32 work (convert, multiply by
 * the 16-lane scale vector d_w * d_x, FMA) is done once per 4 blocks. The quants are picked
 * out of whole-group loads with VBMI byte permutes. Group layouts: Q4_0 72 bytes (qs at
 * 2 + 18 b), Q8_0 136 bytes (qs at 2 + 34 b). A short last group (1..3 blocks) is loaded with byte masks; the
 * missing blocks read as zero quants and zero scales and add exact zeros. */
typedef struct {
    __m512i w_qs;         /* vpermt2b over (w, w + 8): qs of blocks 0..3 */
    __m512i w_d;          /* vpermw over w: d of block l / 4 in lane l */
    __m512i x_lo, x_hi;   /* vpermt2b over (x, x + 64) and (x + 16, x + 72) */
    __m512i x_d;          /* vpermt2w over (x, x + 64) */
} quad_idx;

static inline quad_idx make_quad_idx(void) {
    quad_idx q;
    uint8_t wq[64], xl[64], xh[64];
    uint16_t wd[32], xd[32];
    for (int i = 0; i < 64; i++) {
        const int b = i / 16, j = i % 16;
        const int wo = 2 + 18 * b + j;            /* byte offset in the weight group */
        wq[i] = (uint8_t)(wo < 64 ? wo : 64 + wo - 8);
        const int lo = 2 + 34 * b + j, hi = lo + 16; /* offsets in the activation group */
        xl[i] = (uint8_t)(lo < 64 ? lo : 64 + lo - 64);
        xh[i] = (uint8_t)(hi - 16 < 64 ? hi - 16 : 64 + hi - 72);
    }
    for (int l = 0; l < 32; l++) {
        const int b = (l / 4) & 3, xo = 34 * b / 2; /* word offsets */
        wd[l] = (uint16_t)(9 * b);
        xd[l] = (uint16_t)(xo < 32 ? xo : 32 + xo - 32);
    }
    memcpy(&q.w_qs, wq, 64);
    memcpy(&q.x_lo, xl, 64);
    memcpy(&q.x_hi, xh, 64);
    memcpy(&q.w_d, wd, 64);
    memcpy(&q.x_d, xd, 64);
    return q;
}

/* 64 bytes at p + off of a group with `valid` readable bytes (masked when it would cross). */
static inline __attribute__((always_inline)) __m512i load_grp(const char *p, int off, int valid) {
    if (valid >= off + 64) return _mm512_loadu_si512(p + off);
    const int n = valid - off;
    if (n <= 0) return _mm512_setzero_si512();
    return _mm512_maskz_loadu_epi8(((__mmask64)1 << n) - 1, p + off); /* n < 64 here */
}

/* Q8_0 group at p (cnt blocks of 34 bytes): quants 0..15 of blocks 0..3 in *lo, 16..31 in
 * *hi (the layout xgrp keeps) and the 16-lane scales in *d. */
static inline __attribute__((always_inline)) void q8_group(const char *p, int cnt, const quad_idx *ix,
                                                           __m512i *lo, __m512i *hi, __m512 *d) {
    const int v = 34 * cnt;
    const __m512i l0 = load_grp(p, 0, v), l1 = load_grp(p, 64, v);
    const __m512i h0 = load_grp(p, 16, v), h1 = load_grp(p, 72, v);
    *lo = _mm512_permutex2var_epi8(l0, ix->x_lo, l1);
    *hi = _mm512_permutex2var_epi8(h0, ix->x_hi, h1);
    *d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(l0, ix->x_d, l1)));
}

/* An activation group as the tiles use it, prepared once per row tile and n-block (so shared
 * by up to NBLOCK weight rows instead of being re-permuted per weight tile): quants 0..15 and
 * 16..31 of 4 blocks, the accumulator start -kb * sum(x) per lane (kb = 8 for Q4_0's nibble
 * offset, 128 for Q8_0's w + 128) and the 16-lane scales. 256 bytes. */
typedef struct {
    __m512i lo, hi, bias;
    __m512 d;
} xgrp;

static void prep_x(xgrp *dst, const char *xrow, int64_t nb, char kb, const quad_idx *ix) {
    const __m512i k = _mm512_set1_epi8(kb);
    for (int64_t g = 0; g * 4 < nb; g++) {
        const int cnt = (int)MG_MIN((int64_t)4, nb - g * 4);
        q8_group(xrow + (size_t)g * 136, cnt, ix, &dst[g].lo, &dst[g].hi, &dst[g].d);
        dst[g].bias = _mm512_sub_epi32(
            _mm512_setzero_si512(),
            _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), k, dst[g].lo), k, dst[g].hi));
    }
}

/* Weight group g of a Q4_0 row (cnt blocks): low / high nibbles (unsigned) and scales. */
static inline __attribute__((always_inline)) void q4_wgroup(const char *p, int cnt, const quad_idx *ix,
                                                            __m512i *lo, __m512i *hi, __m512 *d) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i a0 = load_grp(p, 0, 18 * cnt), a1 = load_grp(p, 8, 18 * cnt);
    const __m512i q = _mm512_permutex2var_epi8(a0, ix->w_qs, a1);
    *lo = _mm512_and_si512(q, m4);
    *hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
    *d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(ix->w_d, a0)));
}

/* Weight group g of a Q8_0 row: quants + 128 (unsigned) and scales. */
static inline __attribute__((always_inline)) void q8_wgroup(const char *p, int cnt, const quad_idx *ix,
                                                            __m512i *lo, __m512i *hi, __m512 *d) {
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    q8_group(p, cnt, ix, lo, hi, d);
    *lo = _mm512_xor_si512(*lo, k128);
    *hi = _mm512_xor_si512(*hi, k128);
}

/* Weight bytes ahead of the current group to prefetch into L1 (each of the tile's rows is its
 * own stream). Measured on the 2-core Zen 5 box: 768 beat none by ~10% on Q4_0 decode and
 * 2048 was no better. Past the row's end it touches the next row, which is harmless. */
#define QPREFETCH 768

/* Quantized tile over prepared activation groups xp (ngr per row): per group and weight row
 * one unpack, per (row, weight row) two vpdpbusd + convert + scale + FMA. */
#define QUANT_TILE(NAME, WGROUP, GROUP_BYTES)                                                      \
    static inline __attribute__((always_inline)) void NAME(                                       \
        float *y, int64_t ldy, const xgrp *xp, int64_t ngr, const char *w, size_t ldw, int A,    \
        int B, int64_t K) {                                                                        \
        const quad_idx ix = make_quad_idx();                                                       \
        __m512 acc[TM][TN];                                                                        \
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++)                                       \
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) acc[a][b] = _mm512_setzero_ps();  \
        const int64_t nb = K / QK8_0;                                                              \
        for (int64_t g = 0; g < ngr; g++) {                                                        \
            const int cnt = (int)MG_MIN((int64_t)4, nb - g * 4);                                   \
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B) {                      \
                /* one weight row at a time: 3 live registers besides the 16 accumulators */     \
                const char *p = w + (size_t)b * ldw + (size_t)g * GROUP_BYTES;                     \
                __m512i wlo, whi;                                                                  \
                __m512 dw;                                                                         \
                _mm_prefetch(p + QPREFETCH, _MM_HINT_T0);                                          \
                if (cnt == 4) WGROUP(p, 4, &ix, &wlo, &whi, &dw);                                  \
                else WGROUP(p, cnt, &ix, &wlo, &whi, &dw);                                         \
                _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A) {                  \
                    const xgrp *xg = xp + a * ngr + g;                                             \
                    const __m512i dp = _mm512_dpbusd_epi32(                                        \
                        _mm512_dpbusd_epi32(xg->bias, wlo, xg->lo), whi, xg->hi);                  \
                    acc[a][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), _mm512_mul_ps(dw, xg->d),  \
                                                acc[a][b]);                                        \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int a = 0; a < TM; a++) if (a < A)                            \
            _Pragma("GCC unroll 4") for (int b = 0; b < TN; b++) if (b < B)                        \
                y[a * ldy + b] = hsum16(acc[a][b]);                                                \
    }

QUANT_TILE(tile_q4_0, q4_wgroup, 72)
QUANT_TILE(tile_q8_0, q8_wgroup, 136)

/* Weight bytes per block of the many-row path: half of the 1 MiB L2 of a Zen 4/5 core. With 64
 * rows (147 KiB of Q4_0 at K = 4096) preparing the activations took 9% of a 512-token prefill;
 * 512 KiB blocks cut that 8x and gained 3-5% on the prefill shapes of bench/kernels_bench. */
#define QBLOCK_BYTES (512 * 1024)

/* Prepared activations live on the stack: 128 KiB = 512 groups, i.e. a row tile of TM rows for
 * K <= 16384 and of fewer rows up to K = 65536. Longer rows (no known model) use the heap. */
#define XBUF_GROUPS 512

/* ==== M = 1 (decode): one activation row against a range of weight rows ====
 * The activation row is prepared once per call (not once per NBLOCK) and GEMV_R weight rows
 * are streamed side by side, each with its own accumulator that sees exactly the operations of
 * the tile above (same prepared groups, same per-group convert / scale / FMA, same final
 * reduce), so every output has the bits of the general path. Each weight row is its own
 * stream with a software prefetch GEMV_PF bytes ahead of the group being read, covering every
 * cache line of that group (PF_LINES prefetches), and wrapped past the row's end to the same
 * offset of the row GEMV_R further on (the row this stream reads next), so no stream starts
 * cold. Decode is bound by how many misses one core keeps in flight: on the 2-core Zen box,
 * one thread streamed 4096 x 4096 Q4_0 at 16 GB/s with the 4 x 4 tile and 33 GB/s here
 * (Q8_0: 17 -> 23 GB/s); 4 or 16 rows, one prefetched line per group, or T1 hints were slower. */
#define GEMV_R4 8    /* Q4_0 rows in flight */
#define GEMV_PF4 1024
#define GEMV_L4 2    /* a 72-byte group touches 2 lines */
#define GEMV_R8 8    /* Q8_0 */
#define GEMV_PF8 2048
#define GEMV_L8 3    /* a 136-byte group touches 3 lines */

/* One group g of GEMV_R weight rows (cnt blocks; a constant 4 in the main loop). */
#define GEMV_GROUP(WGROUP, GROUP_BYTES, PF_LINES, GEMV_R, GEMV_PF, CNT)                            \
    {                                                                                              \
        const xgrp *xg = xp + g;                                                                   \
        size_t po = (size_t)g * GROUP_BYTES + GEMV_PF;                                             \
        if (po >= ldw) po += wrap;                                                                 \
        _Pragma("GCC unroll 16") for (int b = 0; b < GEMV_R; b++) if (b < R) {                     \
            const char *p = w + (size_t)b * ldw + (size_t)g * GROUP_BYTES;                         \
            __m512i wlo, whi;                                                                      \
            __m512 dw;                                                                             \
            _Pragma("GCC unroll 4") for (int l = 0; l < PF_LINES; l++)                             \
                _mm_prefetch(w + (size_t)b * ldw + po + 64 * l, _MM_HINT_T0);                      \
            WGROUP(p, CNT, ix, &wlo, &whi, &dw);                                                   \
            const __m512i dp =                                                                     \
                _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(xg->bias, wlo, xg->lo), whi, xg->hi);      \
            acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), _mm512_mul_ps(dw, xg->d), acc[b]);    \
        }                                                                                          \
    }

#define GEMV_TILE(NAME, WGROUP, GROUP_BYTES, PF_LINES, GEMV_R, GEMV_PF)                            \
    static inline __attribute__((always_inline)) void NAME(                                       \
        float *y, const xgrp *xp, int64_t nb, const char *w, size_t ldw, int R,                   \
        const quad_idx *ix) {                                                                      \
        __m512 acc[GEMV_R];                                                                        \
        _Pragma("GCC unroll 16") for (int b = 0; b < GEMV_R; b++) acc[b] = _mm512_setzero_ps();   \
        const int64_t full = nb / 4;                                                               \
        const size_t wrap = (size_t)(R - 1) * ldw;                                                 \
        int64_t g = 0;                                                                             \
        for (; g < full; g++) GEMV_GROUP(WGROUP, GROUP_BYTES, PF_LINES, GEMV_R, GEMV_PF, 4)        \
        if (g * 4 < nb) {                                                                          \
            const int cnt = (int)(nb - g * 4);                                                     \
            GEMV_GROUP(WGROUP, GROUP_BYTES, PF_LINES, GEMV_R, GEMV_PF, cnt)                        \
        }                                                                                          \
        _Pragma("GCC unroll 16") for (int b = 0; b < GEMV_R; b++) if (b < R) y[b] = hsum16(acc[b]); \
    }

GEMV_TILE(gemv_q4_0, q4_wgroup, 72, GEMV_L4, GEMV_R4, GEMV_PF4)
GEMV_TILE(gemv_q8_0, q8_wgroup, 136, GEMV_L8, GEMV_R8, GEMV_PF8)

/* y[n] for n in [n0, n1) of a one-row call; xbuf holds ngr prepared groups. */
static void quant_gemv(const mg_mm_args *g, int64_t n0, int64_t n1, bool q4, xgrp *xbuf,
                       const quad_idx *ix) {
    const size_t ldw = mg_row_size(g->wtype, g->K);
    const int64_t nb = g->K / QK8_0;
    prep_x(xbuf, (const char *)g->xq, nb, q4 ? 8 : (char)0x80, ix);
    const int R = q4 ? GEMV_R4 : GEMV_R8;
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
        const char *w = (const char *)g->w + (size_t)n * ldw;
        if (q4) gemv_q4_0(g->y + n, xbuf, nb, w, ldw, GEMV_R4, ix);
        else gemv_q8_0(g->y + n, xbuf, nb, w, ldw, GEMV_R8, ix);
    }
    for (; n < n1; n++) { /* the last rows of the range, one at a time */
        const char *w = (const char *)g->w + (size_t)n * ldw;
        if (q4) gemv_q4_0(g->y + n, xbuf, nb, w, ldw, 1, ix);
        else gemv_q8_0(g->y + n, xbuf, nb, w, ldw, 1, ix);
    }
}

static void quant_mm(const mg_mm_args *g, int64_t n0, int64_t n1, bool q4) {
    const size_t ldw = mg_row_size(g->wtype, g->K);
    const int64_t K = g->K, nb = K / QK8_0, ngr = (nb + 3) / 4;
    const quad_idx ix = make_quad_idx();
    xgrp stack_buf[XBUF_GROUPS];
    if (g->M == 1 && ngr <= XBUF_GROUPS) {
        quant_gemv(g, n0, n1, q4, stack_buf, &ix);
        return;
    }
    xgrp *xbuf = stack_buf;
    int64_t rows = MG_MIN((int64_t)TM, XBUF_GROUPS / ngr);
    if (rows == 0) {
        xbuf = _mm_malloc((size_t)ngr * sizeof(xgrp), 64);
        rows = 1;
        if (!xbuf) {
            for (int64_t m = 0; m < g->M; m++)
                for (int64_t n = n0; n < n1; n++) g->y[m * g->N + n] = __builtin_nanf("");
            return;
        }
    }
    /* Weight rows per block: about QBLOCK_BYTES of them, which stay in L2 while every row tile
     * passes over them; each row tile's activations are prepared once per block. */
    int64_t qblock = (int64_t)(QBLOCK_BYTES / ldw) / TN * TN;
    if (qblock < NBLOCK) qblock = NBLOCK;
    for (int64_t nbk = n0; nbk < n1; nbk += qblock) {
        const int64_t ne = MG_MIN(nbk + qblock, n1);
        for (int64_t m = 0; m < g->M; m += rows) {
            const int A = (int)MG_MIN(rows, g->M - m);
            for (int a = 0; a < A; a++)
                prep_x(xbuf + a * ngr, (const char *)g->xq + (size_t)(m + a) * g->xq_stride, nb,
                       q4 ? 8 : (char)0x80, &ix);
            for (int64_t n = nbk; n < ne; n += TN) {
                const int B = (int)MG_MIN((int64_t)TN, ne - n);
                float *y = g->y + m * g->N + n;
                const char *w = (const char *)g->w + (size_t)n * ldw;
                if (q4) {
                    TILE_SWITCH(tile_q4_0, y, g->N, xbuf, ngr, w, ldw)
                } else {
                    TILE_SWITCH(tile_q8_0, y, g->N, xbuf, ngr, w, ldw)
                }
            }
        }
    }
    if (xbuf != stack_buf) _mm_free(xbuf);
}

static void mm_q4_0(const mg_mm_args *g, int64_t n0, int64_t n1) { quant_mm(g, n0, n1, true); }
static void mm_q8_0(const mg_mm_args *g, int64_t n0, int64_t n1) { quant_mm(g, n0, n1, false); }

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

/* ==== attention inner loops ==== */

static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* Scores four keys at a time (four independent FMA chains hide the FMA latency); each key has
 * its own 16-lane accumulator over d and the same operations whatever its group. */
static void attn_scores(float *s, const float *q, const float *k, int64_t stride, int64_t n, int d,
                        float scale) {
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const float *k0 = k + t * stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < d; i += 16) {
            const __mmask16 m = tail_mask(d - i);
            const __m512 qv = _mm512_maskz_loadu_ps(m, q + i);
            a0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + i), a0);
            a1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + stride + i), a1);
            a2 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + 2 * stride + i), a2);
            a3 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + 3 * stride + i), a3);
        }
        s[t] = scale * _mm512_reduce_add_ps(a0);
        s[t + 1] = scale * _mm512_reduce_add_ps(a1);
        s[t + 2] = scale * _mm512_reduce_add_ps(a2);
        s[t + 3] = scale * _mm512_reduce_add_ps(a3);
    }
    for (; t < n; t++) {
        __m512 a0 = _mm512_setzero_ps();
        for (int i = 0; i < d; i += 16) {
            const __mmask16 m = tail_mask(d - i);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i),
                                 _mm512_maskz_loadu_ps(m, k + t * stride + i), a0);
        }
        s[t] = scale * _mm512_reduce_add_ps(a0);
    }
}

/* o[i0, i0 + 16 NV) (the last vector masked to d) accumulated over all n rows in registers. */
static inline __attribute__((always_inline)) void values_chunk(float *o, const float *p, const float *v,
                                                               int64_t stride, int64_t n, int i0, int d,
                                                               int NV) {
    __m512 acc[8];
    __mmask16 msk[8];
    _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) if (c < NV) {
        acc[c] = _mm512_setzero_ps();
        msk[c] = tail_mask(d - i0 - 16 * c);
    }
    for (int64_t t = 0; t < n; t++) {
        const __m512 pt = _mm512_set1_ps(p[t]);
        const float *vr = v + t * stride + i0;
        _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) if (c < NV)
            acc[c] = _mm512_fmadd_ps(pt, _mm512_maskz_loadu_ps(msk[c], vr + 16 * c), acc[c]);
    }
    _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) if (c < NV)
        _mm512_mask_storeu_ps(o + i0 + 16 * c, msk[c], acc[c]);
}

/* Weighted sum of value rows, 128 outputs (8 registers) per pass over the rows. */
static void attn_values(float *o, const float *p, const float *v, int64_t stride, int64_t n, int d) {
    for (int i0 = 0; i0 < d; i0 += 128) {
        switch ((MG_MIN(d - i0, 128) + 15) / 16) {
        case 1: values_chunk(o, p, v, stride, n, i0, d, 1); break;
        case 2: values_chunk(o, p, v, stride, n, i0, d, 2); break;
        case 3: values_chunk(o, p, v, stride, n, i0, d, 3); break;
        case 4: values_chunk(o, p, v, stride, n, i0, d, 4); break;
        case 5: values_chunk(o, p, v, stride, n, i0, d, 5); break;
        case 6: values_chunk(o, p, v, stride, n, i0, d, 6); break;
        case 7: values_chunk(o, p, v, stride, n, i0, d, 7); break;
        default: values_chunk(o, p, v, stride, n, i0, d, 8); break;
        }
    }
}

/* ==== elementwise ops ==== */

/* exp(x) = 2^n exp(r) with n = round(x / ln 2) and r = x - n ln 2 in two steps (Cody-Waite, so r
 * is exact to ~1e-10), exp(r) by its degree-7 Taylor polynomial (|r| <= ln2 / 2: truncation
 * below 1e-8 relative), and 2^n applied by vscalefps, which overflows to inf and underflows
 * through the subnormals to 0 as it should. x is clamped to [-104, 89] first (exp is 0 / inf
 * in fp32 beyond), with the operand order that lets NaN through. About 2 ulp from expf. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Lanes 0..7 / 8..15 of v widened to double. */
static inline __m512d lo_pd(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
static inline __m512d hi_pd(__m512 v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* The 16 lanes of v added in double to two accumulators. */
static inline void add_pd(__m512d *s0, __m512d *s1, __m512 v) {
    *s0 = _mm512_add_pd(*s0, lo_pd(v));
    *s1 = _mm512_add_pd(*s1, hi_pd(v));
}

/* As mg_rmsnorm: sum of squares in double, then the same fp32 scaling expression. */
static void rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
        const __m512d lo = lo_pd(v), hi = hi_pd(v);
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
    }
    const double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    const float r = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    const __m512 vr = _mm512_set1_ps(r);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vr);
        if (weight) v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, weight + i), v);
        _mm512_mask_storeu_ps(out + i, m, v);
    }
}

/* As mg_layernorm: the sum and the sum of squared deviations in double (8 lanes each, so in
 * another order), then the same fp32 expression per element. */
static void layernorm(float *out, const float *x, const float *weight, const float *bias, int64_t n,
                      float eps) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16)
        add_pd(&s0, &s1, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
    const double mean = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) / (double)n;
    const __m512d vmean = _mm512_set1_pd(mean);
    __m512d v0 = _mm512_setzero_pd(), v1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        /* masked-off lanes would add mean^2: zero their deviations */
        const __m512d d0 = _mm512_maskz_sub_pd((__mmask8)m, lo_pd(v), vmean);
        const __m512d d1 = _mm512_maskz_sub_pd((__mmask8)(m >> 8), hi_pd(v), vmean);
        v0 = _mm512_fmadd_pd(d0, d0, v0);
        v1 = _mm512_fmadd_pd(d1, d1, v1);
    }
    const double var = _mm512_reduce_add_pd(_mm512_add_pd(v0, v1));
    const __m512 vr = _mm512_set1_ps((float)(1.0 / sqrt(var / (double)n + eps)));
    const __m512 vm = _mm512_set1_ps((float)mean);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), vr);
        if (weight) t = _mm512_mul_ps(t, _mm512_maskz_loadu_ps(m, weight + i));
        if (bias) t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(m, bias + i));
        _mm512_mask_storeu_ps(out + i, m, t);
    }
}

/* As mg_softmax: max, exp(x - max) summed in double, scaled by 1 / sum; all -inf -> zeros.
 * Returns max + log(sum). */
static double softmax(float *x, int64_t n) {
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16)
        vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - i), x + i));
    const float mx = _mm512_reduce_max_ps(vm);
    if (mx == -INFINITY) {
        memset(x, 0, (size_t)n * sizeof *x);
        return -INFINITY;
    }
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmx)));
        _mm512_mask_storeu_ps(x + i, m, e);
        add_pd(&s0, &s1, e);
    }
    const double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    const __m512 inv = _mm512_set1_ps((float)(1.0 / sum));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
    return (double)mx + log(sum);
}

/* As mg_silu: x / (1 + exp(-x)). */
static void silu(float *x, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_mask_storeu_ps(x + i, m, _mm512_div_ps(v, _mm512_add_ps(one, e)));
    }
}

/* Phi(x) = erfc(-x / sqrt 2) / 2 for 16 lanes. erfc(z) for z >= 0 is the Chebyshev-fitted
 * t * exp(-z^2 + P9(t)), t = 1 / (1 + z / 2) (Numerical Recipes' erfcc, relative error < 1.2e-7
 * for all z >= 0); negative x take it directly (so the tail keeps its relative precision),
 * positive x take 1 - erfc(|z|) / 2. *z2 gets z^2 = x^2 / 2 for the density. */
static inline __m512 normal_cdf(__m512 v, __m512 *z2) {
    static const float c[10] = {-1.26551223f, 1.00002368f, 0.37409196f, 0.09678418f, -0.18628806f,
                                0.27886807f,  -1.13520398f, 1.48851587f, -0.82215223f, 0.17087277f};
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
    const __m512 z = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(0.70710678f));
    const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(half, z, one));
    __m512 p = _mm512_set1_ps(c[9]);
    for (int j = 8; j >= 0; j--) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c[j]));
    const __m512 e = _mm512_mul_ps(t, exp512(_mm512_fnmadd_ps(z, z, p))); /* erfc(|z|) */
    const __m512 he = _mm512_mul_ps(half, e);
    const __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ);
    *z2 = _mm512_mul_ps(z, z);
    return _mm512_mask_sub_ps(he, pos, one, he);
}

/* As mg_gelu: x * Phi(x). */
static void gelu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 z2;
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(v, normal_cdf(v, &z2)));
    }
}

/* As mg_gelu_bwd: dx += dout * (Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi)), in fp32. */
static void gelu_bwd(float *dx, const float *dout, const float *x, int64_t n) {
    const __m512 inv_sqrt_2pi = _mm512_set1_ps(0.39894228f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 z2;
        const __m512 cdf = normal_cdf(v, &z2);
        const __m512 pdf = _mm512_mul_ps(inv_sqrt_2pi, exp512(_mm512_sub_ps(_mm512_setzero_ps(), z2)));
        const __m512 d = _mm512_fmadd_ps(v, pdf, cdf);
        const __m512 g = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dout + i), d, _mm512_maskz_loadu_ps(m, dx + i));
        _mm512_mask_storeu_ps(dx + i, m, g);
    }
}

/* x += y, one rounding per element as in the reference. */
static void vec_add(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* AdamW (mg_adamw): the reference's operations in its order, 16 lanes at a time; mul, add, sub,
 * div and sqrt are each correctly rounded, and none is fused, so the bits are the reference's. */
static void adamw(float *p, const float *g, float *m1, float *m2, int64_t n, const mg_adamw_coef *c) {
    const __m512 decay = _mm512_set1_ps(c->decay), b1 = _mm512_set1_ps(c->beta1), b2 = _mm512_set1_ps(c->beta2);
    const __m512 c1 = _mm512_set1_ps(1.0f - c->beta1), c2 = _mm512_set1_ps(1.0f - c->beta2);
    const __m512 eps = _mm512_set1_ps(c->eps), step = _mm512_set1_ps(c->step_size), bc2 = _mm512_set1_ps(c->bc2_sqrt);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 gi = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 pi = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + i), decay);
        const __m512 a = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, m1 + i), b1), _mm512_mul_ps(gi, c1));
        const __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, m2 + i), b2),
                                       _mm512_mul_ps(_mm512_mul_ps(gi, gi), c2));
        const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(v), bc2), eps);
        _mm512_mask_storeu_ps(m1 + i, m, a);
        _mm512_mask_storeu_ps(m2 + i, m, v);
        _mm512_mask_storeu_ps(p + i, m, _mm512_sub_ps(pi, _mm512_mul_ps(step, _mm512_div_ps(a, denom))));
    }
}

/* dst[c * R + r] = src[r * C + c] by 16 x 16 tiles held in 16 registers. Transposing swaps bit
 * k of the row index with bit k of the column index for k = 0..3; each stage swaps one pair:
 * rows i (bit k clear) and i' = i | 2^k become, for column j, (j bit k clear: r_i[j], set:
 * r_i'[j ^ 2^k]) and (clear: r_i[j | 2^k], set: r_i'[j]): one two-source permute each. Partial
 * tiles at the edges use masked loads (zeros) and masked stores. */
/* The permute indices of the four stages (lo: rows i, hi: rows i | 2^k). */
static void tr16_indices(__m512i lo[4], __m512i hi[4]) {
    for (int k = 0; k < 4; k++) {
        int32_t a[16], b[16];
        const int bk = 1 << k;
        for (int j = 0; j < 16; j++) {
            a[j] = (j & bk) ? 16 + (j ^ bk) : j;
            b[j] = (j & bk) ? 16 + j : (j | bk);
        }
        lo[k] = _mm512_loadu_si512(a);
        hi[k] = _mm512_loadu_si512(b);
    }
}

static inline __attribute__((always_inline)) void tr16(__m512 v[16], const __m512i lo[4], const __m512i hi[4]) {
    _Pragma("GCC unroll 4") for (int k = 3; k >= 0; k--) {
        const int bk = 1 << k;
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) {
            if (i & bk) continue;
            const __m512 a = v[i], b = v[i | bk];
            v[i] = _mm512_permutex2var_ps(a, lo[k], b);
            v[i | bk] = _mm512_permutex2var_ps(a, hi[k], b);
        }
    }
}

static void transpose(float *dst, const float *src, int64_t R, int64_t C) {
    __m512i lo[4], hi[4];
    tr16_indices(lo, hi);
    for (int64_t r0 = 0; r0 < R; r0 += 16) {
        const int nr = (int)MG_MIN(16, R - r0);
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
            const int nc = (int)MG_MIN(16, C - c0);
            const __mmask16 mc = tail_mask(nc), mr = tail_mask(nr);
            __m512 v[16];
            for (int i = 0; i < 16; i++)
                v[i] = i < nr ? _mm512_maskz_loadu_ps(mc, src + (r0 + i) * C + c0) : _mm512_setzero_ps();
            tr16(v, lo, hi);
            for (int j = 0; j < nc; j++) _mm512_mask_storeu_ps(dst + (c0 + j) * R + r0, mr, v[j]);
        }
    }
}

/* ==== float weights, many rows: one fused multiply-add chain per output (mg_matmul_wide) ====
 * A thread packs a panel of WNR weight rows x WKC k, converted to fp32 and transposed to k-major
 * (p[k][0..WNR)), then every tile of up to WMR activation rows passes over it: per k, WNR / 16
 * panel loads and WMR broadcasts of x for WMR * WNR / 16 FMAs, with no conversion and no final
 * reduce in the loop. Each output is y = fma(x[k], w[k], y) for k = 0, 1, ..., K-1 from y = 0 (the
 * accumulator goes through y between k panels unchanged), exactly the reference's chain: the bits
 * depend on nothing but x, w and K. */
#define WNR 64
#define WKC 512
#define WMR 6

/* p[k][c] = W[n0 + c][k0 + k] as fp32 for c < nc, k < kc; zero for c in [nc, WNR). */
#define WIDE_PACK(NAME, LOADW)                                                                     \
    static void NAME(float *p, const char *w, size_t ldw, int nc, int64_t k0, int kc, const __m512i lo[4], \
                     const __m512i hi[4]) {                                                        \
        for (int g = 0; g < WNR / 16; g++) {                                                       \
            const int rows = nc - g * 16;                                                          \
            for (int kk = 0; kk < kc; kk += 16) {                                                  \
                const __mmask16 mk = tail_mask(kc - kk);                                           \
                __m512 v[16];                                                                      \
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] =                       \
                    i < rows ? LOADW(w + (size_t)(g * 16 + i) * ldw, k0 + kk, mk) : _mm512_setzero_ps(); \
                tr16(v, lo, hi);                                                                   \
                const int nk = MG_MIN(16, kc - kk);                                                \
                for (int j = 0; j < nk; j++) _mm512_store_ps(p + (size_t)(kk + j) * WNR + g * 16, v[j]); \
            }                                                                                      \
        }                                                                                          \
    }

WIDE_PACK(wide_pack_f32, load_w_f32)

/* The same panel from fp32 weights given k-major (W(n, k) at wt[k * ldw + n]; wt points at column
 * n0 and ldw is in bytes): a copy of nc floats per k, no transpose. */
static void wide_pack_f32_km(float *p, const char *wt, size_t ldw, int nc, int64_t k0, int kc) {
    for (int k = 0; k < kc; k++) {
        const float *src = (const float *)(const void *)(wt + (size_t)(k0 + k) * ldw);
        _Pragma("GCC unroll 4") for (int b = 0; b < WNR / 16; b++) {
            const int c = nc - b * 16;
            _mm512_store_ps(p + (size_t)k * WNR + b * 16,
                            c > 0 ? _mm512_maskz_loadu_ps(tail_mask(c), src + b * 16) : _mm512_setzero_ps());
        }
    }
}
WIDE_PACK(wide_pack_f16, load_w_f16)
WIDE_PACK(wide_pack_bf16, load_w_bf16)

/* Prefetch of the panel a thread packs next (the same rows' next k block, or the next rows from
 * k = 0), spread over the tiles of this panel and over the k steps of each tile: its raw weights
 * come from memory while the tiles compute, instead of stalling the next pack. */
typedef struct {
    const char *row;  /* row of the next line to fetch; NULL: nothing left */
    size_t ldw;
    int line, lines_per_row, rows_left, per_step;
} wide_pf;

static inline void wide_pf_next(wide_pf *pf, const char *w, size_t ldw, size_t esz, int64_t nb, int64_t n1,
                                int64_t k0, int kc, int64_t K, int64_t M) {
    int64_t nk0 = k0 + WKC, nnb = nb;
    if (nk0 >= K) { nk0 = 0; nnb = nb + WNR; }
    *pf = (wide_pf){0};
    if (nnb >= n1) return;
    const int64_t nkc = MG_MIN((int64_t)WKC, K - nk0);
    pf->row = w + (size_t)nnb * ldw + (size_t)nk0 * esz;
    pf->ldw = ldw;
    pf->lines_per_row = (int)((nkc * (int64_t)esz + 63) / 64) + 1; /* +1: rows need not be aligned */
    pf->rows_left = (int)MG_MIN((int64_t)WNR, n1 - nnb);
    const int64_t steps = (M + WMR - 1) / WMR * ((kc + 15) / 16);
    const int64_t total = (int64_t)pf->rows_left * pf->lines_per_row;
    pf->per_step = (int)((total + steps - 1) / steps);
}

/* One step: up to per_step lines. */
static inline void wide_pf_step(wide_pf *pf) {
    for (int i = 0; i < pf->per_step && pf->row; i++) {
        _mm_prefetch(pf->row + (size_t)pf->line * 64, _MM_HINT_T0);
        if (++pf->line == pf->lines_per_row) {
            pf->line = 0;
            pf->row = --pf->rows_left ? pf->row + pf->ldw : NULL;
        }
    }
}

/* The epilogue of one tile at the last k panel (mg_mm_epilogue): bias at the tile's first column,
 * add_to at its first element (row stride ldy), or NULL. */
typedef struct {
    const float *bias;
    float *add_to;
    bool gelu;
} wide_ep;

/* A rows x B vectors of outputs over one packed panel; q: store masks of the B vectors; e: the
 * epilogue when this is the last panel, else NULL. */
static inline __attribute__((always_inline)) void wide_tile(float *y, int64_t ldy, const float *x, int64_t ldx,
                                                            const float *p, int kc, bool first,
                                                            const __mmask16 *q, int A, int B, wide_pf *pf,
                                                            const wide_ep *e) {
    __m512 acc[WMR][WNR / 16];
    _Pragma("GCC unroll 8") for (int a = 0; a < WMR; a++) if (a < A)
        _Pragma("GCC unroll 4") for (int b = 0; b < WNR / 16; b++) if (b < B) acc[a][b] =
            first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(q[b], y + a * ldy + b * 16);
    for (int k = 0; k < kc; k++) {
        if ((k & 15) == 0) wide_pf_step(pf);
        __m512 wv[WNR / 16];
        _Pragma("GCC unroll 4") for (int b = 0; b < WNR / 16; b++) if (b < B) wv[b] =
            _mm512_load_ps(p + (size_t)k * WNR + b * 16);
        _Pragma("GCC unroll 8") for (int a = 0; a < WMR; a++) if (a < A) {
            const __m512 xv = _mm512_set1_ps(x[a * ldx + k]);
            _Pragma("GCC unroll 4") for (int b = 0; b < WNR / 16; b++) if (b < B) acc[a][b] =
                _mm512_fmadd_ps(xv, wv[b], acc[a][b]);
        }
    }
    if (!e) {
        _Pragma("GCC unroll 8") for (int a = 0; a < WMR; a++) if (a < A)
            _Pragma("GCC unroll 4") for (int b = 0; b < WNR / 16; b++) if (b < B)
                _mm512_mask_storeu_ps(y + a * ldy + b * 16, q[b], acc[a][b]);
        return;
    }
    for (int a = 0; a < A; a++)
        for (int b = 0; b < B; b++) {
            __m512 r = acc[a][b];
            if (e->bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(q[b], e->bias + b * 16));
            if (e->gelu) {
                __m512 z2;
                r = _mm512_mul_ps(r, normal_cdf(r, &z2));
            }
            if (e->add_to) {
                float *d = e->add_to + a * ldy + b * 16;
                _mm512_mask_storeu_ps(d, q[b], _mm512_add_ps(_mm512_maskz_loadu_ps(q[b], d), r));
            } else {
                _mm512_mask_storeu_ps(y + a * ldy + b * 16, q[b], r);
            }
        }
}

#define WT_ROW(a)                                                                                  \
    case a * 8 + 1: wide_tile(y, ldy, x, ldx, p, kc, first, q, a, 1, pf, e); break;                   \
    case a * 8 + 2: wide_tile(y, ldy, x, ldx, p, kc, first, q, a, 2, pf, e); break;                   \
    case a * 8 + 3: wide_tile(y, ldy, x, ldx, p, kc, first, q, a, 3, pf, e); break;                   \
    case a * 8 + 4: wide_tile(y, ldy, x, ldx, p, kc, first, q, a, 4, pf, e); break;
#if WMR != 6 || WNR != 64
#error "wide_tile_any covers WMR = 6, WNR = 64"
#endif
static void wide_tile_any(float *y, int64_t ldy, const float *x, int64_t ldx, const float *p, int kc, bool first,
                          const __mmask16 *q, int A, int B, wide_pf *pf, const wide_ep *e) {
    switch (A * 8 + B) {
    WT_ROW(1) WT_ROW(2) WT_ROW(3) WT_ROW(4) WT_ROW(5) WT_ROW(6)
    default: break;
    }
}

#define WIDE_MM(NAME, PACK, KMAJOR)                                                                \
    static void NAME(const mg_mm_args *g, int64_t n0, int64_t n1) {                                \
        float p[WKC * WNR] __attribute__((aligned(64)));                                           \
        __m512i lo[4], hi[4];                                                                      \
        tr16_indices(lo, hi);                                                                      \
        const size_t esz = mg_row_size(g->wtype, 1);                                               \
        const int64_t K = g->K, ldy = g->ldy ? g->ldy : g->N, ldx = g->ldx ? g->ldx : K;           \
        const bool km = KMAJOR && g->w_kmajor;                                                     \
        const size_t ldw = g->ldw ? (size_t)g->ldw * esz                                           \
                                  : km ? (size_t)g->N * esz : mg_row_size(g->wtype, K);            \
        const char *w = g->w;                                                                      \
        for (int64_t nb = n0; nb < n1; nb += WNR) {                                                \
            const int nc = (int)MG_MIN((int64_t)WNR, n1 - nb);                                     \
            const int B = (nc + 15) / 16;                                                          \
            __mmask16 q[WNR / 16];                                                                 \
            for (int b = 0; b < WNR / 16; b++) q[b] = nc > b * 16 ? tail_mask(nc - b * 16) : 0;    \
            for (int64_t k0 = 0; k0 < K; k0 += WKC) {                                              \
                const int kc = (int)MG_MIN((int64_t)WKC, K - k0);                                  \
                wide_pf pf = {0};                                                                  \
                if (km) {                                                                          \
                    wide_pack_f32_km(p, w + (size_t)nb * esz, ldw, nc, k0, kc);                    \
                } else {                                                                           \
                    PACK(p, w + (size_t)nb * ldw, ldw, nc, k0, kc, lo, hi);                        \
                    wide_pf_next(&pf, w, ldw, esz, nb, n1, k0, kc, K, g->M);                       \
                }                                                                                  \
                const mg_mm_epilogue *ep = k0 + kc >= K ? g->ep : NULL;                            \
                for (int64_t m = 0; m < g->M; m += WMR) {                                          \
                    wide_ep e;                                                                     \
                    if (ep)                                                                        \
                        e = (wide_ep){ep->bias ? ep->bias + nb : NULL,                             \
                                      ep->add_to ? ep->add_to + m * ldy + nb : NULL, ep->gelu};    \
                    wide_tile_any(g->y + m * ldy + nb, ldy, g->x + m * ldx + k0, ldx, p, kc, k0 == 0, q, \
                                  (int)MG_MIN((int64_t)WMR, g->M - m), B, &pf, ep ? &e : NULL);    \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

WIDE_MM(mmw_f32, wide_pack_f32, true)
WIDE_MM(mmw_f16, wide_pack_f16, false)
WIDE_MM(mmw_bf16, wide_pack_bf16, false)

/* ==== C += op(A) . B (the trainer's backward products) ==== */

/* Tiles of GM rows x 32 columns (two vectors): 2 * GM accumulators; per k two loads of B and GM
 * broadcasts of A for 2 * GM fused multiply-adds. k runs in blocks of GKC so that the B panel
 * (GKC x 32 floats) stays in L1/L2 while the tiles of a block of rows pass over it. */
#define GM 6
#define GKC 256

static inline __attribute__((always_inline)) void gemm_tile(float *C, int64_t ldc, const float *A, int64_t sam,
                                                            int64_t sak, const float *B, int64_t ldb, int64_t kn,
                                                            __mmask16 q0, __mmask16 q1, int R) {
    __m512 c0[GM], c1[GM];
    _Pragma("GCC unroll 8") for (int r = 0; r < GM; r++) if (r < R) {
        c0[r] = _mm512_maskz_loadu_ps(q0, C + r * ldc);
        c1[r] = _mm512_maskz_loadu_ps(q1, C + r * ldc + 16);
    }
    for (int64_t k = 0; k < kn; k++) {
        const __m512 b0 = _mm512_maskz_loadu_ps(q0, B + k * ldb), b1 = _mm512_maskz_loadu_ps(q1, B + k * ldb + 16);
        const float *a = A + k * sak;
        _Pragma("GCC unroll 8") for (int r = 0; r < GM; r++) if (r < R) {
            const __m512 av = _mm512_set1_ps(a[r * sam]);
            c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
        }
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < GM; r++) if (r < R) {
        _mm512_mask_storeu_ps(C + r * ldc, q0, c0[r]);
        _mm512_mask_storeu_ps(C + r * ldc + 16, q1, c1[r]);
    }
}

static void gemm_acc(float *C, const float *A, const float *B, int64_t M, int64_t N, int64_t K, bool a_trans,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const int64_t sam = a_trans ? 1 : K, sak = a_trans ? M : 1; /* A(m, k) = A[m * sam + k * sak] */
    for (int64_t k0 = 0; k0 < K; k0 += GKC) {
        const int64_t kn = MG_MIN((int64_t)GKC, K - k0);
        for (int64_t n = n0; n < n1; n += 32) {
            const __mmask16 q0 = tail_mask(n1 - n), q1 = n1 - n > 16 ? tail_mask(n1 - n - 16) : 0;
            for (int64_t m = m0; m < m1; m += GM) {
                float *c = C + m * N + n;
                const float *a = A + m * sam + k0 * sak, *b = B + k0 * N + n;
                switch ((int)MG_MIN((int64_t)GM, m1 - m)) {
                case 1: gemm_tile(c, N, a, sam, sak, b, N, kn, q0, q1, 1); break;
                case 2: gemm_tile(c, N, a, sam, sak, b, N, kn, q0, q1, 2); break;
                case 3: gemm_tile(c, N, a, sam, sak, b, N, kn, q0, q1, 3); break;
                case 4: gemm_tile(c, N, a, sam, sak, b, N, kn, q0, q1, 4); break;
                case 5: gemm_tile(c, N, a, sam, sak, b, N, kn, q0, q1, 5); break;
                default: gemm_tile(c, N, a, sam, sak, b, N, kn, q0, q1, 6); break;
                }
            }
        }
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
    t->attn_scores = attn_scores;
    t->attn_values = attn_values;
    t->rmsnorm = rmsnorm;
    t->layernorm = layernorm;
    t->softmax = softmax;
    t->silu = silu;
    t->gelu = gelu;
    t->transpose = transpose;
    t->gelu_bwd = gelu_bwd;
    t->vec_add = vec_add;
    t->adamw = adamw;
    t->gemm_acc = gemm_acc;
    t->mmw_f32 = mmw_f32;
    t->mmw_f16 = mmw_f16;
    t->mmw_bf16 = mmw_bf16;
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
