/* contrib.c: the proximity primitive, shares of K parts in M wholes; output vectors under a
 * post-branch norm (attn.c and ffn.c). */
#include <stdlib.h>

#include "ltt_internal.h"

ltt_status ltt_contributions_f32(int64_t K, int64_t M, int64_t d, int norm, float *restrict out,
                                 const float *restrict parts, const float *restrict whole)
{
    if (K <= 0 || M < 0 || d <= 0)
        return LTT_ERR_SIZE;
    if (norm != 1 && norm != 2)
        return LTT_ERR_NORM;
    if (out == NULL || parts == NULL || whole == NULL)
        return M == 0 ? LTT_OK : LTT_ERR_NULL;
    /* Raws stay in double until each whole's total is known: out holds none of them. */
    double *raw = malloc((size_t)(K * M) * sizeof(double));
    if (raw == NULL)
        return LTT_ERR_NOMEM;
    const int nt = ltt__threads((double)(K + 1) * (double)M * (double)d);
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
    for (int64_t m = 0; m < M; m++) {
        const float *w = whole + m * d;
        const double nw = ltt__norm(d, w, norm);
        double z = 0.0;
        for (int64_t k = 0; k < K; k++) {
            const double r = ltt__raw(nw, ltt__dist(d, w, parts + (k * M + m) * d, 1.0, norm));
            raw[k * M + m] = r;
            z += r;
        }
        for (int64_t k = 0; k < K; k++)
            out[k * M + m] = (float)(raw[k * M + m] / z);
    }
    free(raw);
    return LTT_OK;
}

float *ltt__fold_rows(int64_t rows, int64_t d, const float *restrict w, int64_t sr, int64_t sj,
                      int center, const float *restrict col_scale)
{
    float *out = malloc((size_t)rows * (size_t)d * sizeof(float));
    if (out == NULL)
        return NULL;
    for (int64_t k = 0; k < rows; k++) {
        float *o = out + k * d;
        double mean = 0.0;
        for (int64_t j = 0; j < d; j++) {
            o[j] = w[k * sr + j * sj];
            mean += o[j];
        }
        mean = center ? mean / (double)d : 0.0;
        for (int64_t j = 0; j < d; j++) {
            const double x = (double)o[j] - mean;
            o[j] = (float)(col_scale != NULL ? x * col_scale[j] : x);
        }
    }
    return out;
}
