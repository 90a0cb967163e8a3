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
 * Row tile of the L1 proximity kernel: for r < nr, q < nq,
 *   acc[r * nq + q] += sum_{j < n} |w[r][j] - a[r * nq + q] * u[q][j]|   (in double)
 * with nr <= LTT_TILE_R, nq <= LTT_TILE_Q. Dispatched at run time to AVX-512 / AVX2 / scalar.
 */
#define LTT_TILE_R 4
#define LTT_TILE_Q 2
void ltt__l1_tile(int64_t n, int nr, int nq, double *restrict acc, const float *const *w,
                  const float *const *u, const float *restrict a);

/*
 * Column kernel of the L1 proximity for a neuron matrix stored [d, F] (neurons contiguous):
 *   acc[i] += sum_{j < n} |w[j] - c[i] * m[j * ld + i]|  for i < nf   (in double)
 */
void ltt__l1_cols(int64_t n, int64_t nf, int64_t ld, double *restrict acc,
                  const float *restrict w, const float *restrict m, const float *restrict c);

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

#endif /* LTT_INTERNAL_H */
