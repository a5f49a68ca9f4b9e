/* One Llama decoder layer for one new token per row, over GGUF blocks, in a single call (AVX2 + FMA, OpenMP).
 *
 * Included by blocks_lib.c after gguf_blocks.c, so the matrix products are the same code the per-projection path
 * runs. A decode step of a 135M model does ~1,000 small torch ops per token; here a layer is: RMSNorm -> fused
 * QKV (while it runs, each attention item's keys and values are fetched) -> per row and KV head: rotary on Q and
 * K, K/V appended to the cache (float32, or fp16 for 64-wide heads: see attend_group), grouped-query attention over
 * the cache (optional row mask) -> O + residual -> RMSNorm -> fused gate/up -> SiLU(gate) * up -> down + residual,
 * with scratch buffers from one allocation.
 *
 * Numerics follow the torch decode step: RMSNorm x * rsqrt(mean(x^2) + eps) * w in float32; rotary
 * x * cos + rotate_half(x) * sin; softmax with the running maximum subtracted; scale 1 / sqrt(head_dim).
 */

#include "exp2_poly.h"

typedef struct {
    int64_t batch, hidden, heads, kv_heads, head_dim, inter, slot, max_len;
    float eps;
    int threads;
    float *h;                 /* [batch, hidden], updated in place */
    const float *attn_norm;   /* [hidden] */
    const float *mlp_norm;    /* [hidden] */
    const float *cos, *sin;   /* [batch, head_dim]: the tables' rows at each row's position */
    void *kv;                 /* this layer's cache [batch, 2 * kv_heads, max_len, head_dim]: keys, then values
                               * (float32, or fp16 with kv_half) */
    const uint8_t *mask;      /* [batch, slot + 1] (1 = attend) or NULL: every slot up to `slot` */
    int qkv_type, o_type, gate_up_type, down_type;
    const uint8_t *qkv, *o, *gate_up, *down;
    int64_t qkv_stride, o_stride, gate_up_stride, down_stride;
    /* rows at their own lengths (continuous batching), both NULL for a shared slot: row b writes its K/V at
     * cache row kv_rows[b], slot slots[b], and attends slots 0..slots[b] (mask must then be NULL) */
    const int64_t *slots, *kv_rows;
    /* 1: the cache holds fp16 (IEEE half) keys and values, 0: float32. Half needs head_dim 64 and 1-4 query heads
     * per KV head (the grouped kernel's shapes; NativeBlockStep.half_cache chooses the dtype accordingly) */
    int kv_half;
} ae_layer_args;

static void rms_norm(const float *x, const float *w, int64_t n, float eps, float *out) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum256(acc);
    for (; i < n; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) out[i] = (x[i] * inv) * w[i];
}

/* RMSNorm of `rows` rows of n floats with weight w into out: the layer's two norms and, called from Python, the
 * decoder's final norm, so a native decode step runs no torch op between its layers and the lm_head (F.rms_norm
 * there took ~0.2 ms a step, most of it waking torch's own thread pool). Returns 0. */
int ae_rms_norm_rows(const float *x, const float *w, int64_t rows, int64_t n, float eps, float *out) {
    for (int64_t r = 0; r < rows; r++) rms_norm(x + r * n, w, n, eps, out + r * n);
    return 0;
}

static void rotate(float *x, const float *cos, const float *sin, int64_t dim) {
    const int64_t half = dim / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

static inline float dot(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum256(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* exp of 8 floats: 2^(x log2 e), the integer part put in the exponent bits and exp2_poly.h's polynomial for the
 * fraction (relative error ~2e-7 against expf). Below -87.3
 * it returns 0 (expf underflows there too), -inf and NaN included; above 88 it saturates at exp(88). A call of
 * libm's expf per element cost ~10 ns: 1.4 ms a token in a 512-token context's softmaxes and 0.4 ms per row in
 * SmolLM2's SiLU. */
static inline __m256 exp8(__m256 x) {
    const __m256 low = _mm256_set1_ps(-87.3f);
    const __m256 live = _mm256_cmp_ps(x, low, _CMP_GE_OQ);
    const __m256 t = _mm256_mul_ps(_mm256_min_ps(_mm256_max_ps(x, low), _mm256_set1_ps(88.0f)),
                                   _mm256_set1_ps(AE_LOG2E));
    const __m256 whole = _mm256_floor_ps(t);
    const __m256 f = _mm256_sub_ps(t, whole);
    const __m256 p = AE_EXP2_FRACTION(_mm256_fmadd_ps, _mm256_set1_ps, f);
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(whole), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), live);
}

/* hsum256 of a[0..3] at once, each summed in hsum256's order (halves, then lanes 0 + 2 and 1 + 3, then those
 * two): the 4 sums, bit for bit hsum256's, in 14 operations where four hsum256 take 24. */
static inline __m128 hsum4(const __m256 a[4]) {
    const __m256 h01 = _mm256_add_ps(_mm256_permute2f128_ps(a[0], a[1], 0x20),
                                     _mm256_permute2f128_ps(a[0], a[1], 0x31));
    const __m256 h23 = _mm256_add_ps(_mm256_permute2f128_ps(a[2], a[3], 0x20),
                                     _mm256_permute2f128_ps(a[2], a[3], 0x31));
    /* 128-bit lane 0: a0's 4 partial sums then a2's; lane 1: a1's then a3's */
    const __m256 pairs = _mm256_add_ps(_mm256_shuffle_ps(h01, h23, _MM_SHUFFLE(1, 0, 1, 0)),
                                       _mm256_shuffle_ps(h01, h23, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 sums = _mm256_add_ps(_mm256_shuffle_ps(pairs, pairs, _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm256_shuffle_ps(pairs, pairs, _MM_SHUFFLE(3, 1, 3, 1)));
    /* sums: lane 0 (a0, a2, a0, a2), lane 1 (a1, a3, a1, a3) */
    return _mm_unpacklo_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1));
}

/* Four keys' dot products with q, interleaved: each key's chain of FMAs is the one dot() runs (so the scores are
 * bit-identical to it), but four chains in flight hide the FMA latency a lone 64-element dot waits on. */
static inline void dot4(const float *q, const float *k, int64_t stride, int64_t n, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + i), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + stride + i), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 2 * stride + i), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 3 * stride + i), a3);
    }
    float s[4] = {hsum256(a0), hsum256(a1), hsum256(a2), hsum256(a3)};
    for (; i < n; i++)
        for (int j = 0; j < 4; j++) s[j] += q[i] * k[j * stride + i];
    for (int j = 0; j < 4; j++) out[j] = s[j];
}

/* out[HD] += p_t * v_t over the slots, in registers when HD is a compile-time 64 (SmolLM2, Llama-3.2-1B): through
 * memory, each slot's update waited on the previous slot's store. Same FMA per element in the same order. */
static inline __attribute__((always_inline)) void weigh_values(const float *values, int64_t stride, int64_t len,
                                                                const float *p, const int HD, float *out) {
    __m256 acc[8];
    for (int j = 0; j < HD / 8; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t t = 0; t < len; t++) {
        if (p[t] == 0.0f) continue;
        const __m256 pv = _mm256_set1_ps(p[t]);
        const float *v = values + t * stride;
        for (int j = 0; j < HD / 8; j++) acc[j] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 8 * j), acc[j]);
    }
    for (int j = 0; j < HD / 8; j++) _mm256_storeu_ps(out + 8 * j, acc[j]);
}

/* scores[0..len) = softmax(scores * scale) in place (masked slots -inf before the exp, so exactly 0 after). */
static void softmax_scores(float *scores, int64_t len, const uint8_t *mask, float scale) {
    const __m256 scale8 = _mm256_set1_ps(scale), minus_inf = _mm256_set1_ps(-INFINITY);
    __m256 top = minus_inf;
    int64_t t = 0;
    for (; t + 8 <= len; t += 8) {
        __m256 s = _mm256_mul_ps(_mm256_loadu_ps(scores + t), scale8);
        if (mask) { /* bytes 0 -> -inf */
            const __m256i m = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(mask + t)));
            s = _mm256_blendv_ps(minus_inf, s, _mm256_castsi256_ps(_mm256_cmpgt_epi32(m, _mm256_setzero_si256())));
        }
        _mm256_storeu_ps(scores + t, s);
        top = _mm256_max_ps(top, s);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    float mx = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    for (; t < len; t++) {
        const float s = (mask && !mask[t]) ? -INFINITY : scores[t] * scale;
        scores[t] = s;
        if (s > mx) mx = s;
    }
    __m256 sum = _mm256_setzero_ps();
    const __m256 peak = _mm256_set1_ps(mx);
    t = 0;
    for (; t + 8 <= len; t += 8) { /* masked scores are -inf: exp8 gives 0 */
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), peak));
        _mm256_storeu_ps(scores + t, e);
        sum = _mm256_add_ps(sum, e);
    }
    if (t < len) { /* the last partial 8 masked (only there: vmaskmovps is slow on AMD, see silu_mul) */
        const __m256i lanes = first_lanes(len - t);
        const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(scores + t, lanes), peak)),
                                       _mm256_castsi256_ps(lanes));
        _mm256_maskstore_ps(scores + t, lanes, e);
        sum = _mm256_add_ps(sum, e);
    }
    const float inv = 1.0f / hsum256(sum);
    const __m256 inv8 = _mm256_set1_ps(inv);
    for (t = 0; t + 8 <= len; t += 8) _mm256_storeu_ps(scores + t, _mm256_mul_ps(_mm256_loadu_ps(scores + t), inv8));
    for (; t < len; t++) scores[t] *= inv;
}

/* out[head_dim] = softmax(q . K^T * scale) V over slots 0..len of one row and KV head (scores: scratch). */
static void attend(const float *q, const float *keys, const float *values, int64_t stride, int64_t head_dim,
                   int64_t len, const uint8_t *mask, float scale, float *scores, float *out) {
    int64_t t = 0;
    for (; t + 4 <= len; t += 4) dot4(q, keys + t * stride, stride, head_dim, scores + t);
    for (; t < len; t++) scores[t] = dot(q, keys + t * stride, head_dim);
    softmax_scores(scores, len, mask, scale);
    if (head_dim == 64) {
        weigh_values(values, stride, len, scores, 64, out);
        return;
    }
    for (int64_t i = 0; i < head_dim; i++) out[i] = 0.0f;
    for (t = 0; t < len; t++) {
        const float p = scores[t];
        if (p == 0.0f) continue;
        const float *v = values + t * stride;
        int64_t i = 0;
        const __m256 pv = _mm256_set1_ps(p);
        for (; i + 8 <= head_dim; i += 8)
            _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
        for (; i < head_dim; i++) out[i] += p * v[i];
    }
}

#define KV_AHEAD 8 /* slots ahead to prefetch */
#ifdef __AVX512F__
#define VALUE_PASS 32 /* value elements per pass over the slots: REP x 4 accumulators fit 32 registers */
#else
#define VALUE_PASS 16 /* 16 registers: REP x 2 accumulators */
#endif

/* 8 cache elements from p (float32, or fp16 with HALF) as floats */
static inline __attribute__((always_inline)) __m256 load_kv(const void *p, int64_t i, const int HALF) {
    return HALF ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)))
                : _mm256_loadu_ps((const float *)p + i);
}

/* The REP (1..4) query heads that share one KV head, 64-dimensional (grouped-query attention: SmolLM2 has 3 query
 * heads per KV head, Llama-3.2-1B 4), over slots 0..len: each key and value vector is loaded once for the group
 * where attend loads it once per head, and slots KV_AHEAD ahead are prefetched. q, scores (REP x len) and out
 * are the group's heads back to back. Per head, every score is the FMA chain and sum dot4 computes, and every
 * output element the chain of weigh_values, in the same order: results are attend's bit for bit (a skipped p = 0
 * slot and an FMA with p = 0 differ only for non-finite values). With HALF the keys and values are fp16 and
 * widened exactly on load (the same arithmetic on the rounded values): half the bytes, and attention at decode
 * time waits on memory, not on the FMAs (a C driver over SmolLM2's cache after the weights had evicted it:
 * 8 rows x 64 slots 3.4 -> 2.4 ms, one row x 512 slots 2.6 -> 1.6 ms, one thread). */
static inline __attribute__((always_inline)) void attend_group(const float *q, const void *keys, const void *values,
                                                                int64_t len, const uint8_t *mask, float scale,
                                                                float *scores, float *out, const int REP,
                                                                const int HALF) {
    const int64_t es = HALF ? 2 : 4; /* bytes per element */
    int64_t t = 0;
    for (; t + 4 <= len; t += 4) { /* 4 slots at a time: 4 FMA chains per head in flight, one reduction for 4 */
        const int64_t k = t * 64;
        for (int64_t c = 0; c < 4 * 64 * es; c += 64)
            _mm_prefetch((const char *)keys + (k + KV_AHEAD * 64) * es + c, _MM_HINT_T0);
        __m256 acc[4][4];
        for (int j = 0; j < REP; j++)
            for (int u = 0; u < 4; u++) acc[j][u] = _mm256_setzero_ps();
        for (int i = 0; i < 64; i += 8) {
            __m256 kv[4];
            for (int u = 0; u < 4; u++) kv[u] = load_kv(keys, k + u * 64 + i, HALF);
            for (int j = 0; j < REP; j++) {
                const __m256 qv = _mm256_loadu_ps(q + j * 64 + i);
                for (int u = 0; u < 4; u++) acc[j][u] = _mm256_fmadd_ps(qv, kv[u], acc[j][u]);
            }
        }
        for (int j = 0; j < REP; j++) _mm_storeu_ps(scores + j * len + t, hsum4(acc[j]));
    }
    for (; t < len; t++) {
        const int64_t k = t * 64;
        for (int64_t c = 0; c < 64 * es; c += 64)
            _mm_prefetch((const char *)keys + (k + KV_AHEAD * 64) * es + c, _MM_HINT_T0);
        __m256 acc[4];
        for (int j = 0; j < REP; j++) acc[j] = _mm256_setzero_ps();
        for (int i = 0; i < 64; i += 8) {
            const __m256 kv = load_kv(keys, k + i, HALF);
            for (int j = 0; j < REP; j++) acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + j * 64 + i), kv, acc[j]);
        }
        for (int j = 0; j < REP; j++) scores[j * len + t] = hsum256(acc[j]);
    }
    for (int j = 0; j < REP; j++) softmax_scores(scores + j * len, len, mask, scale);
    for (int c0 = 0; c0 < 64; c0 += VALUE_PASS) {
        __m256 acc[4][VALUE_PASS / 8];
        for (int j = 0; j < REP; j++)
            for (int c = 0; c < VALUE_PASS / 8; c++) acc[j][c] = _mm256_setzero_ps();
        for (int64_t t = 0; t < len; t++) {
            const int64_t v = t * 64 + c0;
            for (int64_t c = 0; c < VALUE_PASS * es; c += 64)
                _mm_prefetch((const char *)values + (v + KV_AHEAD * 64) * es + c, _MM_HINT_T0);
            __m256 vv[VALUE_PASS / 8];
            for (int c = 0; c < VALUE_PASS / 8; c++) vv[c] = load_kv(values, v + 8 * c, HALF);
            for (int j = 0; j < REP; j++) {
                const float p = scores[j * len + t];
                if (p == 0.0f) continue;
                const __m256 pv = _mm256_set1_ps(p);
                for (int c = 0; c < VALUE_PASS / 8; c++) acc[j][c] = _mm256_fmadd_ps(pv, vv[c], acc[j][c]);
            }
        }
        for (int j = 0; j < REP; j++)
            for (int c = 0; c < VALUE_PASS / 8; c++) _mm256_storeu_ps(out + j * 64 + c0 + 8 * c, acc[j][c]);
    }
}

/* attend_group with the group size (1..4) made a literal. */
static inline __attribute__((always_inline)) void attend_group_of(const float *q, const void *keys,
                                                                   const void *values, int64_t len,
                                                                   const uint8_t *mask, float scale, float *scores,
                                                                   float *out, int64_t rep, const int HALF) {
    switch (rep) {
    case 1: attend_group(q, keys, values, len, mask, scale, scores, out, 1, HALF); return;
    case 2: attend_group(q, keys, values, len, mask, scale, scores, out, 2, HALF); return;
    case 3: attend_group(q, keys, values, len, mask, scale, scores, out, 3, HALF); return;
    default: attend_group(q, keys, values, len, mask, scale, scores, out, 4, HALF); return;
    }
}

/* One KV head's group of `rep` query heads over its cache slots (keys and values each a head's slots back to back,
 * see kv_cache.py; see attend_group; other shapes head by head through attend, float32 only: the layer refuses
 * an fp16 cache for them). */
static void attend_heads(const float *q, const void *keys, const void *values, int64_t head_dim, int64_t rep,
                         int64_t len, const uint8_t *mask, float scale, float *scores, float *out, int half) {
    if (head_dim == 64 && rep >= 1 && rep <= 4) {
        if (half) attend_group_of(q, keys, values, len, mask, scale, scores, out, rep, 1);
        else attend_group_of(q, keys, values, len, mask, scale, scores, out, rep, 0);
        return;
    }
    for (int64_t j = 0; j < rep; j++)
        attend(q + j * head_dim, (const float *)keys, (const float *)values, head_dim, head_dim, len, mask, scale,
               scores + j * len, out + j * head_dim);
}

/* Row b's key (or value) head vector src[head_dim] into the cache slot dst: a copy, or rounded to fp16 (nearest
 * even, as torch's .to(torch.float16) rounds the slots a prefill writes). */
static void store_kv(void *dst, const float *src, int64_t head_dim, int half) {
    if (!half) {
        memcpy(dst, src, sizeof(float) * (size_t)head_dim);
        return;
    }
    for (int64_t i = 0; i < head_dim; i += 8)
        _mm_storeu_si128((__m128i *)((uint16_t *)dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* silu(g) * u = g / (1 + exp(-g)) * u of 8 lanes */
static inline __m256 silu_times(__m256 g, __m256 u) {
    const __m256 e = exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f)));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

/* out[i] = silu(gate[i]) * up[i], 8 at a time; masked loads and stores only for a last partial 8 (vmaskmovps is
 * slow on AMD: masked throughout, SiLU took 0.21-0.36 ms of an 8-row SmolLM2 decode step, now 0.11-0.12) */
static void silu_mul(const float *gate, const float *up, int64_t n, float *out) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, silu_times(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        const __m256i lanes = first_lanes(n - i);
        _mm256_maskstore_ps(out + i, lanes,
                            silu_times(_mm256_maskload_ps(gate + i, lanes), _mm256_maskload_ps(up + i, lanes)));
    }
}

/* Returns 0, -1 when scratch memory cannot be allocated, -2 for bad block types or shapes. */
int ae_llama_layer(const ae_layer_args *a) {
    const int64_t B = a->batch, H = a->hidden, hd = a->head_dim, nh = a->heads, nkv = a->kv_heads;
    const int64_t I = a->inter, q_size = nh * hd, kv_size = nkv * hd, qkv_n = q_size + 2 * kv_size;
    const int64_t rep = nh / nkv, cache_head = a->max_len * hd, cache_row = 2 * nkv * cache_head; /* elements */
    if (nkv <= 0 || nh % nkv || hd % 2 || (a->slots == NULL) != (a->kv_rows == NULL)) return -2;
    if (a->kv_half && (hd != 64 || rep > 4)) return -2;
    if (a->slots && a->mask) return -2;
    int64_t len = a->slot + 1; /* the longest row's attention span (the scores scratch per head) */
    if (a->slots) {
        len = 1;
        for (int64_t b = 0; b < B; b++) {
            if (a->slots[b] < 0 || a->slots[b] >= a->max_len) return -2;
            if (a->slots[b] + 1 > len) len = a->slots[b] + 1;
        }
    } else if (a->slot >= a->max_len) {
        return -2;
    }
    const int64_t items = B * nkv; /* attention work: one per row and KV head */
    float *buf = (float *)malloc(sizeof(float) * (size_t)(B * (H + qkv_n + q_size + 3 * I) + B * nh * len));
    const char **ranges = (const char **)malloc(sizeof(char *) * (size_t)(2 * items));
    int64_t *range_bytes = (int64_t *)malloc(sizeof(int64_t) * (size_t)items);
    if (!buf || !ranges || !range_bytes) {
        free(buf);
        free(ranges);
        free(range_bytes);
        return -1;
    }
    float *x = buf, *qkv = x + B * H, *att = qkv + B * qkv_n, *gu = att + B * q_size, *act = gu + B * 2 * I;
    float *scores = act + B * I;
    int rc;
    const float scale = 1.0f / sqrtf((float)hd);
    const int team = (B * nh * len >= 2048) ? a->threads : 1; /* short contexts: a thread team costs more */
    const int half = a->kv_half;
    const int64_t es = half ? 2 : 4; /* bytes per cache element */
    /* The attention items' keys and values are fetched while the QKV product runs, each item's by the thread that
     * will attend over it: the weights streaming through every step evict the cache, and attention alone waited
     * on memory (8 rows at a 32-96-token context: 1.1-1.3 ms a step on 2 threads against ~0.4 with the keys and
     * values in cache). The product is compute-bound for a batch, so the fetches cost it little. */
    for (int64_t it = 0; it < items; it++) {
        const int64_t b = it / nkv, g = it % nkv, r = a->kv_rows ? a->kv_rows[b] : b;
        ranges[it] = (const char *)a->kv + (r * cache_row + g * cache_head) * es;
        ranges[items + it] = ranges[it] + nkv * cache_head * es;
        range_bytes[it] = (a->slots ? a->slots[b] + 1 : len) * hd * es;
    }
    const ae_prefetch kv_fetch = {ranges, ranges + items, range_bytes, items, team};
    ae_rms_norm_rows(a->h, a->attn_norm, B, H, a->eps, x);
    rc = gguf_matmul(a->qkv_type, a->qkv, qkv_n, H, a->qkv_stride, x, B, H, qkv, qkv_n, a->threads, &kv_fetch);
    if (rc) goto done;
    /* per row and KV head: rotary on its query heads and its key, its key and value into the cache, attention;
     * thread t takes the items split_range gives it (the ones it fetched) */
#pragma omp parallel num_threads(team)
    {
        int64_t lo, hi;
        split_range(items, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        for (int64_t it = lo; it < hi; it++) {
            const int64_t b = it / nkv, g = it % nkv, head = g * rep;
            const int64_t slot = a->slots ? a->slots[b] : a->slot;
            float *row = qkv + b * qkv_n;
            const float *cos = a->cos + b * hd, *sin = a->sin + b * hd;
            for (int64_t j = head; j < head + rep; j++) rotate(row + j * hd, cos, sin, hd);
            rotate(row + q_size + g * hd, cos, sin, hd);
            char *keys = (char *)ranges[it], *values = (char *)ranges[items + it]; /* this item's cache heads */
            store_kv(keys + slot * hd * es, row + q_size + g * hd, hd, half);
            store_kv(values + slot * hd * es, row + q_size + kv_size + g * hd, hd, half);
            attend_heads(row + head * hd, keys, values, hd, rep, a->slots ? a->slots[b] + 1 : len,
                         a->mask ? a->mask + b * len : NULL, scale, scores + (b * nh + head) * len,
                         att + b * q_size + head * hd, half);
        }
    }
    /* h += O att; then the MLP on the updated h */
    rc = ae_gguf_matmul(a->o_type, a->o, H, q_size, a->o_stride, att, B, q_size, x, H, a->threads);
    if (rc) goto done;
    for (int64_t i = 0; i < B * H; i++) a->h[i] += x[i];
    ae_rms_norm_rows(a->h, a->mlp_norm, B, H, a->eps, x);
    rc = ae_gguf_matmul(a->gate_up_type, a->gate_up, 2 * I, H, a->gate_up_stride, x, B, H, gu, 2 * I, a->threads);
    if (rc) goto done;
#pragma omp parallel for schedule(static) num_threads(B > 1 ? a->threads : 1)
    for (int64_t b = 0; b < B; b++) silu_mul(gu + b * 2 * I, gu + b * 2 * I + I, I, act + b * I);
    rc = ae_gguf_matmul(a->down_type, a->down, H, I, a->down_stride, act, B, I, x, H, a->threads);
    if (rc) goto done;
    for (int64_t i = 0; i < B * H; i++) a->h[i] += x[i];
done:
    free(buf);
    free(ranges);
    free(range_bytes);
    return rc;
}

/* n consecutive layers in one call (a whole decode step): from Python each ctypes call gives the GIL back and
 * must win it again afterwards, which a busy server thread (HTTP streams) delays by up to its switch interval,
 * once per layer. Stops at the first failing layer and returns its status. */
int ae_llama_layers(const ae_layer_args *a, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const int rc = ae_llama_layer(a + i);
        if (rc) return rc;
    }
    return 0;
}
