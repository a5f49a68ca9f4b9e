/* The vector operations of gguf_blocks.c's strip kernel at the build's width: 16 lanes with AVX-512 F/BW (vpdpwssd
 * with VNNI, vpmaddwd + vpaddd without), 8 with AVX2. Each macro does the same per-lane arithmetic at either width,
 * which is what makes the two builds' results bit-identical. Included by gguf_blocks.c (so also seen by
 * llama_layer.c and bert_layer.c, which blocks_lib.c includes after it). */
#ifndef AE_LANES_H
#define AE_LANES_H

/* Lanes 0..n-1 of an 8-lane vector (n <= 8) as a maskload / maskstore mask (both builds: llama_layer.c uses it). */
static inline __m256i first_lanes(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define AE_LANES 16
typedef __m512i vint;
typedef __m512 vflt;
#define V_AND(a, b) _mm512_and_si512(a, b)
#define V_SRLI32(a, n) _mm512_srli_epi32(a, n)
#define V_SLLI16(a, n) _mm512_slli_epi16(a, n)
#define V_SRAI16(a, n) _mm512_srai_epi16(a, n)
#define V_SUB16(a, b) _mm512_sub_epi16(a, b)
#define V_ADD32(a, b) _mm512_add_epi32(a, b)
#define V_SET32(v) _mm512_set1_epi32(v)
#define V_SET16(v) _mm512_set1_epi16(v)
#define V_ZERO() _mm512_setzero_si512()
#define V_UNLO32(a, b) _mm512_unpacklo_epi32(a, b)
#define V_UNHI32(a, b) _mm512_unpackhi_epi32(a, b)
#define V_UNLO64(a, b) _mm512_unpacklo_epi64(a, b)
#define V_UNHI64(a, b) _mm512_unpackhi_epi64(a, b)
#define V_CVT(a) _mm512_cvtepi32_ps(a)
#define F_ZERO() _mm512_setzero_ps()
#define F_MUL(a, b) _mm512_mul_ps(a, b)
#define F_ADD(a, b) _mm512_add_ps(a, b)
#define F_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define F_SET(v) _mm512_set1_ps(v)
#ifdef __AVX512VNNI__
#define V_DOT(acc, w, x) _mm512_dpwssd_epi32(acc, w, x)
#else
#define V_DOT(acc, w, x) _mm512_add_epi32(acc, _mm512_madd_epi16(w, x))
#endif
/* rows j, j + 4, j + 8, j + 12 of the strip, 16 bytes each at byte offset off, one per 128-bit lane */
static inline __attribute__((always_inline)) vint load_rows(const uint8_t *const *rp, int j, int64_t off) {
    vint r = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rp[j] + off)));
    r = _mm512_inserti32x4(r, _mm_loadu_si128((const __m128i *)(rp[j + 4] + off)), 1);
    r = _mm512_inserti32x4(r, _mm_loadu_si128((const __m128i *)(rp[j + 8] + off)), 2);
    return _mm512_inserti32x4(r, _mm_loadu_si128((const __m128i *)(rp[j + 12] + off)), 3);
}
/* the fp16 scale d (and Q4_1's min m: the next two bytes) of each lane's row at byte offset off, as floats. Four
 * rows' dwords per 128-bit lane from plain loads: vpgatherdd took 14% of an 8-row product's time waiting on it
 * (8 rows of x: 0.45 -> 0.41 ns per block and row, one row 0.63 -> 0.54 ns on 2 threads) */
static inline __attribute__((always_inline)) void load_scales(const uint8_t *const *rp, int64_t off, vflt *d,
                                                               vflt *m) {
    __m128i quad[4];
    for (int j = 0; j < 4; j++) {
        int32_t v[4];
        for (int i = 0; i < 4; i++) memcpy(v + i, rp[4 * j + i] + off, 4);
        quad[j] = _mm_setr_epi32(v[0], v[1], v[2], v[3]);
    }
    const vint dm = _mm512_inserti32x4(
        _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(quad[0]), quad[1], 1), quad[2], 2), quad[3], 3);
    *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
    *m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
}
/* the first `lanes` lanes of v to y (a strip past the matrix's last row stores only its real rows) */
static inline __attribute__((always_inline)) void store_lanes(float *y, vflt v, int lanes) {
    if (lanes == AE_LANES) _mm512_storeu_ps(y, v);
    else _mm512_mask_storeu_ps(y, (__mmask16)((1u << lanes) - 1), v);
}
#else
#define AE_LANES 8
typedef __m256i vint;
typedef __m256 vflt;
#define V_AND(a, b) _mm256_and_si256(a, b)
#define V_SRLI32(a, n) _mm256_srli_epi32(a, n)
#define V_SLLI16(a, n) _mm256_slli_epi16(a, n)
#define V_SRAI16(a, n) _mm256_srai_epi16(a, n)
#define V_SUB16(a, b) _mm256_sub_epi16(a, b)
#define V_ADD32(a, b) _mm256_add_epi32(a, b)
#define V_SET32(v) _mm256_set1_epi32(v)
#define V_SET16(v) _mm256_set1_epi16(v)
#define V_ZERO() _mm256_setzero_si256()
#define V_UNLO32(a, b) _mm256_unpacklo_epi32(a, b)
#define V_UNHI32(a, b) _mm256_unpackhi_epi32(a, b)
#define V_UNLO64(a, b) _mm256_unpacklo_epi64(a, b)
#define V_UNHI64(a, b) _mm256_unpackhi_epi64(a, b)
#define V_CVT(a) _mm256_cvtepi32_ps(a)
#define F_ZERO() _mm256_setzero_ps()
#define F_MUL(a, b) _mm256_mul_ps(a, b)
#define F_ADD(a, b) _mm256_add_ps(a, b)
#define F_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define F_SET(v) _mm256_set1_ps(v)
#define V_DOT(acc, w, x) _mm256_add_epi32(acc, _mm256_madd_epi16(w, x))
/* rows j and j + 4 of the strip, 16 bytes each at byte offset off, one per 128-bit lane */
static inline __attribute__((always_inline)) vint load_rows(const uint8_t *const *rp, int j, int64_t off) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(rp[j] + off))),
                                   _mm_loadu_si128((const __m128i *)(rp[j + 4] + off)), 1);
}
/* as the 16-lane load_scales: each row's 4 bytes at off inserted into a vector (the 2-byte halves stored to the
 * stack and read back as one vector stalled on store forwarding: one row of x on a Zen 3, one core, weights in L2,
 * 19.8-21.0 -> 16.3-16.9 ns per block) */
static inline __attribute__((always_inline)) void load_scales(const uint8_t *const *rp, int64_t off, vflt *d,
                                                               vflt *m) {
    __m128i half[2];
    for (int j = 0; j < 2; j++) {
        int32_t v[4];
        for (int i = 0; i < 4; i++) memcpy(v + i, rp[4 * j + i] + off, 4);
        half[j] = _mm_insert_epi32(_mm_insert_epi32(_mm_insert_epi32(_mm_cvtsi32_si128(v[0]), v[1], 1), v[2], 2),
                                   v[3], 3);
    }
    const __m128i low = _mm_set1_epi32(0xFFFF);
    *d = _mm256_cvtph_ps(_mm_packus_epi32(_mm_and_si128(half[0], low), _mm_and_si128(half[1], low)));
    *m = _mm256_cvtph_ps(_mm_packus_epi32(_mm_srli_epi32(half[0], 16), _mm_srli_epi32(half[1], 16)));
}
static inline __attribute__((always_inline)) void store_lanes(float *y, vflt v, int lanes) {
    if (lanes == AE_LANES) _mm256_storeu_ps(y, v);
    else _mm256_maskstore_ps(y, first_lanes(lanes), v);
}
#endif
#endif /* AE_LANES_H */
