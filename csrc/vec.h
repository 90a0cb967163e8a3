/* vec.h: the vector layer of the SIMD kernels: one set of names per target (ggml vec.h style). */
/*
 * simd_kernels.h includes this once per target, with LTT_VEC set to 512 (AVX-512F) or 256
 * (AVX2 + FMA); no include guard, since each inclusion redefines every name below. The kernel
 * bodies use only these names, so each is written once:
 *
 *   VFN(name)        name suffixed with the target (l1_cols -> l1_cols_avx512)
 *   VEC_TARGET       the function attribute that compiles a function for the target
 *   VEC_W, VEC_TILE  floats per vector; vectors summed at once by VFN(hsum_tile)
 *   VF, VF_*         float vectors: ZERO, SET1, LOAD, STORE, ADD, ABS, FNMADD(a, b, c) = c - a b
 *   VD, VD_*         double vectors of VD_W lanes: the same, SUB, MAX, FMADD(a, b, c) = a b + c,
 *                    LOAD_F / STORE_F (VD_W floats widened / narrowed), VFN(vd_sum) (all lanes),
 *                    SPREAD4(p) (VD_W / 4 floats p[0], p[1], ... widened, each in 4 lanes)
 */
#undef VEC_SUFFIX
#undef VEC_TARGET
#undef VEC_W
#undef VEC_TILE
#undef VF
#undef VF_ZERO
#undef VF_SET1
#undef VF_LOAD
#undef VF_STORE
#undef VF_ADD
#undef VF_ABS
#undef VF_FNMADD
#undef VD
#undef VD_W
#undef VD_ZERO
#undef VD_SET1
#undef VD_LOAD
#undef VD_STORE
#undef VD_LOAD_F
#undef VD_STORE_F
#undef VD_ADD
#undef VD_SUB
#undef VD_MAX
#undef VD_ABS
#undef VD_FMADD
#undef VD_FNMADD
#undef VD_SPREAD4

#define VEC_CAT_(a, b) a##_##b
#define VEC_CAT(a, b) VEC_CAT_(a, b)
#define VFN(name) VEC_CAT(name, VEC_SUFFIX)

#if LTT_VEC == 512

#define VEC_SUFFIX avx512
#define VEC_TARGET __attribute__((target("avx512f")))
#define VEC_W 16
#define VEC_TILE 8
#define VF __m512
#define VF_ZERO() _mm512_setzero_ps()
#define VF_SET1(x) _mm512_set1_ps(x)
#define VF_LOAD(p) _mm512_loadu_ps(p)
#define VF_STORE(p, v) _mm512_storeu_ps(p, v)
#define VF_ADD(a, b) _mm512_add_ps(a, b)
#define VF_ABS(x) _mm512_abs_ps(x)
#define VF_FNMADD(a, b, c) _mm512_fnmadd_ps(a, b, c)
#define VD __m512d
#define VD_W 8
#define VD_ZERO() _mm512_setzero_pd()
#define VD_SET1(x) _mm512_set1_pd(x)
#define VD_LOAD(p) _mm512_loadu_pd(p)
#define VD_STORE(p, v) _mm512_storeu_pd(p, v)
#define VD_LOAD_F(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
#define VD_STORE_F(p, v) _mm256_storeu_ps(p, _mm512_cvtpd_ps(v))
#define VD_ADD(a, b) _mm512_add_pd(a, b)
#define VD_SUB(a, b) _mm512_sub_pd(a, b)
#define VD_MAX(a, b) _mm512_max_pd(a, b)
#define VD_ABS(x) _mm512_abs_pd(x)
#define VD_FMADD(a, b, c) _mm512_fmadd_pd(a, b, c)
#define VD_FNMADD(a, b, c) _mm512_fnmadd_pd(a, b, c)
#define VD_SPREAD4(p) \
    _mm512_insertf64x4(_mm512_set1_pd((double)(p)[0]), _mm256_set1_pd((double)(p)[1]), 1)

VEC_TARGET static inline double VFN(vd_sum)(VD v)
{
    return _mm512_reduce_add_pd(v);
}

/*
 * Sums of 8 vectors of 16 floats, added to tot[0..8) in double: 128-bit halves folded pairwise
 * across vectors (15 shuffles and 8 adds instead of 8 separate horizontal sums).
 */
VEC_TARGET static inline void VFN(hsum_tile)(const VF *s, double *tot)
{
    __m512 p[4], q[2];
    for (int k = 0; k < 4; k++) /* lanes: 8 of row 2k, 8 of row 2k + 1 */
        p[k] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], 0xEE));
    for (int k = 0; k < 2; k++) /* 128-bit granule g: 4 lanes of row 4k + g */
        q[k] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * k], p[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(p[2 * k], p[2 * k + 1], 0xDD));
    /* granule g: lanes (row g: 2, row 4 + g: 2), then (row g, -, row 4 + g, -) */
    __m512 v =
        _mm512_add_ps(_mm512_shuffle_ps(q[0], q[1], 0x44), _mm512_shuffle_ps(q[0], q[1], 0xEE));
    v = _mm512_add_ps(v, _mm512_shuffle_ps(v, v, 0xB1));
    float f[16];
    _mm512_storeu_ps(f, v);
    for (int g = 0; g < 4; g++) {
        tot[g] += (double)f[4 * g];
        tot[4 + g] += (double)f[4 * g + 2];
    }
}

#elif LTT_VEC == 256

#define VEC_SUFFIX avx2
#define VEC_TARGET __attribute__((target("avx2,fma")))
#define VEC_W 8
#define VEC_TILE 4
#define VF __m256
#define VF_ZERO() _mm256_setzero_ps()
#define VF_SET1(x) _mm256_set1_ps(x)
#define VF_LOAD(p) _mm256_loadu_ps(p)
#define VF_STORE(p, v) _mm256_storeu_ps(p, v)
#define VF_ADD(a, b) _mm256_add_ps(a, b)
#define VF_ABS(x) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x)
#define VF_FNMADD(a, b, c) _mm256_fnmadd_ps(a, b, c)
#define VD __m256d
#define VD_W 4
#define VD_ZERO() _mm256_setzero_pd()
#define VD_SET1(x) _mm256_set1_pd(x)
#define VD_LOAD(p) _mm256_loadu_pd(p)
#define VD_STORE(p, v) _mm256_storeu_pd(p, v)
#define VD_LOAD_F(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
#define VD_STORE_F(p, v) _mm_storeu_ps(p, _mm256_cvtpd_ps(v))
#define VD_ADD(a, b) _mm256_add_pd(a, b)
#define VD_SUB(a, b) _mm256_sub_pd(a, b)
#define VD_MAX(a, b) _mm256_max_pd(a, b)
#define VD_ABS(x) _mm256_andnot_pd(_mm256_set1_pd(-0.0), x)
#define VD_FMADD(a, b, c) _mm256_fmadd_pd(a, b, c)
#define VD_FNMADD(a, b, c) _mm256_fnmadd_pd(a, b, c)
#define VD_SPREAD4(p) _mm256_set1_pd((double)(p)[0])

VEC_TARGET static inline double VFN(vd_sum)(VD v)
{
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    h = _mm_add_sd(h, _mm_unpackhi_pd(h, h));
    return _mm_cvtsd_f64(h);
}

/* Sums of 4 vectors of 8 floats, added to tot[0..4) in double. */
VEC_TARGET static inline void VFN(hsum_tile)(const VF *s, double *tot)
{
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    const __m128 v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    float f[4];
    _mm_storeu_ps(f, v);
    for (int r = 0; r < 4; r++)
        tot[r] += (double)f[r];
}

#else
#error "vec.h: LTT_VEC must be 512 or 256"
#endif
