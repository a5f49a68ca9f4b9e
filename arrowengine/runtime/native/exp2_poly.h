/* exp's building block shared by softmax_bf16.c (AVX-512) and llama_layer.c (AVX2): exp(x) = 2^(x log2 e), the
 * integer part of x log2 e goes into the exponent and this degree-5 minimax polynomial covers the fraction f in
 * [0, 1) (relative error ~2e-7). FMA and SET1 are the vector width's fused multiply-add and broadcast. */
#ifndef AE_EXP2_POLY_H
#define AE_EXP2_POLY_H

#define AE_LOG2E 1.44269504088896341f

#define AE_EXP2_FRACTION(FMA, SET1, f)                                                                              \
    FMA(FMA(FMA(FMA(FMA(SET1(1.8775767e-3f), (f), SET1(8.9893397e-3f)), (f), SET1(5.5826318e-2f)), (f),            \
                SET1(2.4015361e-1f)),                                                                              \
            (f), SET1(6.9315308e-1f)),                                                                             \
        (f), SET1(9.9999994e-1f))

#endif
