/* Matrix products over GGUF quantized blocks (Q8_0, Q4_0, Q4_1) read in place, AVX2 + FMA + F16C, OpenMP.
 *
 * Built on first use by arrowengine/runtime/native/gguf.py and called through ctypes (no torch headers).
 * A weight matrix is N rows of K/32 blocks each, exactly as llama.cpp stores them:
 *   Q8_0: fp16 d, 32 x int8 q            value = q * d                (34 bytes)
 *   Q4_0: fp16 d, 16 bytes of nibbles     value = (q - 8) * d          (18 bytes)
 *   Q4_1: fp16 d, fp16 m, 16 bytes        value = q * d + m            (20 bytes)
 * (nibble byte j holds element j in its low half and element j + 16 in its high half).
 *
 * y = x W^T: each row of x is first quantized to int16 per block of 32 (scale amax / 32767, round to nearest:
 * llama.cpp's Q8 activation blocks with 8 more bits), then every block product is an integer dot product
 * (vpmaddwd) scaled once by d_w * d_x. Q4_1's min adds m * d_x * sum(q_x) per block.
 * Tiles of 4 rows of W are split across OpenMP threads. A batch of 4 or more rows of x goes through tile_group:
 * each weight block is unpacked once for 8 (or 4) rows of x, about half the cost per row of a lone row at 8 rows
 * (the unpacking and the scalar scale arithmetic cost as much as the products). One or two rows go through tile
 * (4 x 2 independent accumulators). Both read the weights from memory once per call and round identically.
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

enum { AE_Q8_0 = 8, AE_Q4_0 = 2, AE_Q4_1 = 3 }; /* GGML type ids */
#define QK 32
#define GROUP 8 /* rows of x in groups of 8 (then one of 4) go through tile_group; the rest through tile */
#define CHUNK 64  /* rows of x per pass over the weights (a multiple of GROUP) */
#ifndef PREFETCH_TILES /* -DPREFETCH_TILES=n to try another distance */
#define PREFETCH_TILES 1 /* tiles ahead to prefetch (1 measured best of 0, 1, 2, 4 on SmolLM2's shapes) */
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

/* One row of x (k floats) -> int16 codes, per-block scale d (amax / 32767) and d * sum(codes) (for Q4_1's min).
 * int16 keeps the rounding of the activations 256x finer than llama.cpp's int8 blocks, at almost the same cost
 * (vpmaddwd takes 16 products per instruction, vpmaddubsw 32, but no float conversion per element is needed),
 * so the products stay within float rounding of the dequantized float reference. */
static void quantize_row(const float *x, int64_t k, int16_t *q, float *d, float *dsum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < k / QK; b++) {
        const float *xb = x + b * QK;
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
        /* pack int32 -> int16 in order (packs interleave 128-bit lanes: undo with a 64-bit permute) */
        const __m256i lo = _mm256_permute4x64_epi64(_mm256_packs_epi32(i32[0], i32[1]), 0xD8);
        const __m256i hi = _mm256_permute4x64_epi64(_mm256_packs_epi32(i32[2], i32[3]), 0xD8);
        _mm256_storeu_si256((__m256i *)(q + b * QK), lo);
        _mm256_storeu_si256((__m256i *)(q + b * QK + 16), hi);
        d[b] = scale;
        dsum[b] = scale * (float)_mm_cvtsi128_si32(s);
    }
}

/* The 32 weight codes of one block as two vectors of 16 int16 (elements 0..15 and 16..31): unsigned nibbles for
 * Q4_1, nibbles minus 8 for Q4_0, the signed bytes of Q8_0. */
static inline __attribute__((always_inline)) void unpack16(int type, const uint8_t *blk, __m256i *a,
                                                           __m256i *b) {
    if (type == AE_Q8_0) {
        *a = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 2)));
        *b = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 18)));
        return;
    }
    /* the 16 bytes widened to int16 once (a load folded into the widening), then each lane's low nibble is an
     * element of the first half and its high nibble (the byte >> 4, never above 15) one of the second: three
     * instructions where masking and shifting the bytes before widening them took six */
    const __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(blk + (type == AE_Q4_1 ? 4 : 2))));
    *a = _mm256_and_si256(bytes, _mm256_set1_epi16(0x0F));
    *b = _mm256_srli_epi16(bytes, 4);
    if (type == AE_Q4_0) {
        *a = _mm256_sub_epi16(*a, _mm256_set1_epi16(8));
        *b = _mm256_sub_epi16(*b, _mm256_set1_epi16(8));
    }
}

/* One tile: R consecutive weight rows (row stride rs) times MB rows of x, over all nb blocks. Every weight block
 * is unpacked once per tile and used for the MB rows of x; the R x MB accumulators are independent chains, so
 * the FMA latency hides behind each other. R and MB are compile-time constants at every call site (the loops
 * unroll and the accumulators live in registers). out[m * ldo + r]. */
static inline __attribute__((always_inline)) void tile(int type, const uint8_t *w, int64_t rs, int64_t nb,
                                                        const int16_t *qx, const float *dx, const float *sx,
                                                        int64_t kq, const int R, const int MB, float *out,
                                                        int64_t ldo) {
    __m256 acc[4][2];
    float mins[4][2];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MB; m++) {
            acc[r][m] = _mm256_setzero_ps();
            mins[r][m] = 0.0f;
        }
    const int bb = block_bytes(type);
    for (int64_t b = 0; b < nb; b++) {
        __m256i xa[2], xb[2];
        for (int m = 0; m < MB; m++) {
            xa[m] = _mm256_loadu_si256((const __m256i *)(qx + m * kq + b * QK));
            xb[m] = _mm256_loadu_si256((const __m256i *)(qx + m * kq + b * QK + 16));
        }
        for (int r = 0; r < R; r++) {
            const uint8_t *blk = w + r * rs + b * bb;
            const float d = half_to_float(blk);
            __m256i wa, wb;
            unpack16(type, blk, &wa, &wb);
            for (int m = 0; m < MB; m++) {
                const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(wa, xa[m]), _mm256_madd_epi16(wb, xb[m]));
                acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * dx[m * nb + b]), acc[r][m]);
                if (type == AE_Q4_1) mins[r][m] += half_to_float(blk + 2) * sx[m * nb + b];
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MB; m++) out[m * ldo + r] = hsum256(acc[r][m]) + mins[r][m];
}

/* Four weight rows against one row of x (a single-stream decode step's products): the tile above with its scalar
 * scale work done for the four rows at once. The fp16 scale (and Q4_1's min) of the four rows' blocks are converted
 * in one instruction and multiplied by (d_x, s_x) in one more, where the scalar tile converted, multiplied and
 * broadcast per row; that work cost as much as the products. Same roundings as tile (and tile_group), so results
 * are bit-identical. For Q8_0 / Q4_0 the odd lanes convert code bytes as if they were fp16 and are never read. */
static inline __attribute__((always_inline)) void tile4x1(int type, const uint8_t *w, int64_t rs, int64_t nb,
                                                           const int16_t *qx, const float *dx, const float *sx,
                                                           float *out) {
    __m256 acc[4];
    __m256 mins = _mm256_setzero_ps();
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    const int bb = block_bytes(type);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bb;
        int32_t h[4];
        for (int r = 0; r < 4; r++) memcpy(h + r, blk + r * rs, 4);
        const __m256 dm = _mm256_cvtph_ps(_mm_setr_epi32(h[0], h[1], h[2], h[3])); /* d0 m0 d1 m1 ... */
        const __m256 xs = _mm256_castpd_ps(_mm256_broadcastsd_pd(
            _mm_castps_pd(_mm_unpacklo_ps(_mm_load_ss(dx + b), _mm_load_ss(sx + b))))); /* dx sx dx sx ... */
        const __m256 prod = _mm256_mul_ps(dm, xs); /* d_r * d_x, m_r * s_x */
        if (type == AE_Q4_1) mins = _mm256_add_ps(mins, prod);
        const __m256i xa = _mm256_loadu_si256((const __m256i *)(qx + b * QK));
        const __m256i xb = _mm256_loadu_si256((const __m256i *)(qx + b * QK + 16));
        for (int r = 0; r < 4; r++) {
            __m256i wa, wb;
            unpack16(type, blk + r * rs, &wa, &wb);
            const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(wa, xa), _mm256_madd_epi16(wb, xb));
            const __m256 scale = _mm256_permutevar8x32_ps(prod, _mm256_set1_epi32(2 * r));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r]);
        }
    }
    float m8[8];
    _mm256_storeu_ps(m8, mins);
    for (int r = 0; r < 4; r++) out[r] = hsum256(acc[r]) + (type == AE_Q4_1 ? m8[2 * r + 1] : 0.0f);
}

/* One weight row against a group of MB (4 or 8) rows of x: the block is unpacked once for all MB rows, which is
 * what makes a decode batch cheaper per row than MB single-row products (the single-row tile spends about as much
 * on unpacking and on the scalar scale arithmetic as on the products). Arithmetic per (row of x, block) is the
 * single-row tile's exactly -- the scale d_w * d_x rounded once in float, Q4_1's min term m_w * s_x summed in the
 * same order -- so a row gets bit-identical results in a batch and alone. dxT and sxT hold the group's activation
 * scales block-major ([nb][8]), so the min terms of all MB rows are one vector multiply-add per block. (Codes
 * copied block-major too, to spare the compiler's spilled row pointers, measured no faster.) */
static inline __attribute__((always_inline)) void tile_group(int type, const uint8_t *w, int64_t nb,
                                                              const int16_t *qx, const float *dxT,
                                                              const float *sxT, int64_t kq, const int MB,
                                                              float *out, int64_t ldo) {
    __m256 acc[8];
    __m256 mins = _mm256_setzero_ps();
    for (int m = 0; m < MB; m++) acc[m] = _mm256_setzero_ps();
    const int bb = block_bytes(type);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bb;
        const __m256 d = _mm256_set1_ps(half_to_float(blk));
        __m256i wa, wb;
        unpack16(type, blk, &wa, &wb);
        if (type == AE_Q4_1) /* separate multiply and add: -ffp-contract=off, as in the scalar tile */
            mins = _mm256_add_ps(mins, _mm256_mul_ps(_mm256_set1_ps(half_to_float(blk + 2)),
                                                     _mm256_loadu_ps(sxT + b * 8)));
        const int16_t *xq = qx + b * QK;
        for (int m = 0; m < MB; m++) {
            const __m256i p = _mm256_add_epi32(
                _mm256_madd_epi16(wa, _mm256_loadu_si256((const __m256i *)(xq + m * kq))),
                _mm256_madd_epi16(wb, _mm256_loadu_si256((const __m256i *)(xq + m * kq + 16))));
            const __m256 scale = _mm256_mul_ps(d, _mm256_broadcast_ss(dxT + b * 8 + m));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[m]);
        }
    }
    float m8[8];
    _mm256_storeu_ps(m8, mins);
    for (int m = 0; m < MB; m++) out[m * ldo] = hsum256(acc[m]) + m8[m];
}

/* Weight rows j0..j0+R (R <= 4) against all m rows of x, written to y (inlined per block type). */
static inline __attribute__((always_inline)) void rows_all_x(int type, const uint8_t *w, int64_t rs, int64_t nb,
                                                              int64_t j0, int R, const int16_t *qx,
                                                              const float *dx, const float *sx, const float *dxT,
                                                              const float *sxT, int64_t k, int64_t m, float *y,
                                                              int64_t ldy) {
    const uint8_t *wj = w + j0 * rs;
    /* a tile's rows are short (a few cache lines each) and read as R interleaved streams, too short for the
     * hardware prefetcher to pick up: ask for the next tile's bytes while this one computes (prefetches never
     * fault, so running past the matrix's end is harmless) */
    for (int64_t off = 0; PREFETCH_TILES > 0 && off < R * rs; off += 64)
        _mm_prefetch((const char *)(wj + PREFETCH_TILES * 4 * rs + off), _MM_HINT_T0);
    int64_t r0 = 0;
    for (; r0 + 4 <= m; r0 += r0 + GROUP <= m ? GROUP : 4) {
        const int64_t g = r0 / GROUP; /* a group of 4 only ever comes last */
        const float *dT = dxT + g * nb * GROUP, *sT = sxT + g * nb * GROUP;
        for (int r = 0; r < R; r++) {
            if (r0 + GROUP <= m)
                tile_group(type, wj + r * rs, nb, qx + r0 * k, dT, sT, k, GROUP, y + r0 * ldy + j0 + r, ldy);
            else
                tile_group(type, wj + r * rs, nb, qx + r0 * k, dT, sT, k, 4, y + r0 * ldy + j0 + r, ldy);
        }
    }
    for (; r0 + 2 <= m; r0 += 2) {
        const int16_t *q = qx + r0 * k;
        const float *d = dx + r0 * nb, *s = sx + r0 * nb;
        float *o = y + r0 * ldy + j0;
        if (R == 4) tile(type, wj, rs, nb, q, d, s, k, 4, 2, o, ldy);
        else if (R == 3) tile(type, wj, rs, nb, q, d, s, k, 3, 2, o, ldy);
        else if (R == 2) tile(type, wj, rs, nb, q, d, s, k, 2, 2, o, ldy);
        else tile(type, wj, rs, nb, q, d, s, k, 1, 2, o, ldy);
    }
    if (r0 < m) {
        const int16_t *q = qx + r0 * k;
        const float *d = dx + r0 * nb, *s = sx + r0 * nb;
        float *o = y + r0 * ldy + j0;
        if (R == 4) tile4x1(type, wj, rs, nb, q, d, s, o);
        else if (R == 3) tile(type, wj, rs, nb, q, d, s, k, 3, 1, o, ldy);
        else if (R == 2) tile(type, wj, rs, nb, q, d, s, k, 2, 1, o, ldy);
        else tile(type, wj, rs, nb, q, d, s, k, 1, 1, o, ldy);
    }
}

/* y[m, n] (leading dimension ldy) = x[m, k] (leading dimension ldx) times W[n, k]^T. Returns 0, or -1 when the
 * scratch allocation fails, -2 for an unknown type or k not a multiple of 32. */
int ae_gguf_matmul(int type, const uint8_t *w, int64_t n, int64_t k, int64_t row_stride, const float *x,
                   int64_t m, int64_t ldx, float *y, int64_t ldy, int threads) {
    if (block_bytes(type) == 0 || k % QK) return -2;
    const int64_t nb = k / QK;
    int16_t *qx = (int16_t *)malloc(sizeof(int16_t) * (size_t)(m * k));
    float *dx = (float *)malloc(sizeof(float) * (size_t)(m * nb) * 2);
    if (!qx || !dx) {
        free(qx);
        free(dx);
        return -1;
    }
    float *sx = dx + m * nb;
    for (int64_t r = 0; r < m; r++) quantize_row(x + r * ldx, k, qx + r * k, dx + r * nb, sx + r * nb);
    /* block-major copies of the scales for tile_group: [group][block][8 rows] */
    const int64_t groups = m >= 4 ? (m + GROUP - 1) / GROUP : 0;
    float *dxT = groups ? (float *)calloc((size_t)(groups * nb * GROUP * 2), sizeof(float)) : NULL;
    if (groups && !dxT) {
        free(qx);
        free(dx);
        return -1;
    }
    float *sxT = dxT + groups * nb * GROUP;
    for (int64_t r = 0; r < groups * GROUP && r < m; r++)
        for (int64_t b = 0; b < nb; b++) {
            const int64_t at = ((r / GROUP) * nb + b) * GROUP + r % GROUP;
            dxT[at] = dx[r * nb + b];
            sxT[at] = sx[r * nb + b];
        }
    if (threads < 1) threads = 1;
    if (n * m < 64) threads = 1; /* a thread team costs more than a handful of dot products */
    const int64_t tiles = (n + 3) / 4;
    /* a long x (a prompt) in chunks of CHUNK rows: every weight tile walks all rows of the chunk, which stay in the
     * core's L2 (64 rows of int16 codes are 72-192 KiB for k = 576-1536), where the whole of a 512-row prompt would
     * stream from L3 once per tile */
    for (int64_t c0 = 0; c0 < m; c0 += CHUNK) {
        const int64_t cm = m - c0 < CHUNK ? m - c0 : CHUNK;
        const int16_t *cq = qx + c0 * k;
        const float *cd = dx + c0 * nb, *cs = sx + c0 * nb;
        const float *cdT = dxT ? dxT + c0 * nb : NULL, *csT = sxT ? sxT + c0 * nb : NULL;
        float *cy = y + c0 * ldy;
        /* guided: each thread first takes a long contiguous run of rows (half of what is left), then shorter ones
         * down to 16 tiles. Long runs are what the hardware prefetchers stream well: with chunks of 8 tiles the
         * threads took turns over 11 KiB pieces and a one-row decode step's products read 11.5 GB/s where this
         * reads 21 (SmolLM2's 96 MB of matrices in step order, 2 threads, AVX-512 EPYC: one row 8.4 -> 4.5 ms, 8 rows
         * 18.2 -> 16.4 ms). The short pieces at the end still let
         * one thread finish for the other when a server's HTTP or tokenizer thread preempts it (a static split
         * would make the whole product wait for the preempted half). */
#pragma omp parallel for schedule(guided, 16) num_threads(threads)
        for (int64_t t = 0; t < tiles; t++) {
            const int64_t j0 = t * 4;
            const int R = (int)(n - j0 < 4 ? n - j0 : 4);
            switch (type) { /* literal types: each call site is specialised for its block layout */
            case AE_Q4_1: rows_all_x(AE_Q4_1, w, row_stride, nb, j0, R, cq, cd, cs, cdT, csT, k, cm, cy, ldy); break;
            case AE_Q4_0: rows_all_x(AE_Q4_0, w, row_stride, nb, j0, R, cq, cd, cs, cdT, csT, k, cm, cy, ldy); break;
            default: rows_all_x(AE_Q8_0, w, row_stride, nb, j0, R, cq, cd, cs, cdT, csT, k, cm, cy, ldy); break;
            }
        }
    }
    free(qx);
    free(dx);
    free(dxT);
    return 0;
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
