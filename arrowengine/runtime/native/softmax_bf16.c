/* In-place row softmax of a contiguous bf16 matrix, AVX-512F/BW/VL, threads through OpenMP.
 *
 * Built on first use by arrowengine/runtime/native/__init__.py (no torch headers: plain C called through
 * ctypes). Each row: max, then exp(x - max) into a float32 scratch row and its sum, then the scaled row
 * rounded to bf16 (round to nearest even, as torch rounds). exp is 2^(x log2 e): the integer part goes into
 * the exponent (vscalefps) and exp2_poly.h's polynomial covers the fraction (relative error ~2e-7, far below
 * bf16's 2^-8 output step). Faster than torch.softmax on Whisper's attention blocks (docs/benchmarks/).
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "exp2_poly.h"

static inline __m512 exp_nonpositive(__m512 x) {
    /* below -87.3, exp underflows float32's normal range: return exactly 0 like expf */
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
    __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(AE_LOG2E));
    __m512 whole = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, whole);
    __m512 p = AE_EXP2_FRACTION(_mm512_fmadd_ps, _mm512_set1_ps, f);
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, whole));
}

static inline __m512 load_bf16(const uint16_t *src, __mmask16 lanes) {
    __m256i raw = _mm256_maskz_loadu_epi16(lanes, src);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

static inline void store_bf16(uint16_t *dst, __m512 v, __mmask16 lanes) {
    __m512i bits = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    _mm256_mask_storeu_epi16(dst, lanes, _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
}

static inline __mmask16 lanes_at(int64_t col, int64_t cols) {
    int64_t left = cols - col;
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

static void softmax_row(uint16_t *row, int64_t cols, float *scratch) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t c = 0; c < cols; c += 16) {
        __mmask16 lanes = lanes_at(c, cols);
        vmax = _mm512_mask_max_ps(vmax, lanes, vmax, load_bf16(row + c, lanes));
    }
    __m512 peak = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 16) {
        __mmask16 lanes = lanes_at(c, cols);
        __m512 e = _mm512_maskz_mov_ps(lanes, exp_nonpositive(_mm512_sub_ps(load_bf16(row + c, lanes), peak)));
        _mm512_mask_storeu_ps(scratch + c, lanes, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
    for (int64_t c = 0; c < cols; c += 16) {
        __mmask16 lanes = lanes_at(c, cols);
        store_bf16(row + c, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, scratch + c), inverse), lanes);
    }
}

/* Returns 0, or -1 (data untouched) when the float32 scratch rows cannot be allocated. */
int arrowengine_softmax_bf16(uint16_t *data, int64_t rows, int64_t cols, int threads) {
    if (threads < 1) {
        threads = 1;
    }
    float *scratch = (float *)malloc((size_t)threads * (size_t)cols * sizeof(float));
    if (scratch == NULL) {
        return -1;
    }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        softmax_row(data + r * cols, cols, scratch + (size_t)omp_get_thread_num() * (size_t)cols);
    }
    free(scratch);
    return 0;
}
