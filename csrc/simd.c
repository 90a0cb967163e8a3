/* simd.c: the hot L1 distance loops, in AVX-512, AVX2 and scalar variants chosen at run time
 * (the vector bodies are written once, in simd_kernels.h over vec.h). */
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

/* out[c] = sum_i v[i] m[4 i + c] for c < 4, in double (four partial sums, i mod 4). */
static void along4_scalar(int64_t n, const float *restrict v, const double *restrict m,
                          double *restrict out)
{
    double acc[4][4] = {{0.0}};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int64_t u = 0; u < 4; u++)
            for (int c = 0; c < 4; c++)
                acc[u][c] += (double)v[i + u] * m[4 * (i + u) + c];
    for (; i < n; i++)
        for (int c = 0; c < 4; c++)
            acc[0][c] += (double)v[i] * m[4 * i + c];
    for (int c = 0; c < 4; c++)
        out[c] = (acc[0][c] + acc[1][c]) + (acc[2][c] + acc[3][c]);
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

/* The vector kernels, one body each (simd_kernels.h), compiled for AVX-512 and for AVX2. */
#define LTT_VEC 512
#include "simd_kernels.h"
#undef LTT_VEC
#define LTT_VEC 256
#include "simd_kernels.h"
#undef LTT_VEC
#endif /* LTT_X86 */

/* ---- run-time dispatch ------------------------------------------------------------------- */

/* The kernels of one variant. */
typedef struct {
    void (*l1_rows)(int64_t, int, int64_t, double *restrict, int64_t, const float *const *,
                    const float *restrict, int64_t, const float *restrict, int64_t,
                    const float *restrict);
    void (*l1_cols)(int64_t, int64_t, int64_t, double *restrict, const float *restrict,
                    const float *restrict, const float *restrict);
    double (*raw_row)(int64_t, double, const double *restrict, double *restrict, float *restrict);
    double (*dist_sum)(int64_t, const float *restrict, const float *restrict, double, int);
    void (*along4)(int64_t, const float *restrict, const double *restrict, double *restrict);
} kernels;

static const kernels k_scalar = {l1_rows_scalar, l1_cols_scalar, raw_row_scalar, dist_sum_scalar,
                                   along4_scalar};
#ifdef LTT_X86
static const kernels k_avx2 = {l1_rows_avx2, l1_cols_avx2, raw_row_avx2, dist_sum_avx2,
                                 along4_avx2};
static const kernels k_avx512 = {l1_rows_avx512, l1_cols_avx512, raw_row_avx512,
                                   dist_sum_avx512, along4_avx512};
#endif

static const kernels *pick_kernels(void)
{
#ifdef LTT_X86
    switch (pick_variant()) {
    case V_AVX512:
        return &k_avx512;
    case V_AVX2:
        return &k_avx2;
    default:
        break;
    }
#endif
    return &k_scalar;
}

void ltt__l1_rows(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
                  const float *const *w, const float *restrict u, int64_t ldu,
                  const float *restrict a, int64_t lda, const float *restrict rs)
{
    pick_kernels()->l1_rows(n, nr, ns, acc, ldacc, w, u, ldu, a, lda, rs);
}

void ltt__l1_cols(int64_t n, int64_t nf, int64_t ld, double *restrict acc, const float *restrict w,
                  const float *restrict m, const float *restrict c)
{
    pick_kernels()->l1_cols(n, nf, ld, acc, w, m, c);
}

double ltt__raw_row(int64_t n, double nw, const double *restrict dist, double *restrict er,
                    float *restrict hrow)
{
    return pick_kernels()->raw_row(n, nw, dist, er, hrow);
}

void ltt__along4(int64_t n, const float *restrict v, const double *restrict m, double *restrict out)
{
    pick_kernels()->along4(n, v, m, out);
}

/* ---- norms and distances in double ------------------------------------------------------ */

double ltt__norm(int64_t n, const float *restrict x, int norm)
{
    const double s = pick_kernels()->dist_sum(n, x, NULL, 0.0, norm);
    return norm == 1 ? s : sqrt(s);
}

double ltt__dist(int64_t n, const float *restrict w, const float *restrict p, double a, int norm)
{
    const double s = pick_kernels()->dist_sum(n, w, p, a, norm);
    return norm == 1 ? s : sqrt(s);
}
