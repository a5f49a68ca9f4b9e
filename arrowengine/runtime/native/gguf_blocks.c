/* Matrix products over GGUF quantized blocks (Q8_0, Q4_0, Q4_1) read in place, AVX-512 (VNNI) or AVX2, OpenMP.
 *
 * Built on first use by arrowengine/runtime/native/gguf.py and called through ctypes (no torch headers), once with
 * AVX-512 F/BW/VL/VNNI where the CPU has them and once with AVX2 + FMA + F16C elsewhere: lanes.h maps the vector
 * operations to 16 or 8 lanes, and every lane computes exactly the same arithmetic in both builds, so the two give
 * bit-identical results (a test compares them). A weight matrix is N rows of K/32 blocks each, exactly as llama.cpp
 * stores them:
 *   Q8_0: fp16 d, 32 x int8 q            value = q * d                (34 bytes)
 *   Q4_0: fp16 d, 16 bytes of nibbles     value = (q - 8) * d          (18 bytes)
 *   Q4_1: fp16 d, fp16 m, 16 bytes        value = q * d + m            (20 bytes)
 * (nibble byte j holds element j in its low half and element j + 16 in its high half).
 *
 * y = x W^T: each row of x is first quantized to int16 per block of 32 (scale amax / 32767, round to nearest:
 * llama.cpp's Q8 activation blocks with 8 more bits), so every block product is an exact integer dot product,
 * scaled once by d_w * d_x. Q4_1's min adds m_w * d_x * sum(q_x) per block.
 *
 * The weights go through in strips of one row per lane (16 or 8 rows): a strip's blocks are transposed in
 * registers so that each lane holds one weight row's codes as int16 pairs, and each pair of x codes is broadcast
 * to all lanes (vpdpwssd: 32 products per instruction, the multiplier's full width, with no horizontal sums).
 * Each output is then, in its own lane, a running sum over the blocks in order of d_x (d_w P + m_w S) for Q4_1 and
 * (d_w d_x) P for the others: P the exact integer product of the block, S the sum of x's codes. A row
 * of x gets the same result alone and in any batch. The transposition is paid once per strip and block for up to 8
 * rows of x (once per chunk of 64 for a prompt), which is what makes a decode batch cheap per row: the kernel the
 * strips replaced kept the K dimension in the lanes and spent more on unpacking and per-block scale arithmetic than
 * on the products (8 rows of x: 0.81 -> 0.43 ns per block and row on one Zen 4 core; 64 rows: 0.82 -> 0.37).
 * What is left per row and block is 16 vpdpwssd and 4 float operations (convert, scale, min, accumulate), which
 * share the two FMA pipes: ~1.25 cycles per block and row at best, 1.35 measured with a prompt's unpacking kept.
 *
 * ae_gguf_dequantize follows gguf-py's numpy arithmetic (one float32 rounding per product and sum), and the
 * file is compiled with -ffp-contract=off so no multiply-add is fused: its output is bit-identical to
 * gguf.quants.dequantize.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lanes.h"

enum { AE_Q8_0 = 8, AE_Q4_0 = 2, AE_Q4_1 = 3 }; /* GGML type ids */
#define QK 32
#define GROUP 8   /* rows of x per pass over a strip's blocks (their accumulators stay in registers) */
#define CHUNK 64  /* rows of x per pass over the weights (a multiple of GROUP) */
/* Strips ahead to prefetch, and into which cache: a group of rows that waits on memory (8 or more bytes of weights
 * per block and row of x: one or two decode rows over Q4 blocks, up to 4 over Q8_0's) fetches 2 strips ahead into
 * L2; one that waits on its products 1 strip ahead into L1. Interleaved A/B runs (ctypes calls on SmolLM2's shapes,
 * random blocks): one row, 30 layers' products 3.04-3.16 -> 2.85-3.01 ms in 5 of 5 runs; 4 rows 4.45-5.07 ->
 * 4.71-5.38 and 8 rows 6.43-6.47 -> 6.71-6.74 ms the far way (so those keep the near fetch). SmolLM2 single-stream
 * decode, alternating builds: 178-211 vs 164-190 tokens/s (3 of 4 runs faster). */
#define PF_NEAR 1
#define PF_FAR 2
#ifndef STRIP_CHUNK
#define STRIP_CHUNK 2 /* the shortest run of strips a thread takes (guided; 2: a layer's 8-row products -4% vs 4) */
#endif

static int block_bytes(int type) {
    switch (type) {
    case AE_Q8_0: return 34;
    case AE_Q4_0: return 18;
    case AE_Q4_1: return 20;
    default: return 0;
    }
}

static inline float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

int ae_gguf_dequantize(int type, const uint8_t *w, int64_t rows, int64_t k, int64_t row_stride, float *out) {
    const int bb = block_bytes(type);
    if (bb == 0 || k % QK) return -2;
    const int64_t nb = k / QK;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * row_stride;
        float *o = out + r * k;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * bb;
            const float d = half_to_float(blk);
            float *ob = o + b * QK;
            if (type == AE_Q8_0) {
                const int8_t *q = (const int8_t *)(blk + 2);
                for (int i = 0; i < QK; i++) ob[i] = (float)q[i] * d;
            } else if (type == AE_Q4_0) {
                const uint8_t *q = blk + 2;
                for (int i = 0; i < QK / 2; i++) {
                    ob[i] = d * (float)((int)(q[i] & 0x0F) - 8);
                    ob[i + QK / 2] = d * (float)((int)(q[i] >> 4) - 8);
                }
            } else {
                const float m = half_to_float(blk + 2);
                const uint8_t *q = blk + 4;
                for (int i = 0; i < QK / 2; i++) {
                    const float lo = d * (float)(q[i] & 0x0F), hi = d * (float)(q[i] >> 4);
                    ob[i] = lo + m;
                    ob[i + QK / 2] = hi + m;
                }
            }
        }
    }
    return 0;
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Half a block's codes as the pairs the strip kernel multiplies: dword 4c + s of a block holds the codes of
 * elements (k, k + 2), k = 4c + (s & 1) + (s & 2 ? 16 : 0), as int16 (low, high) -- the order of a Q4 block's
 * nibbles (see unpack_quarter). lo holds elements j..j+7 and hi elements j+16..j+23 as int32; out gets 8 dwords. */
static inline void store_pairs(__m256i lo, __m256i hi, int32_t *out) {
    const __m256i first = _mm256_unpacklo_epi64(lo, hi), second = _mm256_unpackhi_epi64(lo, hi);
    _mm256_storeu_si256((__m256i *)out, _mm256_or_si256(_mm256_and_si256(first, _mm256_set1_epi32(0xFFFF)),
                                                        _mm256_slli_epi32(second, 16)));
}

/* Blocks b0..b1-1 (32 floats each) of the `rows` rows of a chunk of x (leading dimension ldx) -> int16 codes stored
 * as pairs (xp: 16 dwords a block, see store_pairs), per-block scale d (amax / 32767) and the codes' sum as a float
 * (exact: |sum| < 2^21), for Q4_1's min. Block b of row r goes to xp[(b * rows + r) * 16], d[b * rows + r],
 * qsum[b * rows + r]: the rows block-major, so the kernel reaches every row of a group from one pointer per block
 * (constant offsets; with a pointer per row it ran out of registers).
 * int16 keeps the rounding of the activations 256x finer than llama.cpp's int8 blocks. int8 activations here (one
 * vpdpbusd per 4 products where vpdpwssd takes 2: a 1.6x faster 8-row kernel) measured +0.42% perplexity on
 * SmolLM2 and the float reference's greedy continuation on 2 of 20 chat prompts; int16: +0.001% and 20 of 20. */
static void quantize_blocks(const float *x, int64_t ldx, int64_t rows, int64_t b0, int64_t b1, int32_t *xp,
                            float *d, float *qsum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t b = b0; b < b1; b++) {
            const float *xb = x + r * ldx + b * QK;
            const int64_t at = b * rows + r; /* block-major */
            __m256 v[4], amax = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                v[j] = _mm256_loadu_ps(xb + 8 * j);
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
            }
            __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            m = _mm_max_ss(m, _mm_movehdup_ps(m));
            const float mx = _mm_cvtss_f32(m);
            const float scale = mx / 32767.0f;
            const __m256 inv = _mm256_set1_ps(mx > 0.0f ? 32767.0f / mx : 0.0f);
            __m256i i32[4];
            for (int j = 0; j < 4; j++)
                i32[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], inv),
                                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
            __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
            s = _mm_hadd_epi32(s, s);
            s = _mm_hadd_epi32(s, s);
            store_pairs(i32[0], i32[2], xp + at * 16);     /* c = 0, 1: elements 0..7 with 16..23 */
            store_pairs(i32[1], i32[3], xp + at * 16 + 8); /* c = 2, 3: elements 8..15 with 24..31 */
            d[at] = scale;
            qsum[at] = (float)_mm_cvtsi128_si32(s);
        }
    }
}

/* T[c] lane i = bytes 4c..4c+3 of the strip's row i, from 16 bytes at off of each row (a 4x4 dword transpose in
 * each 128-bit lane of rows loaded j, j + 4, ...). */
static inline __attribute__((always_inline)) void transpose_rows(const uint8_t *const *rp, int64_t off, vint T[4]) {
    const vint r0 = load_rows(rp, 0, off), r1 = load_rows(rp, 1, off), r2 = load_rows(rp, 2, off),
               r3 = load_rows(rp, 3, off);
    const vint t0 = V_UNLO32(r0, r1), t1 = V_UNHI32(r0, r1), t2 = V_UNLO32(r2, r3), t3 = V_UNHI32(r2, r3);
    T[0] = V_UNLO64(t0, t2);
    T[1] = V_UNHI64(t0, t2);
    T[2] = V_UNLO64(t1, t3);
    T[3] = V_UNHI64(t1, t3);
}

/* The strip's block (at byte offset off of each row) transposed: T[c] lane i = bytes 4c..4c+3 of row i's codes
 * (Q8_0: T[c] the first 16 code bytes, T[4 + c] the last 16). */
static inline __attribute__((always_inline)) void transpose_block(int type, const uint8_t *const *rp, int64_t off,
                                                                   vint T[8]) {
    if (type == AE_Q8_0) {
        transpose_rows(rp, off + 2, T);
        transpose_rows(rp, off + 18, T + 4);
    } else {
        transpose_rows(rp, off + (type == AE_Q4_1 ? 4 : 2), T);
    }
}

/* Quarter c of the transposed block as 4 vectors of int16 pairs, lane i = weight row i: W[s] holds the codes of
 * elements (k, k + 2) with k = 4c + (s & 1) + (s & 2 ? 16 : 0) -- the order of the nibbles in a Q4 block's bytes,
 * which Q8_0 follows so that one permuted copy of x serves every type. A quarter at a time, right before its
 * products, keeps 4 of them live where the whole block's 16 spilled the 8-row accumulators to the stack. */
static inline __attribute__((always_inline)) void unpack_quarter(int type, const vint T[8], int c, vint W[4]) {
    if (type == AE_Q8_0) {
        W[0] = V_SRAI16(V_SLLI16(T[c], 8), 8);
        W[1] = V_SRAI16(T[c], 8);
        W[2] = V_SRAI16(V_SLLI16(T[4 + c], 8), 8);
        W[3] = V_SRAI16(T[4 + c], 8);
        return;
    }
    const vint mask = V_SET32(0x000F000F);
    W[0] = V_AND(T[c], mask);
    W[1] = V_AND(V_SRLI32(T[c], 8), mask);
    W[2] = V_AND(V_SRLI32(T[c], 4), mask);
    W[3] = V_AND(V_SRLI32(T[c], 12), mask);
    if (type == AE_Q4_0)
        for (int s = 0; s < 4; s++) W[s] = V_SUB16(W[s], V_SET16(8));
}

enum { UNPACK = 0, UNPACK_KEEP = 1, KEPT = 2 }; /* where a strip's unpacked blocks come from (strip's `cache`) */

/* Block b's bytes of the strip that is PF_NEAR or PF_FAR strips ahead (see PF_FAR): the strip's rows are one
 * contiguous run of memory read as 16 (8) interleaved streams, which the hardware prefetchers do not follow (a
 * decode step's products ran at 6 GB/s), so a later strip's bytes are streamed in at the pace this one is read. */
static inline __attribute__((always_inline)) void fetch_ahead(const uint8_t *const *rp, int64_t rs, int64_t b,
                                                               int bb, const int MB) {
    const uint8_t *here = rp[0] + b * AE_LANES * bb;
    if (8 * MB <= bb) /* waits on memory (see PF_FAR) */
        for (int o = 0; o < AE_LANES * bb; o += 64)
            _mm_prefetch((const char *)(here + PF_FAR * AE_LANES * rs + o), _MM_HINT_T1);
    else
        for (int o = 0; o < AE_LANES * bb; o += 64)
            _mm_prefetch((const char *)(here + PF_NEAR * AE_LANES * rs + o), _MM_HINT_T0);
}

/* A row's running sum after one more block with integer product f (as float), code sum qs and scale dx: d_x (d_w
 * P + m_w S) for Q4_1, Q4_1's min folded in before the one multiply by d_x; the other types multiply by d_w d_x,
 * which does not wait for the products. */
static inline __attribute__((always_inline)) vflt add_block(int type, vflt d, vflt m, vflt f, float qs, float dx,
                                                             vflt acc) {
    if (type == AE_Q4_1) return F_FMA(F_FMA(m, F_SET(qs), F_MUL(d, f)), F_SET(dx), acc);
    return F_FMA(f, F_MUL(d, F_SET(dx)), acc);
}

/* AE_LANES weight rows (pointers rp, clamped to the last row past the matrix's end; rs their stride) against MB
 * rows of x (MB a literal at every call site: the accumulators unroll into registers; x's codes and scales
 * block-major with xr rows a block, see quantize_blocks). Each output is, in its own lane, the running sum over the
 * blocks in order of d_x (d_w P + m_w S) (see the file's head). A row's result depends on nothing but its own x,
 * whatever MB or strip it falls in. With `cache` UNPACK_KEEP the unpacked blocks
 * are also stored in `kept` (18 vectors a block) for later groups of rows of the same strip, which read them back
 * with KEPT. */
static inline __attribute__((always_inline)) void strip(int type, const uint8_t *const *rp, int64_t rs,
                                                         int64_t nb, int64_t xr, const int32_t *xp, const float *dx,
                                                         const float *qs, const int MB, float *y, int64_t ldy,
                                                         int lanes, vint *kept, const int cache) {
    vflt acc[GROUP];
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) acc[r] = F_ZERO();
    const int bb = block_bytes(type);
    for (int64_t b = 0; b < nb; b++) {
        vint T[8];
        vflt d, m;
        if (cache == KEPT) {
            d = (vflt)kept[b * 18 + 16];
            m = (vflt)kept[b * 18 + 17];
        } else {
            fetch_ahead(rp, rs, b, bb, MB);
            transpose_block(type, rp, b * bb, T);
            load_scales(rp, b * bb, &d, &m);
            if (cache == UNPACK_KEEP) {
                kept[b * 18 + 16] = (vint)d;
                kept[b * 18 + 17] = (vint)m;
            }
        }
        /* one or two rows: two integer chains each, or a lone row would wait on every product's latency */
        const int chains = MB <= 2 ? 2 : 1;
        vint p[GROUP][2];
#pragma GCC unroll 8
        for (int r = 0; r < MB; r++) p[r][0] = p[r][1] = V_ZERO();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            vint W[4];
            if (cache == KEPT) {
#pragma GCC unroll 4
                for (int s = 0; s < 4; s++) W[s] = kept[b * 18 + 4 * c + s];
            } else {
                unpack_quarter(type, T, c, W);
                if (cache == UNPACK_KEEP)
#pragma GCC unroll 4
                    for (int s = 0; s < 4; s++) kept[b * 18 + 4 * c + s] = W[s];
            }
#pragma GCC unroll 4
            for (int s = 0; s < 4; s++)
#pragma GCC unroll 8
                for (int r = 0; r < MB; r++) {
                    const int v = 4 * c + s, k = chains == 2 ? v & 1 : 0;
                    p[r][k] = V_DOT(p[r][k], W[s], V_SET32(xp[(b * xr + r) * 16 + v]));
                }
        }
#pragma GCC unroll 8
        for (int r = 0; r < MB; r++)
            acc[r] = add_block(type, d, m, V_CVT(chains == 2 ? V_ADD32(p[r][0], p[r][1]) : p[r][0]),
                               qs[b * xr + r], dx[b * xr + r], acc[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) store_lanes(y + r * ldy, acc[r], lanes);
}

#if AE_LANES == 8
/* strip for 2..8 rows of x with AVX2's 16 vector registers: the block's codes are unpacked once into `stage` (or
 * `kept`) and read back from L1 as each is used, so that the rows' integer accumulators, one code vector and a
 * broadcast are what is live in the products. strip itself (8 rows' accumulators, the quarter's codes and the
 * transposed block live) had gcc spill ~116 vectors a block on a Zen 3: 8 rows, one core, weights in L2, 8.6-13.9 ->
 * 6.1-8.3 ns per block and row of x; SmolLM2's 30 layers' products on 2 threads 26-30 -> 14-17 ms. 2..4 rows take
 * one pass with 4 accumulators; 5..8 rows one pass with 8 (the float sums then live on the stack, one load and store
 * a block and row), each code vector pinned to a register: in two passes of 4 rows gcc kept the unpacked block on
 * the stack as the memory operand of every product, two loads a product (30 layers' products on 2 threads,
 * interleaved builds: 8 rows 20.8 -> 20.1 ms, 5 rows 10.2 -> 9.9; 2 rows, formerly through strip, 8.2 -> 6.9).
 * Same arithmetic per lane and block as strip: bit-identical results. */
static inline __attribute__((always_inline)) void strip_narrow(int type, const uint8_t *const *rp, int64_t rs,
                                                                int64_t nb, int64_t xr, const int32_t *xp,
                                                                const float *dx, const float *qs, const int MB,
                                                                float *y, int64_t ldy, int lanes, vint *kept,
                                                                const int cache) {
    vflt acc[GROUP];
    vint stage[18] __attribute__((aligned(32)));
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) acc[r] = F_ZERO();
    const int bb = block_bytes(type);
    for (int64_t b = 0; b < nb; b++) {
        const vint *wb; /* the block's 16 code vectors, then d and m (kept is NULL for a decode group) */
        if (cache == KEPT) {
            wb = kept + b * 18;
        } else {
            fetch_ahead(rp, rs, b, bb, MB);
            vint T[8];
            vflt d, m;
            transpose_block(type, rp, b * bb, T);
            load_scales(rp, b * bb, &d, &m);
            vint *out = cache == UNPACK_KEEP ? kept + b * 18 : stage;
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) unpack_quarter(type, T, c, out + 4 * c);
            out[16] = (vint)d;
            out[17] = (vint)m;
            wb = out;
        }
        const vflt d = (vflt)wb[16], m = (vflt)wb[17];
        /* one pass over the block for all rows: 4 accumulators for up to 4 rows, else 8 (see the comment above) */
        const int G = MB > 4 ? 8 : 4;
        vint p[8];
#pragma GCC unroll 8
        for (int r = 0; r < G; r++) p[r] = V_ZERO();
#pragma GCC unroll 16
        for (int v = 0; v < 16; v++) {
            vint w = wb[v];
            /* no code: w in a register (for 8 rows gcc spilled each unpacked vector and read it back as a memory
             * operand of every product: two loads a product) */
            if (G == 8) __asm__("" : "+x"(w));
#pragma GCC unroll 8
            for (int r = 0; r < G; r++)
                if (r < MB) p[r] = V_DOT(p[r], w, V_SET32(xp[(b * xr + r) * 16 + v]));
            /* no code: keeps gcc from computing all the block's products ahead of their sums (spilled) */
            if (G == 8)
                __asm__("" : "+x"(p[0]), "+x"(p[1]), "+x"(p[2]), "+x"(p[3]), "+x"(p[4]), "+x"(p[5]), "+x"(p[6]),
                        "+x"(p[7]));
            else
                __asm__("" : "+x"(p[0]), "+x"(p[1]), "+x"(p[2]), "+x"(p[3]));
        }
#pragma GCC unroll 8
        for (int r = 0; r < MB; r++)
            acc[r] = add_block(type, d, m, V_CVT(p[r]), qs[b * xr + r], dx[b * xr + r], acc[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MB; r++) store_lanes(y + r * ldy, acc[r], lanes);
}
/* AVX2 runs 2 or more rows of x through strip_narrow */
#define STRIP(type, rp, rs, nb, xr, xp, dx, qs, MB, y, ldy, lanes, kept, cache)                                      \
    ((MB) > 1 ? strip_narrow(type, rp, rs, nb, xr, xp, dx, qs, MB, y, ldy, lanes, kept, cache)                    \
              : strip(type, rp, rs, nb, xr, xp, dx, qs, MB, y, ldy, lanes, kept, cache))
#else
#define STRIP strip
#endif

/* One group of 1..GROUP rows of x through a strip: the row count made a literal for strip. */
static inline __attribute__((always_inline)) void group(int type, const uint8_t *const *rp, int64_t rs,
                                                         int64_t nb, int64_t xr, const int32_t *xp, const float *dx,
                                                         const float *qs, int64_t rows, float *y, int64_t ldy,
                                                         int lanes, vint *kept, const int cache) {
    switch (rows) {
    case 8: STRIP(type, rp, rs, nb, xr, xp, dx, qs, 8, y, ldy, lanes, kept, cache); break;
    case 7: STRIP(type, rp, rs, nb, xr, xp, dx, qs, 7, y, ldy, lanes, kept, cache); break;
    case 6: STRIP(type, rp, rs, nb, xr, xp, dx, qs, 6, y, ldy, lanes, kept, cache); break;
    case 5: STRIP(type, rp, rs, nb, xr, xp, dx, qs, 5, y, ldy, lanes, kept, cache); break;
    case 4: STRIP(type, rp, rs, nb, xr, xp, dx, qs, 4, y, ldy, lanes, kept, cache); break;
    case 3: STRIP(type, rp, rs, nb, xr, xp, dx, qs, 3, y, ldy, lanes, kept, cache); break;
    case 2: STRIP(type, rp, rs, nb, xr, xp, dx, qs, 2, y, ldy, lanes, kept, cache); break;
    default: STRIP(type, rp, rs, nb, xr, xp, dx, qs, 1, y, ldy, lanes, kept, cache); break;
    }
}

/* The strip of weight rows n0.. against all m rows of a chunk of x (paired codes xp, scales dx, code sums qs:
 * block-major, see quantize_blocks), into y. More than GROUP rows (a prompt's chunk) unpack the strip once into
 * `kept` when the thread has one. */
static inline __attribute__((always_inline)) void strip_all_x(int type, const uint8_t *w, int64_t n, int64_t rs,
                                                               int64_t nb, int64_t n0, const int32_t *xp,
                                                               const float *dx, const float *qs, int64_t m,
                                                               float *y, int64_t ldy, vint *kept) {
    const uint8_t *rp[AE_LANES];
    const int lanes = (int)(n - n0 < AE_LANES ? n - n0 : AE_LANES);
    for (int i = 0; i < AE_LANES; i++) {
        const int row = i < lanes ? i : lanes - 1;
        rp[i] = w + (n0 + row) * rs;
    }
    const int keep = m > GROUP && kept != NULL;
    for (int64_t r0 = 0; r0 < m; r0 += GROUP) {
        const int64_t rows = m - r0 < GROUP ? m - r0 : GROUP;
        const int32_t *x = xp + r0 * 16;
        const float *d = dx + r0, *s = qs + r0;
        float *o = y + r0 * ldy + n0;
        if (!keep) group(type, rp, rs, nb, m, x, d, s, rows, o, ldy, lanes, kept, UNPACK);
        else if (r0 == 0) group(type, rp, rs, nb, m, x, d, s, rows, o, ldy, lanes, kept, UNPACK_KEEP);
        else group(type, rp, rs, nb, m, x, d, s, rows, o, ldy, lanes, kept, KEPT);
    }
}

/* Memory a later parallel loop will read, to be brought into the cache of the core that reads it while a product
 * runs (the decode layer: each attention item's keys and values while the QKV product computes). Item i is the
 * byte ranges [a[i], a[i] + bytes[i]) and [b[i], b[i] + bytes[i]); thread t of a team of `team` reads the items
 * split_range gives it. */
typedef struct {
    const char *const *a, *const *b;
    const int64_t *bytes;
    int64_t items;
    int team;
} ae_prefetch;

/* Items [*lo, *hi) of n for thread t of a team of size team: contiguous runs, the first n % team one longer. */
static inline void split_range(int64_t n, int t, int team, int64_t *lo, int64_t *hi) {
    const int64_t base = n / team, extra = n % team;
    *lo = t * base + (t < extra ? t : extra);
    *hi = *lo + base + (t < extra);
}

/* One thread's walk through its prefetch items, `quota` cache lines at a time. */
typedef struct {
    const ae_prefetch *pf;
    int64_t item, end, offset, quota;
} pf_cursor;

static inline void pf_start(pf_cursor *c, const ae_prefetch *pf, int t, int64_t steps) {
    c->pf = pf;
    c->item = c->end = c->offset = c->quota = 0;
    if (!pf || t >= pf->team) return;
    split_range(pf->items, t, pf->team, &c->item, &c->end);
    int64_t lines = 0;
    for (int64_t i = c->item; i < c->end; i++) lines += 2 * ((pf->bytes[i] + 63) / 64);
    if (steps < 1) steps = 1;
    c->quota = (lines + steps - 1) / steps + 1;
}

/* The next `quota` lines (a few per strip: all at once would stall the thread on its miss buffers), into L2
 * (T1): into L1 they evicted the strips' own prefetched weights (8-row SmolLM2 step, C timers interleaved: QKV
 * 1.39-1.45 -> 1.31-1.38 ms, attention 0.89-0.90 -> 0.73-0.75) */
static inline void pf_step(pf_cursor *c) {
    for (int64_t left = c->quota; left > 0 && c->item < c->end; left -= 2) {
        const ae_prefetch *pf = c->pf;
        _mm_prefetch(pf->a[c->item] + c->offset, _MM_HINT_T1);
        _mm_prefetch(pf->b[c->item] + c->offset, _MM_HINT_T1);
        c->offset += 64;
        if (c->offset >= pf->bytes[c->item]) {
            c->item++;
            c->offset = 0;
        }
    }
}

/* y[m, n] (leading dimension ldy) = x[m, k] (leading dimension ldx) times W[n, k]^T, fetching pf's memory (or
 * NULL) a few lines per strip on the way. Returns 0, or -1 when the scratch allocation fails, -2 for an unknown
 * type or k not a multiple of 32. */
static int gguf_matmul(int type, const uint8_t *w, int64_t n, int64_t k, int64_t row_stride, const float *x,
                       int64_t m, int64_t ldx, float *y, int64_t ldy, int threads, const ae_prefetch *pf) {
    if (block_bytes(type) == 0 || k % QK) return -2;
    const int64_t nb = k / QK;
    int32_t *xp = (int32_t *)malloc(sizeof(int32_t) * (size_t)(m * nb * 16));
    float *dx = (float *)malloc(sizeof(float) * (size_t)(m * nb) * 2);
    if (!dx || !xp) {
        free(dx);
        free(xp);
        return -1;
    }
    float *qs = dx + m * nb;
    if (threads < 1) threads = 1;
    if (n * m < 64) threads = 1; /* a thread team costs more than a handful of dot products */
    const int64_t strips = (n + AE_LANES - 1) / AE_LANES;
    for (int64_t c0 = 0; c0 < m; c0 += CHUNK) {
        const int64_t cm = m - c0 < CHUNK ? m - c0 : CHUNK;
        int32_t *cx = xp + c0 * nb * 16;
        float *cd = dx + c0 * nb, *cs = qs + c0 * nb;
        const int split = cm >= 4; /* the threads share a batch's quantization; one row: no barrier for it */
        if (!split) quantize_blocks(x + c0 * ldx, ldx, cm, 0, nb, cx, cd, cs);
        float *cy = y + c0 * ldy;
#pragma omp parallel num_threads(threads)
        {
            /* the chunk's rows block-major (see quantize_blocks), split between the threads from 4 rows: serial, the
             * quantization of a decode batch's 8 rows took ~3% of a step while the other thread waited. Each thread
             * takes a run of blocks of every row, not a share of the rows: a block's scales and sums of all rows
             * share a cache line, which two threads writing alternately passed back and forth (8 rows, k 1536: the
             * quantization took 17-19 us of a 138 us product, 2.4 us alone) */
            if (split) {
                int64_t lo, hi;
                split_range(nb, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
                quantize_blocks(x + c0 * ldx, ldx, cm, lo, hi, cx, cd, cs);
#pragma omp barrier
            }
            /* a prompt's strips are unpacked once per chunk into this thread's scratch (without it, once per group) */
            vint *kept = cm > GROUP ? (vint *)aligned_alloc(64, sizeof(vint) * 18 * (size_t)nb) : NULL;
            pf_cursor cursor; /* spread over the strips this thread will run (about strips / team of them) */
            pf_start(&cursor, c0 == 0 ? pf : NULL, omp_get_thread_num(), strips / omp_get_num_threads());
            /* guided: each thread first takes a long contiguous run of strips (half of what is left), then shorter
             * ones down to STRIP_CHUNK: long runs are what the prefetch streams; the short pieces at the end let one
             * thread finish for the other when a server's HTTP or tokenizer thread preempts it */
#pragma omp for schedule(guided, STRIP_CHUNK)
            for (int64_t t = 0; t < strips; t++) {
                const int64_t n0 = t * AE_LANES;
                switch (type) {
                case AE_Q4_1: strip_all_x(AE_Q4_1, w, n, row_stride, nb, n0, cx, cd, cs, cm, cy, ldy, kept); break;
                case AE_Q4_0: strip_all_x(AE_Q4_0, w, n, row_stride, nb, n0, cx, cd, cs, cm, cy, ldy, kept); break;
                default: strip_all_x(AE_Q8_0, w, n, row_stride, nb, n0, cx, cd, cs, cm, cy, ldy, kept); break;
                }
                pf_step(&cursor);
            }
            free(kept);
        }
    }
    free(xp);
    free(dx);
    return 0;
}

/* y[m, n] (leading dimension ldy) = x[m, k] (leading dimension ldx) times W[n, k]^T (see gguf_matmul). */
int ae_gguf_matmul(int type, const uint8_t *w, int64_t n, int64_t k, int64_t row_stride, const float *x,
                   int64_t m, int64_t ldx, float *y, int64_t ldy, int threads) {
    return gguf_matmul(type, w, n, k, row_stride, x, m, ldx, y, ldy, threads, NULL);
}

/* Reads n bytes (n a multiple of 128) with 256-bit loads across threads and returns their 64-bit lane sum: the
 * memory read bandwidth the block kernels can reach, for the decode bound the benchmarks report. */
int64_t ae_read_bytes(const uint8_t *p, int64_t n, int threads) {
    int64_t total = 0;
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : total)
    for (int64_t i = 0; i < n; i += 4096) {
        __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
        const int64_t end = i + 4096 < n ? i + 4096 : n;
        for (int64_t j = i; j < end; j += 64) {
            a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(p + j)));
            b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *)(p + j + 32)));
        }
        a = _mm256_add_epi64(a, b);
        total += _mm256_extract_epi64(a, 0) + _mm256_extract_epi64(a, 1) + _mm256_extract_epi64(a, 2) +
                 _mm256_extract_epi64(a, 3);
    }
    return total;
}
