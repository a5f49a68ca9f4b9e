/* BERT encoder layers over GGUF blocks in one call (AVX2 + FMA, OpenMP): the int8-weights forward of FastBert.
 *
 * Included by blocks_lib.c after gguf_blocks.c and llama_layer.c (whose attend() it shares). A query of ~15
 * tokens spends about a third of its MiniLM forward outside the matrix products: ~70 small torch ops and their
 * Python between the block-kernel calls. Here a layer is QKV (+ bias) -> attention over the unpadded keys of each
 * sequence -> O (+ bias) + residual -> LayerNorm -> up (+ bias) -> GELU -> down (+ bias) + residual ->
 * LayerNorm, with scratch from one allocation.
 *
 * Numerics follow the torch forward in float32: LayerNorm with biased variance, attention by llama_layer.c's
 * attend() (softmax with the running maximum subtracted, scale 1 / sqrt(head_dim)), GELU 0.5 x (1 + erf(x /
 * sqrt 2)) (or the tanh form); summation orders differ from torch's, so outputs agree to float rounding, not bit
 * for bit.
 */

typedef struct {
    int64_t batch, seq, hidden, heads, inter;
    float eps;
    int threads, gelu_tanh;
    float *h;                 /* [batch * seq, hidden], updated in place */
    const uint8_t *mask;      /* [batch, seq]: 1 = a token, 0 = padding; NULL: no padding */
    int qkv_parts;            /* 1 to 3 block matrices stacked by output rows (Q, K, V or one fused) */
    int qkv_type[3];
    const uint8_t *qkv[3];
    int64_t qkv_rows[3], qkv_stride[3];
    const float *qkv_bias;    /* [3 * hidden] or NULL */
    int o_type, up_type, down_type;
    const uint8_t *o, *up, *down;
    int64_t o_stride, up_stride, down_stride;
    const float *o_bias, *up_bias, *down_bias; /* or NULL */
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
} ae_bert_args;

static void add_bias_rows(float *y, int64_t rows, int64_t n, int64_t ld, const float *bias) {
    if (!bias) return;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < n; i++) y[r * ld + i] += bias[i];
}

/* out = LayerNorm(x) * w + b per row of n (x and out may alias) */
static void layer_norm_rows(const float *x, int64_t rows, int64_t n, const float *w, const float *b, float eps,
                            float *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float mean = 0.0f, var = 0.0f;
        for (int64_t i = 0; i < n; i++) mean += xr[i];
        mean /= (float)n;
        for (int64_t i = 0; i < n; i++) var += (xr[i] - mean) * (xr[i] - mean);
        const float inv = 1.0f / sqrtf(var / (float)n + eps);
        float *o = out + r * n;
        for (int64_t i = 0; i < n; i++) o[i] = (xr[i] - mean) * inv * w[i] + b[i];
    }
}

static inline float gelu(float x, int tanh_form) {
    if (tanh_form) return 0.5f * x * (1.0f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

static int bert_layer(const ae_bert_args *a) {
    const int64_t B = a->batch, T = a->seq, H = a->hidden, nh = a->heads, I = a->inter, rows = B * T;
    if (nh <= 0 || H % nh || a->qkv_parts < 1 || a->qkv_parts > 3) return -2;
    const int64_t hd = H / nh;
    int64_t total = 0;
    for (int p = 0; p < a->qkv_parts; p++) total += a->qkv_rows[p];
    if (total != 3 * H) return -2;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(rows * (3 * H + H + H + I) + B * nh * T));
    if (!buf) return -1;
    float *qkv = buf, *ctx = qkv + rows * 3 * H, *y = ctx + rows * H, *u = y + rows * H, *scores = u + rows * I;
    int rc = 0;
    int64_t col = 0;
    for (int p = 0; p < a->qkv_parts && !rc; p++) {
        rc = ae_gguf_matmul(a->qkv_type[p], a->qkv[p], a->qkv_rows[p], H, a->qkv_stride[p], a->h, rows, H,
                            qkv + col, 3 * H, a->threads);
        col += a->qkv_rows[p];
    }
    if (rc) goto done;
    add_bias_rows(qkv, rows, 3 * H, 3 * H, a->qkv_bias);
    const float scale = 1.0f / sqrtf((float)hd);
    const int team = (B * nh * T * T * hd >= 1 << 16) ? a->threads : 1;
#pragma omp parallel for schedule(static) num_threads(team) collapse(2)
    for (int64_t b = 0; b < B; b++)
        for (int64_t head = 0; head < nh; head++) {
            /* each query position attends over the sequence's keys with llama_layer.c's attend(): the keys of
             * position j sit at row j of the fused QKV output (stride 3H), the values H floats after them */
            const float *keys = qkv + b * T * 3 * H + H + head * hd;
            for (int64_t t = 0; t < T; t++)
                attend(qkv + (b * T + t) * 3 * H + head * hd, keys, keys + H, 3 * H, hd, T,
                       a->mask ? a->mask + b * T : NULL, scale, scores + (b * nh + head) * T,
                       ctx + (b * T + t) * H + head * hd);
        }
    rc = ae_gguf_matmul(a->o_type, a->o, H, H, a->o_stride, ctx, rows, H, y, H, a->threads);
    if (rc) goto done;
    add_bias_rows(y, rows, H, H, a->o_bias);
    for (int64_t i = 0; i < rows * H; i++) y[i] += a->h[i];
    layer_norm_rows(y, rows, H, a->ln1_w, a->ln1_b, a->eps, a->h);
    rc = ae_gguf_matmul(a->up_type, a->up, I, H, a->up_stride, a->h, rows, H, u, I, a->threads);
    if (rc) goto done;
    add_bias_rows(u, rows, I, I, a->up_bias);
#pragma omp parallel for schedule(static) num_threads(rows * I >= 1 << 14 ? a->threads : 1)
    for (int64_t i = 0; i < rows * I; i++) u[i] = gelu(u[i], a->gelu_tanh);
    rc = ae_gguf_matmul(a->down_type, a->down, H, I, a->down_stride, u, rows, I, y, H, a->threads);
    if (rc) goto done;
    add_bias_rows(y, rows, H, H, a->down_bias);
    for (int64_t i = 0; i < rows * H; i++) y[i] += a->h[i];
    layer_norm_rows(y, rows, H, a->ln2_w, a->ln2_b, a->eps, a->h);
done:
    free(buf);
    return rc;
}

/* n consecutive layers (a whole encoder) in one call; stops at the first failing layer and returns its status
 * (0, -1 scratch allocation, -2 bad shapes or block types). */
int ae_bert_layers(const ae_bert_args *a, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const int rc = bert_layer(a + i);
        if (rc) return rc;
    }
    return 0;
}
