/* simd.c: the hot L1 distance loops, in AVX-512, AVX2 and scalar variants chosen at run time. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ltt_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define LTT_X86 1
#include <immintrin.h>
#endif

_Static_assert(LTT_TILE_R == 8, "the AVX-512 row kernel and its sums are written for 8 rows");

/* Float partial sums are flushed into double at least every this many elements per lane. */
#define FLUSH 2048

enum { V_UNSET = 0, V_SCALAR, V_AVX2, V_AVX512 };
static atomic_int chosen = V_UNSET;

static int pick_variant(void)
{
    int v = atomic_load_explicit(&chosen, memory_order_relaxed);
    if (v != V_UNSET)
        return v;
    int best = V_SCALAR;
#ifdef LTT_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        best = V_AVX512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        best = V_AVX2;
#endif
    /* LTT_SIMD=scalar|avx2|avx512 lowers the variant (for tests); it never raises it. */
    const char *env = getenv("LTT_SIMD");
    if (env != NULL) {
        int want = best;
        if (strcmp(env, "scalar") == 0)
            want = V_SCALAR;
        else if (strcmp(env, "avx2") == 0)
            want = V_AVX2;
        else if (strcmp(env, "avx512") == 0)
            want = V_AVX512;
        if (want < best)
            best = want;
    }
    atomic_store_explicit(&chosen, best, memory_order_relaxed);
    return best;
}

const char *ltt_simd_variant(void)
{
    switch (pick_variant()) {
    case V_AVX512:
        return "avx512";
    case V_AVX2:
        return "avx2";
    default:
        return "scalar";
    }
}

/* ---- scalar ------------------------------------------------------------------------------ */

static void l1_rows_scalar(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
                           const float *const *w, const float *restrict u, int64_t ldu,
                           const float *restrict a, int64_t lda, const float *restrict rs)
{
    for (int r = 0; r < nr; r++) {
        for (int64_t q = 0; q < ns; q++) {
            const float *wr = w[r], *uq = u + q * ldu;
            const double aq = (double)(a[r * lda + q] * rs[r]);
            double s = 0.0;
            for (int64_t j = 0; j < n; j++)
                s += fabs((double)wr[j] - aq * (double)uq[j]);
            acc[r * ldacc + q] += s;
        }
    }
}

static void l1_cols_scalar(int64_t n, int64_t nf, int64_t ld, double *restrict acc,
                           const float *restrict w, const float *restrict m,
                           const float *restrict c)
{
    for (int64_t i = 0; i < nf; i++) {
        const double ci = c[i];
        double s = 0.0;
        for (int64_t j = 0; j < n; j++)
            s += fabs((double)w[j] - ci * (double)m[j * ld + i]);
        acc[i] += s;
    }
}

#ifdef LTT_X86
/*
 * Keeps a freshly loaded vector in a register, so the compiler does not fold the load into the
 * FMA's memory operand and then copy a loop-invariant register before every FMA (the FMA
 * overwrites one input: with the load folded, that is the coefficient, costing one extra
 * register move per element vector on the two vector ports).
 */
#if defined(__GNUC__)
#define IN_REG(x) __asm__("" : "+v"(x))
#else
#define IN_REG(x) (void)0
#endif

/* ---- AVX-512 ----------------------------------------------------------------------------- */

/*
 * Sums of 8 vectors of 16 floats, added to tot[0..8) in double: 128-bit halves folded pairwise
 * across vectors (15 shuffles and 8 adds instead of 8 separate horizontal sums).
 */
__attribute__((target("avx512f"))) static inline void hsum8_512(const __m512 *s, double *tot)
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

/*
 * One source at a time against LTT_TILE_R (8) rows: per 16 coordinates one u load feeds 8
 * rows, 3 vector operations per row (FMA, abs, add), nothing else on the vector ports.
 */
__attribute__((target("avx512f"))) static void
l1_rows8_avx512(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
                const float *const *w, const float *restrict u, int64_t ldu,
                const float *restrict a, int64_t lda, const float *restrict rs)
{
    /* Pad the block to LTT_TILE_R rows by repeating the last one; only real rows are stored. */
    const float *wp[LTT_TILE_R];
    float rsp[LTT_TILE_R];
    const float *ap[LTT_TILE_R];
    for (int r = 0; r < LTT_TILE_R; r++) {
        const int rr = r < nr ? r : nr - 1;
        wp[r] = w[rr];
        rsp[r] = rs[rr];
        ap[r] = a + rr * lda;
    }
    const int64_t nv = n - n % 16;
    for (int64_t q = 0; q < ns; q++) {
        const float *uq = u + q * ldu;
        __m512 av[LTT_TILE_R];
        for (int r = 0; r < LTT_TILE_R; r++)
            av[r] = _mm512_set1_ps(ap[r][q] * rsp[r]);
        double tot[LTT_TILE_R] = {0.0};
        int64_t j = 0;
        while (j < nv) {
            const int64_t end = (nv - j > FLUSH * 16) ? j + FLUSH * 16 : nv;
            __m512 s[LTT_TILE_R];
            for (int r = 0; r < LTT_TILE_R; r++)
                s[r] = _mm512_setzero_ps();
            for (; j < end; j += 16) {
                const __m512 x = _mm512_loadu_ps(uq + j);
                for (int r = 0; r < LTT_TILE_R; r++) {
                    __m512 y = _mm512_loadu_ps(wp[r] + j);
                    IN_REG(y);
                    y = _mm512_fnmadd_ps(av[r], x, y);
                    s[r] = _mm512_add_ps(s[r], _mm512_abs_ps(y));
                }
            }
            hsum8_512(s, tot);
        }
        for (int r = 0; r < nr; r++) {
            double t = tot[r];
            const double aq = (double)(ap[r][q] * rsp[r]);
            for (int64_t k = nv; k < n; k++) /* scalar tail */
                t += fabs((double)wp[r][k] - aq * (double)uq[k]);
            acc[r * ldacc + q] += t;
        }
    }
}

/*
 * Few rows (a single token's FFN, the last row block of a triangle): one row at a time against
 * 8 sources, so no padded rows are computed; per 16 coordinates one w load feeds 8 sources.
 */
__attribute__((target("avx512f"))) static void
l1_src8_avx512(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
               const float *const *w, const float *restrict u, int64_t ldu, const float *restrict a,
               int64_t lda, const float *restrict rs)
{
    const int64_t nv = n - n % 16;
    for (int r = 0; r < nr; r++) {
        const float *wr = w[r];
        for (int64_t q0 = 0; q0 < ns; q0 += 8) {
            const int nq = (ns - q0 < 8) ? (int)(ns - q0) : 8;
            const float *up[8];
            float af[8];
            __m512 av[8];
            for (int q = 0; q < 8; q++) {
                const int64_t qq = q0 + (q < nq ? q : nq - 1);
                up[q] = u + qq * ldu;
                af[q] = a[r * lda + qq] * rs[r];
                av[q] = _mm512_set1_ps(af[q]);
            }
            double tot[8] = {0.0};
            int64_t j = 0;
            while (j < nv) {
                const int64_t end = (nv - j > FLUSH * 16) ? j + FLUSH * 16 : nv;
                __m512 s[8];
                for (int q = 0; q < 8; q++)
                    s[q] = _mm512_setzero_ps();
                for (; j < end; j += 16) {
                    const __m512 y = _mm512_loadu_ps(wr + j);
                    for (int q = 0; q < 8; q++) {
                        __m512 x = _mm512_loadu_ps(up[q] + j);
                        IN_REG(x);
                        x = _mm512_fnmadd_ps(av[q], x, y);
                        s[q] = _mm512_add_ps(s[q], _mm512_abs_ps(x));
                    }
                }
                hsum8_512(s, tot);
            }
            for (int q = 0; q < nq; q++) {
                double t = tot[q];
                const double aq = af[q];
                for (int64_t k = nv; k < n; k++) /* scalar tail */
                    t += fabs((double)wr[k] - aq * (double)up[q][k]);
                acc[r * ldacc + q0 + q] += t;
            }
        }
    }
}

__attribute__((target("avx512f"))) static void
l1_rows_avx512(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
               const float *const *w, const float *restrict u, int64_t ldu, const float *restrict a,
               int64_t lda, const float *restrict rs)
{
    if (nr > LTT_TILE_R / 2)
        l1_rows8_avx512(n, nr, ns, acc, ldacc, w, u, ldu, a, lda, rs);
    else
        l1_src8_avx512(n, nr, ns, acc, ldacc, w, u, ldu, a, lda, rs);
}

__attribute__((target("avx512f"))) static void
l1_cols_avx512(int64_t n, int64_t nf, int64_t ld, double *restrict acc, const float *restrict w,
               const float *restrict m, const float *restrict c)
{
    int64_t i = 0;
    for (; i + 64 <= nf; i += 64) {
        __m512 cv[4], s[4];
        double tot[64] = {0.0};
        for (int k = 0; k < 4; k++)
            cv[k] = _mm512_loadu_ps(c + i + 16 * k);
        for (int64_t j0 = 0; j0 < n; j0 += FLUSH) {
            const int64_t end = (n - j0 > FLUSH) ? j0 + FLUSH : n;
            for (int k = 0; k < 4; k++)
                s[k] = _mm512_setzero_ps();
            for (int64_t j = j0; j < end; j++) {
                const __m512 y = _mm512_set1_ps(w[j]);
                const float *row = m + j * ld + i;
                for (int k = 0; k < 4; k++) {
                    const __m512 x = _mm512_loadu_ps(row + 16 * k);
                    s[k] = _mm512_add_ps(s[k], _mm512_abs_ps(_mm512_fnmadd_ps(cv[k], x, y)));
                }
            }
            float lanes[64];
            for (int k = 0; k < 4; k++)
                _mm512_storeu_ps(lanes + 16 * k, s[k]);
            for (int k = 0; k < 64; k++)
                tot[k] += lanes[k];
        }
        for (int k = 0; k < 64; k++)
            acc[i + k] += tot[k];
    }
    if (i < nf) /* scalar tail over the last neurons */
        l1_cols_scalar(n, nf - i, ld, acc + i, w, m + i, c + i);
}

/* ---- AVX2 -------------------------------------------------------------------------------- */

__attribute__((target("avx2,fma"))) static inline __m256 abs256(__m256 x)
{
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
}

/* Sums of 4 vectors of 8 floats, added to tot[0..4) in double. */
__attribute__((target("avx2,fma"))) static inline void hsum4_256(const __m256 *s, double *tot)
{
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    const __m128 v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    float f[4];
    _mm_storeu_ps(f, v);
    for (int r = 0; r < 4; r++)
        tot[r] += (double)f[r];
}

/* One row against 4 sources at a time (as l1_src8_avx512), for a block of 1 or 2 rows. */
__attribute__((target("avx2,fma"))) static void
l1_src4_avx2(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
             const float *const *w, const float *restrict u, int64_t ldu, const float *restrict a,
             int64_t lda, const float *restrict rs)
{
    const int64_t nv = n - n % 8;
    for (int r = 0; r < nr; r++) {
        const float *wr = w[r];
        for (int64_t q0 = 0; q0 < ns; q0 += 4) {
            const int nq = (ns - q0 < 4) ? (int)(ns - q0) : 4;
            const float *up[4];
            float af[4];
            __m256 av[4];
            for (int q = 0; q < 4; q++) {
                const int64_t qq = q0 + (q < nq ? q : nq - 1);
                up[q] = u + qq * ldu;
                af[q] = a[r * lda + qq] * rs[r];
                av[q] = _mm256_set1_ps(af[q]);
            }
            double tot[4] = {0.0};
            int64_t j = 0;
            while (j < nv) {
                const int64_t end = (nv - j > FLUSH * 8) ? j + FLUSH * 8 : nv;
                __m256 s[4];
                for (int q = 0; q < 4; q++)
                    s[q] = _mm256_setzero_ps();
                for (; j < end; j += 8) {
                    const __m256 y = _mm256_loadu_ps(wr + j);
                    for (int q = 0; q < 4; q++) {
                        __m256 x = _mm256_loadu_ps(up[q] + j);
                        IN_REG(x);
                        x = _mm256_fnmadd_ps(av[q], x, y);
                        s[q] = _mm256_add_ps(s[q], abs256(x));
                    }
                }
                hsum4_256(s, tot);
            }
            for (int q = 0; q < nq; q++) {
                double t = tot[q];
                const double aq = af[q];
                for (int64_t k = nv; k < n; k++) /* scalar tail */
                    t += fabs((double)wr[k] - aq * (double)up[q][k]);
                acc[r * ldacc + q0 + q] += t;
            }
        }
    }
}

/* As l1_rows8_avx512, 4 rows at a time (16 vector registers hold 4 sums, 4 coefficients). */
__attribute__((target("avx2,fma"))) static void
l1_rows_avx2(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
             const float *const *w, const float *restrict u, int64_t ldu, const float *restrict a,
             int64_t lda, const float *restrict rs)
{
    const int64_t nv = n - n % 8;
    for (int r0 = 0; r0 < nr; r0 += 4) {
        if (nr - r0 <= 2) {
            l1_src4_avx2(n, nr - r0, ns, acc + r0 * ldacc, ldacc, w + r0, u, ldu, a + r0 * lda, lda,
                         rs + r0);
            break;
        }
        const float *wp[4];
        const float *ap[4];
        float rsp[4];
        for (int r = 0; r < 4; r++) {
            const int rr = r0 + r < nr ? r0 + r : nr - 1;
            wp[r] = w[rr];
            rsp[r] = rs[rr];
            ap[r] = a + rr * lda;
        }
        const int mr = nr - r0 < 4 ? nr - r0 : 4;
        for (int64_t q = 0; q < ns; q++) {
            const float *uq = u + q * ldu;
            __m256 av[4];
            for (int r = 0; r < 4; r++)
                av[r] = _mm256_set1_ps(ap[r][q] * rsp[r]);
            double tot[4] = {0.0};
            int64_t j = 0;
            while (j < nv) {
                const int64_t end = (nv - j > FLUSH * 8) ? j + FLUSH * 8 : nv;
                __m256 s[4];
                for (int r = 0; r < 4; r++)
                    s[r] = _mm256_setzero_ps();
                for (; j < end; j += 8) {
                    const __m256 x = _mm256_loadu_ps(uq + j);
                    for (int r = 0; r < 4; r++) {
                        __m256 y = _mm256_loadu_ps(wp[r] + j);
                        IN_REG(y);
                        y = _mm256_fnmadd_ps(av[r], x, y);
                        s[r] = _mm256_add_ps(s[r], abs256(y));
                    }
                }
                hsum4_256(s, tot);
            }
            for (int r = 0; r < mr; r++) {
                double t = tot[r];
                const double aq = (double)(ap[r][q] * rsp[r]);
                for (int64_t k = nv; k < n; k++) /* scalar tail */
                    t += fabs((double)wp[r][k] - aq * (double)uq[k]);
                acc[(r0 + r) * ldacc + q] += t;
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void
l1_cols_avx2(int64_t n, int64_t nf, int64_t ld, double *restrict acc, const float *restrict w,
             const float *restrict m, const float *restrict c)
{
    int64_t i = 0;
    for (; i + 32 <= nf; i += 32) {
        __m256 cv[4], s[4];
        double tot[32] = {0.0};
        for (int k = 0; k < 4; k++)
            cv[k] = _mm256_loadu_ps(c + i + 8 * k);
        for (int64_t j0 = 0; j0 < n; j0 += FLUSH) {
            const int64_t end = (n - j0 > FLUSH) ? j0 + FLUSH : n;
            for (int k = 0; k < 4; k++)
                s[k] = _mm256_setzero_ps();
            for (int64_t j = j0; j < end; j++) {
                const __m256 y = _mm256_set1_ps(w[j]);
                const float *row = m + j * ld + i;
                for (int k = 0; k < 4; k++) {
                    const __m256 x = _mm256_loadu_ps(row + 8 * k);
                    s[k] = _mm256_add_ps(s[k], abs256(_mm256_fnmadd_ps(cv[k], x, y)));
                }
            }
            float lanes[32];
            for (int k = 0; k < 4; k++)
                _mm256_storeu_ps(lanes + 8 * k, s[k]);
            for (int k = 0; k < 32; k++)
                tot[k] += lanes[k];
        }
        for (int k = 0; k < 32; k++)
            acc[i + k] += tot[k];
    }
    if (i < nf)
        l1_cols_scalar(n, nf - i, ld, acc + i, w, m + i, c + i);
}
#endif /* LTT_X86 */

void ltt__l1_rows(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
                  const float *const *w, const float *restrict u, int64_t ldu,
                  const float *restrict a, int64_t lda, const float *restrict rs)
{
#ifdef LTT_X86
    switch (pick_variant()) {
    case V_AVX512:
        l1_rows_avx512(n, nr, ns, acc, ldacc, w, u, ldu, a, lda, rs);
        return;
    case V_AVX2:
        l1_rows_avx2(n, nr, ns, acc, ldacc, w, u, ldu, a, lda, rs);
        return;
    default:
        break;
    }
#endif
    l1_rows_scalar(n, nr, ns, acc, ldacc, w, u, ldu, a, lda, rs);
}

void ltt__l1_cols(int64_t n, int64_t nf, int64_t ld, double *restrict acc, const float *restrict w,
                  const float *restrict m, const float *restrict c)
{
#ifdef LTT_X86
    switch (pick_variant()) {
    case V_AVX512:
        l1_cols_avx512(n, nf, ld, acc, w, m, c);
        return;
    case V_AVX2:
        l1_cols_avx2(n, nf, ld, acc, w, m, c);
        return;
    default:
        break;
    }
#endif
    l1_cols_scalar(n, nf, ld, acc, w, m, c);
}

/* ---- raw contributions of a row ---------------------------------------------------------- */

static double raw_row_scalar(int64_t n, double nw, const double *restrict dist, double *restrict er,
                             float *restrict hrow)
{
    double z = 0.0;
    for (int64_t s = 0; s < n; s++) {
        const double r = ltt__raw(nw, dist[s]);
        er[s] += r;
        z += r;
        if (hrow != NULL)
            hrow[s] = (float)r;
    }
    return z;
}

#ifdef LTT_X86
/* max(x, eps) returns eps for a NaN x, as ltt__raw does. */
__attribute__((target("avx512f"))) static double raw_row_avx512(int64_t n, double nw,
                                                                const double *restrict dist,
                                                                double *restrict er,
                                                                float *restrict hrow)
{
    const __m512d wv = _mm512_set1_pd(nw), eps = _mm512_set1_pd(LTT_EPS);
    __m512d z0 = _mm512_setzero_pd(), z1 = _mm512_setzero_pd();
    int64_t s = 0;
    for (; s + 16 <= n; s += 16) {
        const __m512d r0 = _mm512_max_pd(_mm512_sub_pd(wv, _mm512_loadu_pd(dist + s)), eps);
        const __m512d r1 = _mm512_max_pd(_mm512_sub_pd(wv, _mm512_loadu_pd(dist + s + 8)), eps);
        _mm512_storeu_pd(er + s, _mm512_add_pd(_mm512_loadu_pd(er + s), r0));
        _mm512_storeu_pd(er + s + 8, _mm512_add_pd(_mm512_loadu_pd(er + s + 8), r1));
        z0 = _mm512_add_pd(z0, r0);
        z1 = _mm512_add_pd(z1, r1);
        if (hrow != NULL) {
            _mm256_storeu_ps(hrow + s, _mm512_cvtpd_ps(r0));
            _mm256_storeu_ps(hrow + s + 8, _mm512_cvtpd_ps(r1));
        }
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(z0, z1)) +
           raw_row_scalar(n - s, nw, dist + s, er + s, hrow != NULL ? hrow + s : NULL);
}

__attribute__((target("avx2,fma"))) static double raw_row_avx2(int64_t n, double nw,
                                                               const double *restrict dist,
                                                               double *restrict er,
                                                               float *restrict hrow)
{
    const __m256d wv = _mm256_set1_pd(nw), eps = _mm256_set1_pd(LTT_EPS);
    __m256d z0 = _mm256_setzero_pd(), z1 = _mm256_setzero_pd();
    int64_t s = 0;
    for (; s + 8 <= n; s += 8) {
        const __m256d r0 = _mm256_max_pd(_mm256_sub_pd(wv, _mm256_loadu_pd(dist + s)), eps);
        const __m256d r1 = _mm256_max_pd(_mm256_sub_pd(wv, _mm256_loadu_pd(dist + s + 4)), eps);
        _mm256_storeu_pd(er + s, _mm256_add_pd(_mm256_loadu_pd(er + s), r0));
        _mm256_storeu_pd(er + s + 4, _mm256_add_pd(_mm256_loadu_pd(er + s + 4), r1));
        z0 = _mm256_add_pd(z0, r0);
        z1 = _mm256_add_pd(z1, r1);
        if (hrow != NULL) {
            _mm_storeu_ps(hrow + s, _mm256_cvtpd_ps(r0));
            _mm_storeu_ps(hrow + s + 4, _mm256_cvtpd_ps(r1));
        }
    }
    const __m256d z = _mm256_add_pd(z0, z1);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(z), _mm256_extractf128_pd(z, 1));
    h = _mm_add_sd(h, _mm_unpackhi_pd(h, h));
    return _mm_cvtsd_f64(h) +
           raw_row_scalar(n - s, nw, dist + s, er + s, hrow != NULL ? hrow + s : NULL);
}
#endif /* LTT_X86 */

double ltt__raw_row(int64_t n, double nw, const double *restrict dist, double *restrict er,
                    float *restrict hrow)
{
#ifdef LTT_X86
    switch (pick_variant()) {
    case V_AVX512:
        return raw_row_avx512(n, nw, dist, er, hrow);
    case V_AVX2:
        return raw_row_avx2(n, nw, dist, er, hrow);
    default:
        break;
    }
#endif
    return raw_row_scalar(n, nw, dist, er, hrow);
}

/* ---- norms and distances in double ------------------------------------------------------ */

/* sum |w - a p| (norm 1) or sum (w - a p)^2 (norm 2) in double, p NULL meaning 0. */
static double dist_sum_scalar(int64_t n, const float *restrict w, const float *restrict p, double a,
                              int norm)
{
    double s = 0.0;
    for (int64_t j = 0; j < n; j++) {
        const double e = (double)w[j] - (p != NULL ? a * (double)p[j] : 0.0);
        s += norm == 1 ? fabs(e) : e * e;
    }
    return s;
}

#ifdef LTT_X86
/* Four double accumulators of 8 lanes, so the additions do not wait on each other. */
__attribute__((target("avx512f"))) static double
dist_sum_avx512(int64_t n, const float *restrict w, const float *restrict p, double a, int norm)
{
    const __m512d av = _mm512_set1_pd(a);
    __m512d s[4];
    for (int k = 0; k < 4; k++)
        s[k] = _mm512_setzero_pd();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32)
        for (int k = 0; k < 4; k++) {
            __m512d e = _mm512_cvtps_pd(_mm256_loadu_ps(w + j + 8 * k));
            if (p != NULL)
                e = _mm512_fnmadd_pd(av, _mm512_cvtps_pd(_mm256_loadu_ps(p + j + 8 * k)), e);
            s[k] = norm == 1 ? _mm512_add_pd(s[k], _mm512_abs_pd(e)) : _mm512_fmadd_pd(e, e, s[k]);
        }
    const __m512d t = _mm512_add_pd(_mm512_add_pd(s[0], s[1]), _mm512_add_pd(s[2], s[3]));
    return _mm512_reduce_add_pd(t) +
           dist_sum_scalar(n - j, w + j, p != NULL ? p + j : NULL, a, norm); /* scalar tail */
}

__attribute__((target("avx2,fma"))) static double
dist_sum_avx2(int64_t n, const float *restrict w, const float *restrict p, double a, int norm)
{
    const __m256d av = _mm256_set1_pd(a), sign = _mm256_set1_pd(-0.0);
    __m256d s[4];
    for (int k = 0; k < 4; k++)
        s[k] = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 4; k++) {
            __m256d e = _mm256_cvtps_pd(_mm_loadu_ps(w + j + 4 * k));
            if (p != NULL)
                e = _mm256_fnmadd_pd(av, _mm256_cvtps_pd(_mm_loadu_ps(p + j + 4 * k)), e);
            s[k] = norm == 1 ? _mm256_add_pd(s[k], _mm256_andnot_pd(sign, e))
                             : _mm256_fmadd_pd(e, e, s[k]);
        }
    __m256d t = _mm256_add_pd(_mm256_add_pd(s[0], s[1]), _mm256_add_pd(s[2], s[3]));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    h = _mm_add_sd(h, _mm_unpackhi_pd(h, h));
    return _mm_cvtsd_f64(h) +
           dist_sum_scalar(n - j, w + j, p != NULL ? p + j : NULL, a, norm); /* scalar tail */
}
#endif /* LTT_X86 */

static double dist_sum(int64_t n, const float *restrict w, const float *restrict p, double a,
                       int norm)
{
#ifdef LTT_X86
    switch (pick_variant()) {
    case V_AVX512:
        return dist_sum_avx512(n, w, p, a, norm);
    case V_AVX2:
        return dist_sum_avx2(n, w, p, a, norm);
    default:
        break;
    }
#endif
    return dist_sum_scalar(n, w, p, a, norm);
}

double ltt__norm(int64_t n, const float *restrict x, int norm)
{
    const double s = dist_sum(n, x, NULL, 0.0, norm);
    return norm == 1 ? s : sqrt(s);
}

double ltt__dist(int64_t n, const float *restrict w, const float *restrict p, double a, int norm)
{
    const double s = dist_sum(n, w, p, a, norm);
    return norm == 1 ? s : sqrt(s);
}
