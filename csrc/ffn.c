/* ffn.c: contributions of FFN neurons to the states after the FFN. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ltt_blas.h"
#include "ltt_internal.h"

/* L1, neurons as rows: a column chunk of L1_COLS coordinates of LTT_TILE_R token rows stays
 * in L1, and the chunk of one block of neurons (M_BLOCK_BYTES) in L2. */
#define L1_COLS 1024
#define M_BLOCK_BYTES (1 << 19)
/* Neurons per block in the [d, F] layout, and rows per chunk. */
#define COL_BLOCK 256
#define ROW_CHUNK 256
#define L2_REFINE 0.1

/* ||w - a m_i|| in double with m_i's coordinates si apart... any stride. */
static double dist_strided(int64_t d, const float *w, const float *m, int64_t sj, double a,
                           int norm)
{
    double s = 0.0;
    for (int64_t j = 0; j < d; j++) {
        const double e = (double)w[j] - a * (double)m[j * sj];
        s += norm == 1 ? fabs(e) : e * e;
    }
    return norm == 1 ? s : sqrt(s);
}

/*
 * L1, neurons as rows [F, d]: each thread takes whole blocks of neurons (every token, every
 * coordinate), so there is no barrier inside; the block's column chunk stays in L2 while the
 * tokens' row blocks pass over it.
 */
static void dist_l1_rows(int nt, int64_t N, int64_t F, int64_t d, double *restrict dist,
                         const float *restrict whole, const float *restrict m,
                         const float *restrict c)
{
    const int64_t D = d < L1_COLS ? d : L1_COLS;
    int64_t FB = M_BLOCK_BYTES / (4 * D);
    FB -= FB % 16;
    if (FB < 16)
        FB = 16;
    const int64_t nblk = (F + FB - 1) / FB;
    memset(dist, 0, (size_t)(N * F) * sizeof(double));
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
    for (int64_t b = 0; b < nblk; b++) {
        const int64_t i0 = b * FB, nf = (F - i0 < FB) ? F - i0 : FB;
        const float ones[LTT_TILE_R] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
        for (int64_t j0 = 0; j0 < d; j0 += D) {
            const int64_t n = (d - j0 < D) ? d - j0 : D;
            for (int64_t t0 = 0; t0 < N; t0 += LTT_TILE_R) {
                const int nr = (int)((N - t0 < LTT_TILE_R) ? N - t0 : LTT_TILE_R);
                const float *w[LTT_TILE_R];
                for (int r = 0; r < nr; r++)
                    w[r] = whole + (t0 + r) * d + j0;
                ltt__l1_rows(n, nr, nf, dist + t0 * F + i0, F, w, m + i0 * d + j0, d,
                             c + t0 * F + i0, F, ones);
            }
        }
    }
}

/* L1, neurons as columns [d, F] (a torch Linear weight seen through .T): neurons contiguous. */
static void dist_l1_cols(int nt, int64_t N, int64_t F, int64_t d, double *restrict dist,
                         const float *restrict whole, const float *restrict m,
                         const float *restrict c)
{
    memset(dist, 0, (size_t)(N * F) * sizeof(double));
    const int64_t nblk = (F + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
    for (int64_t b = 0; b < nblk; b++) {
        const int64_t i0 = b * COL_BLOCK;
        const int64_t nf = (F - i0 < COL_BLOCK) ? F - i0 : COL_BLOCK;
        for (int64_t j0 = 0; j0 < d; j0 += ROW_CHUNK) {
            const int64_t n = (d - j0 < ROW_CHUNK) ? d - j0 : ROW_CHUNK;
            for (int64_t t = 0; t < N; t++)
                ltt__l1_cols(n, nf, F, dist + t * F + i0, whole + t * d + j0, m + j0 * F + i0,
                             c + t * F + i0);
        }
    }
}

ltt_status ltt_ffn_neuron_contrib_f32(int64_t N, int64_t F, int64_t d, int64_t wd_stride_i,
                                      int64_t wd_stride_j, int64_t bias_row_stride, int norm,
                                      float *restrict neurons, float *restrict resid_out,
                                      float *restrict bias_out, double *restrict total,
                                      const float *restrict act, const float *restrict w_down,
                                      const float *restrict resid, const float *restrict whole,
                                      const float *restrict bias, ltt_norm_fix fix)
{
    if (N <= 0 || F <= 0 || d <= 0 || bias_row_stride < 0)
        return LTT_ERR_SIZE;
    int rows; /* neurons are rows [F, d] (1) or columns [d, F] (0) */
    if (wd_stride_i == d && wd_stride_j == 1)
        rows = 1;
    else if (wd_stride_i == 1 && wd_stride_j == F)
        rows = 0;
    else
        return LTT_ERR_SIZE;
    if (norm != 1 && norm != 2)
        return LTT_ERR_NORM;
    if (!neurons || !resid_out || !bias_out || !total || !act || !w_down || !resid || !whole)
        return LTT_ERR_NULL;

    ltt_status st = LTT_OK;
    float *wt = NULL, *c = malloc((size_t)(N * F) * sizeof(float));
    double *dist = malloc((size_t)(N * F) * sizeof(double));
    double *wn = malloc((size_t)N * sizeof(double));
    float *dots = NULL;
    double *un2 = NULL;
    if (!c || !dist || !wn) {
        st = LTT_ERR_NOMEM;
        goto done;
    }
    const float *m = w_down;
    if (fix.center || fix.col_scale != NULL) {
        /* A post-branch norm: transform each neuron vector once, into [F, d]. */
        if ((wt = ltt__fold_rows(F, d, w_down, wd_stride_i, wd_stride_j, fix.center,
                                 fix.col_scale)) == NULL) {
            st = LTT_ERR_NOMEM;
            goto done;
        }
        m = wt;
        rows = 1;
    }
    for (int64_t t = 0; t < N; t++) {
        const float rs = fix.row_scale != NULL ? fix.row_scale[t] : 1.0f;
        for (int64_t i = 0; i < F; i++)
            c[t * F + i] = act[t * F + i] * rs;
        wn[t] = ltt__norm(d, whole + t * d, norm);
    }
    const int64_t sj = rows ? 1 : F, si = rows ? d : 1;
    const int nt = ltt__threads((double)N * (double)F * (double)d);

    if (norm == 1) {
        if (rows)
            dist_l1_rows(nt, N, F, d, dist, whole, m, c);
        else
            dist_l1_cols(nt, N, F, d, dist, whole, m, c);
    } else {
        dots = malloc((size_t)(N * F) * sizeof(float));
        un2 = malloc((size_t)F * sizeof(double));
        if (!dots || !un2) {
            st = LTT_ERR_NOMEM;
            goto done;
        }
        ltt__sgemm(nt, rows, N, F, d, whole, d, m, rows ? d : F, dots, F);
        for (int64_t i = 0; i < F; i++)
            un2[i] = 0.0;
        for (int64_t j = 0; j < d; j++) /* row-major walk in either layout */
            for (int64_t i = 0; i < F; i++) {
                const double x = m[i * si + j * sj];
                un2[i] += x * x;
            }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
        for (int64_t t = 0; t < N; t++) {
            const double w2 = wn[t] * wn[t];
            for (int64_t i = 0; i < F; i++) {
                const double a = c[t * F + i];
                const double dot = dots[t * F + i];
                const double big = w2 + a * a * un2[i];
                const double e2 = big - 2.0 * a * dot;
                const double scale = sqrt(w2 * un2[i]);
                if (isfinite(dot) && e2 > L2_REFINE * big && scale < 1e30 && scale > 1e-30)
                    dist[t * F + i] = sqrt(e2);
                else
                    dist[t * F + i] = dist_strided(d, whole + t * d, m + i * si, sj, a, 2);
            }
        }
    }

    for (int64_t t = 0; t < N; t++) {
        const float *w = whole + t * d;
        const double rr = ltt__raw(wn[t], ltt__dist(d, w, resid + t * d, 1.0, norm));
        const double rb =
            bias != NULL ? ltt__raw(wn[t], ltt__dist(d, w, bias + t * bias_row_stride, 1.0, norm))
                         : 0.0;
        double z = rr + rb;
        double *dt = dist + t * F;
        for (int64_t i = 0; i < F; i++) {
            dt[i] = ltt__raw(wn[t], dt[i]);
            z += dt[i];
        }
        total[t] = z;
        const double inv = 1.0 / z;
        for (int64_t i = 0; i < F; i++)
            neurons[t * F + i] = (float)(dt[i] * inv);
        resid_out[t] = (float)(rr * inv);
        bias_out[t] = (float)(rb * inv);
    }
done:
    free(wt);
    free(c);
    free(dist);
    free(wn);
    free(dots);
    free(un2);
    return st;
}
