/* graph.c: threshold renormalisation and backward pruning of the contribution graph. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ltt_internal.h"

ltt_status ltt_renormalize_f32(int64_t K, int64_t T, int64_t S, int64_t E, double threshold,
                               float *restrict edges, float *restrict single_out,
                               const float *restrict heads, const float *restrict single)
{
    if (K <= 0 || T <= 0 || S <= 0 || E < 0)
        return LTT_ERR_SIZE;
    if (!(threshold >= 0.0 && threshold < 1.0))
        return LTT_ERR_THRESHOLD;
    if (edges == NULL || heads == NULL || (E > 0 && (single == NULL || single_out == NULL)))
        return LTT_ERR_NULL;
    /* Targets are independent (each writes its own row and column): threaded when large. */
    const int nt = ltt__threads(2.0 * (double)K * (double)T * (double)S);
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < T; t++) {
        /* The largest part, first in (k, s) then e order on ties, in case none is kept. */
        double best = 0.0, z = 0.0;
        int64_t best_s = -1, best_e = -1, nkept = 0;
        for (int64_t k = 0; k < K; k++) {
            const float *row = heads + (k * T + t) * S;
            for (int64_t s = 0; s < S; s++) {
                const double p = row[s];
                if ((best_s < 0 && best_e < 0) || p > best) {
                    best = p;
                    best_s = s;
                }
                if (p >= threshold) {
                    z += p;
                    nkept++;
                }
            }
        }
        for (int64_t e = 0; e < E; e++) {
            const double p = single[e * T + t];
            if (p > best) {
                best = p;
                best_e = e;
            }
            if (p >= threshold) {
                z += p;
                nkept++;
            }
        }
        float *erow = edges + t * S;
        for (int64_t s = 0; s < S; s++)
            erow[s] = 0.0f;
        for (int64_t e = 0; e < E; e++)
            single_out[e * T + t] = 0.0f;
        if (nkept == 0) {
            /* Every part is below the threshold: only the largest is kept, at share 1. */
            const float v = best != 0.0 ? 1.0f : 0.0f;
            if (best_e >= 0)
                single_out[best_e * T + t] = v;
            else
                erow[best_s] = v;
            continue;
        }
        const double scale = z > 0.0 ? 1.0 / z : 1.0; /* kept parts all zero stay zero */
        for (int64_t s = 0; s < S; s++) {
            double v = 0.0; /* sum over k in double */
            for (int64_t k = 0; k < K; k++) {
                const double p = heads[(k * T + t) * S + s];
                if (p >= threshold)
                    v += p;
            }
            erow[s] = (float)(v * scale);
        }
        for (int64_t e = 0; e < E; e++) {
            const double p = single[e * T + t];
            if (p >= threshold)
                single_out[e * T + t] = (float)(p * scale);
        }
    }
    return LTT_OK;
}

/* Growable list of (l, t, s) rows. */
typedef struct {
    int64_t *v;
    int64_t n, cap;
} edge_list;

static int push_edge(edge_list *e, int64_t l, int64_t t, int64_t s)
{
    if (e->n == e->cap) {
        const int64_t cap = e->cap ? 2 * e->cap : 1024;
        int64_t *v = realloc(e->v, (size_t)cap * 3 * sizeof(int64_t));
        if (v == NULL)
            return -1;
        e->v = v;
        e->cap = cap;
    }
    e->v[3 * e->n] = l;
    e->v[3 * e->n + 1] = t;
    e->v[3 * e->n + 2] = s;
    e->n++;
    return 0;
}

/*
 * Keep the incoming edges of one reached node: residual weight r (flag *kr), an optional FFN
 * weight f (flag *kf, has_f), attention weights row[0..ns). Marks reached sources in `in`.
 * Returns -1 on allocation failure, -2 when the row holds NaN or inf (only scanned rows are
 * checked, so a huge attention tensor is never read in full).
 */
/* The smallest float f with (double)f >= threshold: comparing floats with it decides exactly
 * what comparing their double values with the threshold decides. */
static float float_threshold(double threshold)
{
    float tf = (float)threshold;
    if ((double)tf < threshold)
        tf = nextafterf(tf, INFINITY);
    return tf;
}

static int keep_incoming(double threshold, float tf, int64_t l, int64_t t, double r, uint8_t *kr,
                         int has_f, double f, uint8_t *kf, const float *row, int64_t ns,
                         uint8_t *in, edge_list *edges)
{
    int any = 0;
    if (r >= threshold) {
        *kr = 1;
        in[t] = 1;
        any = 1;
    }
    if (has_f && f >= threshold) {
        *kf = 1;
        in[t] = 1;
        any = 1;
    }
    /* One pass over the row in blocks: a vectorisable scan for non-finite values and for any
     * source at or above the threshold, then a scalar walk of the (rare) blocks that hold one. */
    for (int64_t s0 = 0; s0 < ns; s0 += 64) {
        const int64_t s1 = s0 + 64 < ns ? s0 + 64 : ns;
        int hit = 0, bad = 0;
        for (int64_t s = s0; s < s1; s++) {
            hit |= row[s] >= tf;
            bad |= !(fabsf(row[s]) <= FLT_MAX);
        }
        if (bad)
            return -2;
        if (!hit)
            continue;
        for (int64_t s = s0; s < s1; s++) {
            if (row[s] >= tf) {
                if (push_edge(edges, l, t, s) < 0)
                    return -1;
                in[s] = 1;
                any = 1;
            }
        }
    }
    if (any)
        return 0;
    /* None reaches the threshold: the largest, ties to residual, then FFN, then smallest s. */
    double best = r;
    int64_t which = -2; /* -2 residual, -1 FFN, s >= 0 attention */
    if (has_f && f > best) {
        best = f;
        which = -1;
    }
    for (int64_t s = 0; s < ns; s++)
        if ((double)row[s] > best) {
            best = row[s];
            which = s;
        }
    if (which == -2)
        *kr = 1;
    else if (which == -1)
        *kf = 1;
    else if (push_edge(edges, l, t, which) < 0)
        return -1;
    in[which >= 0 ? which : t] = 1;
    return 0;
}

ltt_status ltt_prune_f32(int64_t L, int64_t T, int64_t n_targets, double threshold,
                         uint8_t *restrict keep_attn_resid, uint8_t *restrict keep_ffn,
                         uint8_t *restrict keep_ffn_resid, int64_t **edges_out,
                         int64_t *restrict n_edges, const float *restrict attn,
                         const float *restrict attn_resid, const float *restrict ffn,
                         const float *restrict ffn_resid, const uint8_t *restrict parallel,
                         const int64_t *restrict targets)
{
    if (L <= 0 || T <= 0 || n_targets < 0)
        return LTT_ERR_SIZE;
    if (!(threshold >= 0.0 && threshold < 1.0))
        return LTT_ERR_THRESHOLD;
    if (edges_out == NULL || n_edges == NULL || attn == NULL || attn_resid == NULL || ffn == NULL ||
        ffn_resid == NULL || parallel == NULL || (n_targets > 0 && targets == NULL) ||
        keep_attn_resid == NULL || keep_ffn == NULL || keep_ffn_resid == NULL)
        return LTT_ERR_NULL;
    *edges_out = NULL;
    *n_edges = 0;
    for (int64_t i = 0; i < n_targets; i++)
        if (targets[i] < 0 || targets[i] >= T)
            return LTT_ERR_INDEX;
    const size_t LT = (size_t)L * (size_t)T;
    memset(keep_attn_resid, 0, LT);
    memset(keep_ffn, 0, LT);
    memset(keep_ffn_resid, 0, LT);
    uint8_t *out = calloc((size_t)T, 1), *in = calloc((size_t)T, 1);
    int64_t *start = malloc((size_t)(L + 1) * sizeof(int64_t));
    edge_list e = {NULL, 0, 0};
    ltt_status st = LTT_OK;
    if (out == NULL || in == NULL || start == NULL) {
        st = LTT_ERR_NOMEM;
        goto done;
    }
    for (int64_t i = 0; i < n_targets; i++)
        out[targets[i]] = 1;
    const float tf = float_threshold(threshold);
    /* Layers are visited from the top; start[l] marks where layer l's edges begin in e. */
    for (int64_t l = L - 1; l >= 0; l--) {
        start[l] = e.n;
        memset(in, 0, (size_t)T);
        const size_t o = (size_t)l * (size_t)T;
        const float *al = attn + o * (size_t)T;
        for (int64_t t = 0; t < T; t++) {
            if (!out[t])
                continue;
            int rc;
            if (parallel[l]) {
                rc = keep_incoming(threshold, tf, l, t, attn_resid[o + t], &keep_attn_resid[o + t],
                                   1, ffn[o + t], &keep_ffn[o + t], al + t * T, t + 1, in, &e);
            } else {
                /* I{l}_t <- A{l}_t by the residual and/or the FFN route (A{l}_t is reached either
                 * way), then A{l}_t's own incoming edges. */
                const double fr = ffn_resid[o + t], ff = ffn[o + t];
                if (fr >= threshold || ff >= threshold) {
                    keep_ffn_resid[o + t] = fr >= threshold;
                    keep_ffn[o + t] = ff >= threshold;
                } else if (fr >= ff) {
                    keep_ffn_resid[o + t] = 1;
                } else {
                    keep_ffn[o + t] = 1;
                }
                rc = keep_incoming(threshold, tf, l, t, attn_resid[o + t], &keep_attn_resid[o + t],
                                   0, 0.0, NULL, al + t * T, t + 1, in, &e);
            }
            if (rc < 0) {
                st = rc == -1 ? LTT_ERR_NOMEM : LTT_ERR_NONFINITE;
                goto done;
            }
        }
        uint8_t *tmp = out;
        out = in;
        in = tmp;
    }
    start[L] = e.n;
    /* Layer order is reversed in e; within a layer rows are already sorted by (t, s). */
    if (e.n > 0) {
        int64_t *sorted = malloc((size_t)e.n * 3 * sizeof(int64_t));
        if (sorted == NULL) {
            st = LTT_ERR_NOMEM;
            goto done;
        }
        int64_t k = 0;
        for (int64_t l = 0; l < L; l++) {
            const int64_t end = (l == 0) ? e.n : start[l - 1];
            const int64_t n = end - start[l];
            memcpy(sorted + 3 * k, e.v + 3 * start[l], (size_t)n * 3 * sizeof(int64_t));
            k += n;
        }
        *edges_out = sorted;
        *n_edges = e.n;
    }
done:
    free(e.v);
    free(out);
    free(in);
    free(start);
    return st;
}
