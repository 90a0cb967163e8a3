/* ltt_internal.h: helpers shared by the core's C files (not part of the public API). */
#ifndef LTT_INTERNAL_H
#define LTT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ltt_core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/*
 * Row block of the L1 proximity kernel: for r < nr (<= LTT_TILE_R) and q < ns,
 *   acc[r * ldacc + q] += sum_{j < n} |w[r][j] - a[r * lda + q] * rs[r] * u[q * ldu + j]|
 * in double (float partial sums, flushed). Each u load feeds up to 8 rows (AVX-512; 4 with
 * AVX2). Dispatched at run time to AVX-512 / AVX2 / scalar.
 */
#define LTT_TILE_R 8
void ltt__l1_rows(int64_t n, int nr, int64_t ns, double *restrict acc, int64_t ldacc,
                  const float *const *w, const float *restrict u, int64_t ldu,
                  const float *restrict a, int64_t lda, const float *restrict rs);

/*
 * C = A B^T (trans_b) or A B for row-major float matrices, one OpenBLAS call per fixed block of
 * C (so no value depends on the thread count). With threads > 1 the blocks are shared by that
 * many OpenMP threads, OpenBLAS single-threaded inside each (no OpenBLAS pool fighting OpenMP).
 */
void ltt__sgemm(int threads, int trans_b, int64_t M, int64_t N, int64_t K, const float *A,
                int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc);

/* The number of fixed blocks of an M x N product, and block b alone (ltt__sgemm's arguments):
 * for callers that share the blocks among their own threads. */
int64_t ltt__sgemm_blocks(int64_t M, int64_t N);
void ltt__sgemm_block(int64_t b, int trans_b, int64_t M, int64_t N, int64_t K, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc);

/*
 * Threads for a call of about `work` element operations: 1 below the small-work cutoff or inside
 * a parallel region, else ltt_get_num_threads(). The environment variable LTT_PAR_MIN_WORK moves
 * the cutoff (tests set 0 to thread every call). Every kernel reduces in an order that does not
 * depend on this number: results are bitwise the same for any thread count.
 */
int ltt__threads(double work);

/*
 * Column kernel of the L1 proximity for a neuron matrix stored [d, F] (neurons contiguous):
 *   acc[i] += sum_{j < n} |w[j] - c[i] * m[j * ld + i]|  for i < nf   (in double)
 */
void ltt__l1_cols(int64_t n, int64_t nf, int64_t ld, double *restrict acc, const float *restrict w,
                  const float *restrict m, const float *restrict c);

/* out[c] = sum_i v[i] m[4 i + c] for c < 4: a float vector along 4 directions (m [n, 4] double). */
void ltt__along4(int64_t n, const float *restrict v, const double *restrict m, double *restrict out);

/* Norm of a float vector in double: sum |x| (norm 1) or sqrt(sum x^2) (norm 2). */
double ltt__norm(int64_t n, const float *restrict x, int norm);

/* ||w - p|| in double, both float vectors; p scaled by a. */
double ltt__dist(int64_t n, const float *restrict w, const float *restrict p, double a, int norm);

/* Raw contribution max(nw - dist, LTT_EPS). */
static inline double ltt__raw(double nw, double dist)
{
    double r = nw - dist;
    return r > LTT_EPS ? r : LTT_EPS;
}

/*
 * Raws of one row, r_s = ltt__raw(nw, dist[s]) for s < n: er[s] += r_s, hrow[s] = (float)r_s
 * unless hrow is NULL. Returns the sum of the r_s (in double, lanes summed apart).
 */
double ltt__raw_row(int64_t n, double nw, const double *restrict dist, double *restrict er,
                    float *restrict hrow);

/*
 * A post-branch norm folded into output vectors (rows of w, read with strides (sr, sj)):
 * out[k, j] = (w[k, j] - mean_k) * col_scale[j], mean_k the row's mean in double when center is
 * set (else 0), col_scale NULL for none. Returns a new [rows, d] array in C order, or NULL when
 * out of memory; the caller frees it.
 */
float *ltt__fold_rows(int64_t rows, int64_t d, const float *restrict w, int64_t sr, int64_t sj,
                      int center, const float *restrict col_scale);

#endif /* LTT_INTERNAL_H */
