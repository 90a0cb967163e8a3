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
/* ---- AVX-512 ----------------------------------------------------------------------------- */

__attribute__((target("avx512f"))) static void
l1_rows_avx512(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
               const float *const *w, const float *restrict u, int64_t ldu, const float *restrict a,
               int64_t lda, const float *restrict rs)
{
    /* Pad the block to LTT_TILE_R rows by repeating the last one; only real rows are stored. */
    const float *wp[LTT_TILE_R];
    for (int r = 0; r < LTT_TILE_R; r++)
        wp[r] = w[r < nr ? r : nr - 1];
    const int64_t nv = n - n % 16;
    for (int64_t q0 = 0; q0 < ns; q0 += LTT_TILE_Q) {
        const int nq = (ns - q0 < LTT_TILE_Q) ? (int)(ns - q0) : LTT_TILE_Q;
        const float *up[LTT_TILE_Q];
        float af[LTT_TILE_R][LTT_TILE_Q];
        for (int q = 0; q < LTT_TILE_Q; q++)
            up[q] = u + (q0 + (q < nq ? q : nq - 1)) * ldu;
        for (int r = 0; r < LTT_TILE_R; r++)
            for (int q = 0; q < LTT_TILE_Q; q++) {
                const int rr = r < nr ? r : nr - 1;
                af[r][q] = a[rr * lda + q0 + (q < nq ? q : nq - 1)] * rs[rr];
            }
        double tot[LTT_TILE_R][LTT_TILE_Q] = {{0.0}};
        int64_t j = 0;
        while (j < nv) {
            const int64_t end = (nv - j > FLUSH * 16) ? j + FLUSH * 16 : nv;
            __m512 s[LTT_TILE_R][LTT_TILE_Q], av[LTT_TILE_R][LTT_TILE_Q];
            for (int r = 0; r < LTT_TILE_R; r++)
                for (int q = 0; q < LTT_TILE_Q; q++) {
                    s[r][q] = _mm512_setzero_ps();
                    av[r][q] = _mm512_set1_ps(af[r][q]);
                }
            for (; j < end; j += 16) {
                __m512 x[LTT_TILE_Q];
                for (int q = 0; q < LTT_TILE_Q; q++)
                    x[q] = _mm512_loadu_ps(up[q] + j);
                for (int r = 0; r < LTT_TILE_R; r++) {
                    const __m512 y = _mm512_loadu_ps(wp[r] + j);
                    for (int q = 0; q < LTT_TILE_Q; q++)
                        s[r][q] = _mm512_add_ps(s[r][q],
                                                _mm512_abs_ps(_mm512_fnmadd_ps(av[r][q], x[q], y)));
                }
            }
            for (int r = 0; r < LTT_TILE_R; r++)
                for (int q = 0; q < LTT_TILE_Q; q++)
                    tot[r][q] += (double)_mm512_reduce_add_ps(s[r][q]);
        }
        for (int r = 0; r < nr; r++) {
            for (int q = 0; q < nq; q++) {
                double t = tot[r][q];
                const double aq = af[r][q];
                for (int64_t k = nv; k < n; k++) /* scalar tail */
                    t += fabs((double)w[r][k] - aq * (double)up[q][k]);
                acc[r * ldacc + q0 + q] += t;
            }
        }
    }
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

__attribute__((target("avx2,fma"))) static inline double hsum256(__m256 x)
{
    __m128 lo = _mm256_castps256_ps128(x), hi = _mm256_extractf128_ps(x, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return (double)_mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma"))) static void
l1_rows_avx2(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
             const float *const *w, const float *restrict u, int64_t ldu, const float *restrict a,
             int64_t lda, const float *restrict rs)
{
    const float *wp[LTT_TILE_R];
    for (int r = 0; r < LTT_TILE_R; r++)
        wp[r] = w[r < nr ? r : nr - 1];
    const int64_t nv = n - n % 8;
    for (int64_t q0 = 0; q0 < ns; q0 += LTT_TILE_Q) {
        const int nq = (ns - q0 < LTT_TILE_Q) ? (int)(ns - q0) : LTT_TILE_Q;
        const float *up[LTT_TILE_Q];
        float af[LTT_TILE_R][LTT_TILE_Q];
        for (int q = 0; q < LTT_TILE_Q; q++)
            up[q] = u + (q0 + (q < nq ? q : nq - 1)) * ldu;
        for (int r = 0; r < LTT_TILE_R; r++)
            for (int q = 0; q < LTT_TILE_Q; q++) {
                const int rr = r < nr ? r : nr - 1;
                af[r][q] = a[rr * lda + q0 + (q < nq ? q : nq - 1)] * rs[rr];
            }
        double tot[LTT_TILE_R][LTT_TILE_Q] = {{0.0}};
        int64_t j = 0;
        while (j < nv) {
            const int64_t end = (nv - j > FLUSH * 8) ? j + FLUSH * 8 : nv;
            __m256 s[LTT_TILE_R][LTT_TILE_Q];
            for (int r = 0; r < LTT_TILE_R; r++)
                for (int q = 0; q < LTT_TILE_Q; q++)
                    s[r][q] = _mm256_setzero_ps();
            for (; j < end; j += 8) {
                __m256 x[LTT_TILE_Q];
                for (int q = 0; q < LTT_TILE_Q; q++)
                    x[q] = _mm256_loadu_ps(up[q] + j);
                for (int r = 0; r < LTT_TILE_R; r++) {
                    const __m256 y = _mm256_loadu_ps(wp[r] + j);
                    for (int q = 0; q < LTT_TILE_Q; q++)
                        s[r][q] = _mm256_add_ps(
                            s[r][q], abs256(_mm256_fnmadd_ps(_mm256_set1_ps(af[r][q]), x[q], y)));
                }
            }
            for (int r = 0; r < LTT_TILE_R; r++)
                for (int q = 0; q < LTT_TILE_Q; q++)
                    tot[r][q] += hsum256(s[r][q]);
        }
        for (int r = 0; r < nr; r++) {
            for (int q = 0; q < nq; q++) {
                double t = tot[r][q];
                const double aq = af[r][q];
                for (int64_t k = nv; k < n; k++) /* scalar tail */
                    t += fabs((double)w[r][k] - aq * (double)up[q][k]);
                acc[r * ldacc + q0 + q] += t;
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

double ltt__norm(int64_t n, const float *restrict x, int norm)
{
    double s = 0.0;
    if (norm == 1) {
        for (int64_t j = 0; j < n; j++)
            s += fabs((double)x[j]);
        return s;
    }
    for (int64_t j = 0; j < n; j++)
        s += (double)x[j] * (double)x[j];
    return sqrt(s);
}

double ltt__dist(int64_t n, const float *restrict w, const float *restrict p, double a, int norm)
{
    double s = 0.0;
    if (norm == 1) {
        for (int64_t j = 0; j < n; j++)
            s += fabs((double)w[j] - a * (double)p[j]);
        return s;
    }
    for (int64_t j = 0; j < n; j++) {
        const double e = (double)w[j] - a * (double)p[j];
        s += e * e;
    }
    return sqrt(s);
}
