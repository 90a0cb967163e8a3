/* check.c: the running exactness check of a trace. A layer's decomposition (heads + bias +
 * residual, neurons + bias) is rebuilt at a few rows and compared with the model's own states
 * along k directions of the residual stream (Freivalds' check): per row and direction
 * |(lhs - state) . z_c| / ||state||_2, the max over rows and directions (k <= 16). */
#include <math.h>
#include <stdlib.h>

#include "ltt_internal.h"

/* out[c] = sum_i v[i] * m[i * k + c] for c < k, in double (m is [n, k], row-major); with k = 4
 * (the trace's directions) the SIMD kernel of simd.c. */
static void along(int64_t n, int64_t k, const float *restrict v, const double *restrict m,
                  double *restrict out)
{
    if (k == 4) {
        ltt__along4(n, v, m, out);
        return;
    }
    double acc[16] = {0.0};
    for (int64_t i = 0; i < n; i++) {
        const double x = (double)v[i];
        for (int64_t c = 0; c < k; c++)
            acc[c] += x * m[i * k + c];
    }
    for (int64_t c = 0; c < k; c++)
        out[c] = acc[c];
}

/* lhs[c] += v . m[:, c] for c < k (tmp: k scratch doubles). */
static void add_along(int64_t n, int64_t k, const float *restrict v, const double *restrict m,
                      double *restrict lhs, double *restrict tmp)
{
    along(n, k, v, m, tmp);
    for (int64_t c = 0; c < k; c++)
        lhs[c] += tmp[c];
}

/* The larger of the two; a NaN on either side stays (an error that is NaN is never hidden). */
static double worse(double worst, double e)
{
    return (e > worst || isnan(e)) && !isnan(worst) ? e : worst;
}

/* max over c of |lhs[c] - state . z_c| / (||state||_2 + 1e-12), folded into *worst. */
static void compare(const ltt_probe_inputs *p, const double *restrict lhs, const float *restrict state,
                    double *restrict tmp, double *restrict worst)
{
    along(p->d, p->k, state, p->z, tmp);
    const double scale = ltt__norm(p->d, state, 2) + 1e-12;
    for (int64_t c = 0; c < p->k; c++)
        *worst = worse(*worst, fabs(lhs[c] - tmp[c]) / scale);
}

ltt_status ltt_probe_check(const ltt_probe_inputs *p, double *restrict errors)
{
    const int64_t T = p->T, R = p->R, H = p->H, G = p->G, dh = p->d_h, d = p->d, F = p->F, k = p->k;
    if (T <= 0 || R <= 0 || H <= 0 || G <= 0 || dh <= 0 || d <= 0 || F <= 0 || k <= 0 || k > 16 ||
        H % G)
        return LTT_ERR_SIZE;
    if (p->rows == NULL || p->probs == NULL || p->values == NULL || p->o == NULL ||
        p->down == NULL || p->z == NULL || p->resid_pre == NULL || p->resid_post == NULL ||
        p->ffn_out == NULL || p->act == NULL)
        return LTT_ERR_NULL;
    for (int64_t j = 0; j < R; j++)
        if (p->rows[j] < 0 || p->rows[j] >= T)
            return LTT_ERR_INDEX;
    /* each head's values along its directions, vp [H, T, k], from o in double od [H, d_h, k] */
    double *vp = malloc((size_t)(H * T * k + H * dh * k + 3 * k) * sizeof(double));
    if (vp == NULL)
        return LTT_ERR_NOMEM;
    double *od = vp + H * T * k, *lhs = od + H * dh * k, *tmp = lhs + k, *tmp2 = tmp + k;
    for (int64_t i = 0; i < H * dh * k; i++)
        od[i] = (double)p->o[i];
    const int64_t per = H / G;
    for (int64_t h = 0; h < H; h++)
        for (int64_t s = 0; s < T; s++)
            along(dh, k, p->values + (s * G + h / per) * dh, od + h * dh * k, vp + (h * T + s) * k);
    double attn_err = 0.0, ffn_err = 0.0, neuron_err = 0.0;
    for (int64_t j = 0; j < R; j++) {
        const int64_t t = p->rows[j];
        /* the attention branch along z: heads, then its row scale and bias, plus the residual */
        for (int64_t c = 0; c < k; c++)
            lhs[c] = 0.0;
        for (int64_t h = 0; h < H; h++)
            add_along(T, k, p->probs + (h * R + j) * T, vp + h * T * k, lhs, tmp);
        if (p->attn_row_scale != NULL)
            for (int64_t c = 0; c < k; c++)
                lhs[c] *= (double)p->attn_row_scale[t];
        if (p->attn_bias != NULL)
            add_along(d, k, p->attn_bias + t * d, p->z, lhs, tmp);
        add_along(d, k, p->resid_pre + t * d, p->z, lhs, tmp);
        if (p->resid_mid == NULL) { /* a parallel block: both branches against the layer's output */
            add_along(d, k, p->ffn_out + t * d, p->z, lhs, tmp);
            compare(p, lhs, p->resid_post + t * d, tmp2, &attn_err);
        } else {
            compare(p, lhs, p->resid_mid + t * d, tmp2, &attn_err);
            /* the FFN block's sum of two recorded states, in full */
            const float *mid = p->resid_mid + t * d, *f = p->ffn_out + t * d, *post = p->resid_post + t * d;
            double num = 0.0, den = 0.0;
            for (int64_t i = 0; i < d; i++) {
                num = worse(num, fabs((double)mid[i] + (double)f[i] - (double)post[i]));
                den = worse(den, fabs((double)post[i]));
            }
            ffn_err = worse(ffn_err, num / (den + 1e-12));
        }
        /* the neurons along z, then the FFN's row scale and bias */
        along(F, k, p->act + t * F, p->down, lhs);
        if (p->ffn_row_scale != NULL)
            for (int64_t c = 0; c < k; c++)
                lhs[c] *= (double)p->ffn_row_scale[t];
        if (p->ffn_bias != NULL)
            add_along(d, k, p->ffn_bias + t * d, p->z, lhs, tmp);
        compare(p, lhs, p->ffn_out + t * d, tmp2, &neuron_err);
    }
    free(vp);
    errors[0] = attn_err;
    errors[1] = p->resid_mid == NULL ? 0.0 : ffn_err;
    errors[2] = neuron_err;
    return LTT_OK;
}
