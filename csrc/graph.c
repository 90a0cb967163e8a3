/* graph.c: threshold renormalisation and backward pruning of the contribution graph. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ltt_internal.h"

/* One part p of a target, in order: added to *z and counted when >= threshold. Returns whether
 * it is the new largest: strictly larger than *best (the first one wins ties), or `first`. */
static inline int renorm_take(double p, double threshold, int first, double *best, double *z,
                              int64_t *nkept)
{
    if (p >= threshold) {
        *z += p;
        (*nkept)++;
    }
    if (first || p > *best) {
        *best = p;
        return 1;
    }
    return 0;
}

/* The single parts of target t (after its head parts): the largest (then *best_e = e), and the
 * sum and count of those >= threshold. */
static void renorm_scan_single(int64_t E, int64_t T, int64_t t, double threshold,
                               const float *restrict single, double *best, int64_t *best_e,
                               double *z, int64_t *nkept)
{
    for (int64_t e = 0; e < E; e++)
        if (renorm_take(single[e * T + t], threshold, 0, best, z, nkept))
            *best_e = e;
}

/*
 * Writes target t's single shares and returns the factor of its kept head parts (1 / z, or 1
 * when the kept parts are all 0). When nothing is kept, the largest part alone gets share 1 (0
 * when it is 0): the single best_e when there is one, else the head part, whose share is *one
 * (the returned factor is then 0).
 */
static double renorm_finish(int64_t E, int64_t T, int64_t t, double threshold, double best,
                            int64_t best_e, double z, int64_t nkept, const float *restrict single,
                            float *restrict single_out, float *one)
{
    const float v = best != 0.0 ? 1.0f : 0.0f;
    const double scale = nkept == 0 ? 0.0 : z > 0.0 ? 1.0 / z : 1.0;
    for (int64_t e = 0; e < E; e++) {
        const double p = single[e * T + t];
        if (nkept == 0)
            single_out[e * T + t] = e == best_e ? v : 0.0f;
        else
            single_out[e * T + t] = p >= threshold ? (float)(p * scale) : 0.0f;
    }
    *one = nkept == 0 && best_e < 0 ? v : 0.0f;
    return scale;
}

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
            for (int64_t s = 0; s < S; s++)
                if (renorm_take(row[s], threshold, best_s < 0, &best, &z, &nkept))
                    best_s = s;
        }
        renorm_scan_single(E, T, t, threshold, single, &best, &best_e, &z, &nkept);
        float one;
        const double scale =
            renorm_finish(E, T, t, threshold, best, best_e, z, nkept, single, single_out, &one);
        float *erow = edges + t * S;
        if (nkept == 0) {
            /* Every part is below the threshold: only the largest is kept, at share 1. */
            for (int64_t s = 0; s < S; s++)
                erow[s] = 0.0f;
            erow[best_s] = one;
            continue;
        }
        for (int64_t s = 0; s < S; s++) {
            double v = 0.0; /* sum over k in double */
            for (int64_t k = 0; k < K; k++) {
                const double p = heads[(k * T + t) * S + s];
                if (p >= threshold)
                    v += p;
            }
            erow[s] = (float)(v * scale);
        }
    }
    return LTT_OK;
}

/* Whether entry j of a row with entries from j0 (target t, heads or NULL) breaks the rules. */
static int entry_bad(int64_t j, int64_t j0, int64_t t, const int32_t *restrict sources,
                     const int16_t *restrict heads)
{
    const int64_t s = sources[j], h = heads != NULL ? heads[j] : 0;
    if (s < 0 || s > t || h < 0)
        return 1;
    if (j == j0)
        return 0;
    const int64_t ps = sources[j - 1], ph = heads != NULL ? heads[j - 1] : 0;
    return h < ph || (h == ph && s <= ps);
}

ltt_status ltt_sparse_check(int64_t R, int64_t T, int64_t nnz, int64_t *bad,
                            const int64_t *restrict indptr, const int32_t *restrict sources,
                            const int16_t *restrict heads)
{
    if (R <= 0 || T <= 0 || nnz < 0)
        return LTT_ERR_SIZE;
    if (bad == NULL || indptr == NULL || (nnz > 0 && sources == NULL))
        return LTT_ERR_NULL;
    *bad = 0;
    /* Branch-free passes (they vectorise) find whether something is wrong; a scalar walk then
     * finds the first fault. */
    int wrong = indptr[0] != 0 || indptr[R] != nnz;
    for (int64_t i = 1; i <= R; i++)
        wrong |= indptr[i] < indptr[i - 1];
    if (wrong) {
        for (int64_t i = 0; i <= R; i++)
            if ((i == 0 && indptr[0] != 0) || (i > 0 && indptr[i] < indptr[i - 1]) ||
                indptr[i] > nnz || (i == R && indptr[R] != nnz)) {
                *bad = -1 - i;
                return LTT_ERR_INDEX;
            }
    }
    for (int64_t r = 0; r < R; r++) {
        const int64_t j0 = indptr[r], j1 = indptr[r + 1], t = r % T;
        const int32_t t32 = t < INT32_MAX ? (int32_t)t : INT32_MAX;
        if (j1 == j0)
            continue;
        /* Increasing sources (heads) from a first one >= 0 (and a first head >= 0): every source
         * (head) is >= 0; with sources alone, the last one <= t bounds them all. */
        int row_wrong = sources[j0] < 0 || sources[j0] > t32;
        if (heads == NULL) {
            for (int64_t j = j0 + 1; j < j1; j++)
                row_wrong |= sources[j] <= sources[j - 1];
            row_wrong |= sources[j1 - 1] > t32;
        } else {
            row_wrong |= heads[j0] < 0;
            for (int64_t j = j0 + 1; j < j1; j++)
                row_wrong |= (sources[j] < 0) | (sources[j] > t32) | (heads[j] < heads[j - 1]) |
                             ((heads[j] == heads[j - 1]) & (sources[j] <= sources[j - 1]));
        }
        if (!row_wrong)
            continue;
        for (int64_t j = j0; j < j1; j++)
            if (entry_bad(j, j0, t, sources, heads)) {
                *bad = j;
                return LTT_ERR_INDEX;
            }
    }
    return LTT_OK;
}

ltt_status ltt_renormalize_sparse_f32(int64_t T, int64_t P, int64_t E, double threshold,
                                      float *restrict parts_out, float *restrict single_out,
                                      const int64_t *restrict indptr,
                                      const int32_t *restrict sources,
                                      const int16_t *restrict heads, const float *restrict parts,
                                      const float *restrict single)
{
    if (T <= 0 || P < 0 || E < 0)
        return LTT_ERR_SIZE;
    if (!(threshold >= 0.0 && threshold < 1.0))
        return LTT_ERR_THRESHOLD;
    if (indptr == NULL || (P > 0 && (parts == NULL || parts_out == NULL || heads == NULL)) ||
        (E > 0 && (single == NULL || single_out == NULL)))
        return LTT_ERR_NULL;
    int64_t bad;
    const ltt_status st = ltt_sparse_check(T, T, P, &bad, indptr, sources, heads);
    if (st != LTT_OK)
        return st;
    const int nt = ltt__threads(2.0 * ((double)P + (double)E * (double)T));
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < T; t++) {
        /* As the dense kernel, listed parts in its (k, s) order. Parts are >= 0, so the unlisted
         * ones (0) only matter as the largest of an all-zero row, whose shares are 0 anyway. */
        const int64_t j0 = indptr[t], j1 = indptr[t + 1];
        double best = 0.0, z = 0.0;
        int64_t best_j = -1, best_e = -1, nkept = 0;
        for (int64_t j = j0; j < j1; j++)
            if (renorm_take(parts[j], threshold, 0, &best, &z, &nkept))
                best_j = j;
        renorm_scan_single(E, T, t, threshold, single, &best, &best_e, &z, &nkept);
        float one;
        const double scale =
            renorm_finish(E, T, t, threshold, best, best_e, z, nkept, single, single_out, &one);
        for (int64_t j = j0; j < j1; j++) {
            const double p = parts[j];
            parts_out[j] = p >= threshold ? (float)(p * scale) : 0.0f; /* none in the fallback */
        }
        if (nkept == 0 && best_j >= 0)
            parts_out[best_j] = one;
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

/* The smallest float f with (double)f >= threshold: comparing floats with it decides exactly
 * what comparing their double values with the threshold decides. */
static float float_threshold(double threshold)
{
    float tf = (float)threshold;
    if ((double)tf < threshold)
        tf = nextafterf(tf, INFINITY);
    return tf;
}

/* The attention weights into one target, sources s in [0, ns): a dense row w[0..ns) when src is
 * NULL, else the listed sources src[0..n) (strictly increasing) with weights w[0..n), every other
 * source weighing 0. */
typedef struct {
    const float *w;
    const int32_t *src;
    int64_t n, ns;
} attn_row;

/* Keep (push, mark in `in`) the sources of a dense row at or above the threshold: one pass in
 * blocks, a vectorisable scan for non-finite values and for any hit, then a scalar walk of the
 * (rare) blocks that hold one. */
static int keep_dense(float tf, int64_t l, int64_t t, const float *row, int64_t ns, uint8_t *in,
                      edge_list *edges, int *any)
{
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
                *any = 1;
            }
        }
    }
    return 0;
}

/* The same for a sparse row; an unlisted source (weight 0) is kept only at threshold 0. */
static int keep_sparse(float tf, int64_t l, int64_t t, const attn_row *row, uint8_t *in,
                       edge_list *edges, int *any)
{
    int hit = 0, bad = 0;
    for (int64_t j = 0; j < row->n; j++) {
        hit |= row->w[j] >= tf;
        bad |= !(fabsf(row->w[j]) <= FLT_MAX);
    }
    if (bad)
        return -2;
    const int all = tf <= 0.0f; /* walk every source, else the listed ones only */
    if (!hit && !all)
        return 0;
    for (int64_t j = 0, s = all ? 0 : (row->n > 0 ? row->src[0] : row->ns); s < row->ns;) {
        const int listed = j < row->n && row->src[j] == s;
        if ((listed ? row->w[j] : 0.0f) >= tf) {
            if (push_edge(edges, l, t, s) < 0)
                return -1;
            in[s] = 1;
            *any = 1;
        }
        j += listed;
        s = all ? s + 1 : (j < row->n ? row->src[j] : row->ns);
    }
    return 0;
}

/* The first source of the row's largest weight, its weight in *max. */
static int64_t row_largest(const attn_row *row, double *max)
{
    if (row->src == NULL) {
        int64_t arg = 0;
        for (int64_t s = 1; s < row->ns; s++)
            if (row->w[s] > row->w[arg])
                arg = s;
        *max = row->w[arg];
        return arg;
    }
    /* Sparse: the largest listed weight, or the 0 of the first unlisted source (gap) when that is
     * larger, or equal and earlier. Sources are increasing from 0, so source j is the first
     * unlisted one when src[j] != j. */
    int64_t arg = -1, gap = -1;
    for (int64_t j = 0; j < row->n; j++) {
        if (arg < 0 || row->w[j] > row->w[arg])
            arg = j;
        if (gap < 0 && row->src[j] != j)
            gap = j;
    }
    if (gap < 0 && row->n < row->ns)
        gap = row->n;
    if (gap >= 0 &&
        (arg < 0 || row->w[arg] < 0.0f || (row->w[arg] == 0.0f && gap < row->src[arg]))) {
        *max = 0.0;
        return gap;
    }
    *max = row->w[arg];
    return row->src[arg];
}

/*
 * Keep the incoming edges of one reached node: residual weight r (flag *kr), an optional FFN
 * weight f (flag *kf, has_f), attention weights of the row. Marks reached sources in `in`.
 * Returns -1 on allocation failure, -2 when the row holds NaN or inf (only scanned rows are
 * checked, so a huge attention tensor is never read in full).
 */
static int keep_incoming(double threshold, float tf, int64_t l, int64_t t, double r, uint8_t *kr,
                         int has_f, double f, uint8_t *kf, const attn_row *row, uint8_t *in,
                         edge_list *edges)
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
    const int rc = row->src == NULL ? keep_dense(tf, l, t, row->w, row->ns, in, edges, &any)
                                    : keep_sparse(tf, l, t, row, in, edges, &any);
    if (rc < 0)
        return rc;
    if (any)
        return 0;
    /* None reaches the threshold: the largest, ties to residual, then FFN, then smallest s. */
    double best = r, m;
    int64_t which = -2; /* -2 residual, -1 FFN, s >= 0 attention */
    if (has_f && f > best) {
        best = f;
        which = -1;
    }
    const int64_t s = row_largest(row, &m);
    if (m > best)
        which = s;
    if (which == -2)
        *kr = 1;
    else if (which == -1)
        *kf = 1;
    else if (push_edge(edges, l, t, which) < 0)
        return -1;
    in[which >= 0 ? which : t] = 1;
    return 0;
}

/* The attention weights of every layer: dense [L, T, T], or sparse rows (dense == NULL). */
typedef struct {
    const float *dense;
    const int64_t *indptr;
    const int32_t *sources;
    const float *weights;
    int64_t nnz;
} attn_rows;

static attn_row attn_row_at(const attn_rows *a, int64_t T, int64_t l, int64_t t)
{
    attn_row row = {NULL, NULL, t + 1, t + 1};
    if (a->dense != NULL) {
        row.w = a->dense + (l * T + t) * T;
        return row;
    }
    const int64_t j0 = a->indptr[l * T + t];
    row.w = a->weights + j0;
    row.src = a->sources + j0;
    row.n = a->indptr[l * T + t + 1] - j0;
    return row;
}

/* ltt_prune_f32 on dense or sparse attention weights. */
static ltt_status prune_rows(int64_t L, int64_t T, int64_t n_targets, double threshold,
                             uint8_t *restrict keep_attn_resid, uint8_t *restrict keep_ffn,
                             uint8_t *restrict keep_ffn_resid, int64_t **edges_out,
                             int64_t *restrict n_edges, const attn_rows *attn,
                             const float *restrict attn_resid, const float *restrict ffn,
                             const float *restrict ffn_resid, const uint8_t *restrict parallel,
                             const int64_t *restrict targets)
{
    if (L <= 0 || T <= 0 || n_targets < 0 || attn->nnz < 0)
        return LTT_ERR_SIZE;
    if (!(threshold >= 0.0 && threshold < 1.0))
        return LTT_ERR_THRESHOLD;
    const int sparse = attn->dense == NULL;
    if (edges_out == NULL || n_edges == NULL || attn_resid == NULL || ffn == NULL ||
        ffn_resid == NULL || parallel == NULL || (n_targets > 0 && targets == NULL) ||
        keep_attn_resid == NULL || keep_ffn == NULL || keep_ffn_resid == NULL ||
        (sparse && (attn->indptr == NULL || (attn->nnz > 0 && attn->weights == NULL))))
        return LTT_ERR_NULL;
    *edges_out = NULL;
    *n_edges = 0;
    for (int64_t i = 0; i < n_targets; i++)
        if (targets[i] < 0 || targets[i] >= T)
            return LTT_ERR_INDEX;
    int64_t bad;
    if (sparse) {
        const ltt_status cs =
            ltt_sparse_check(L * T, T, attn->nnz, &bad, attn->indptr, attn->sources, NULL);
        if (cs != LTT_OK)
            return cs;
    }
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
        for (int64_t t = 0; t < T; t++) {
            if (!out[t])
                continue;
            int rc;
            const attn_row row = attn_row_at(attn, T, l, t);
            if (parallel[l]) {
                rc = keep_incoming(threshold, tf, l, t, attn_resid[o + t], &keep_attn_resid[o + t],
                                   1, ffn[o + t], &keep_ffn[o + t], &row, in, &e);
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
                                   0, 0.0, NULL, &row, in, &e);
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

ltt_status ltt_prune_f32(int64_t L, int64_t T, int64_t n_targets, double threshold,
                         uint8_t *restrict keep_attn_resid, uint8_t *restrict keep_ffn,
                         uint8_t *restrict keep_ffn_resid, int64_t **edges_out,
                         int64_t *restrict n_edges, const float *restrict attn,
                         const float *restrict attn_resid, const float *restrict ffn,
                         const float *restrict ffn_resid, const uint8_t *restrict parallel,
                         const int64_t *restrict targets)
{
    if (attn == NULL)
        return LTT_ERR_NULL;
    const attn_rows rows = {attn, NULL, NULL, NULL, 0};
    return prune_rows(L, T, n_targets, threshold, keep_attn_resid, keep_ffn, keep_ffn_resid,
                      edges_out, n_edges, &rows, attn_resid, ffn, ffn_resid, parallel, targets);
}

ltt_status ltt_prune_sparse_f32(int64_t L, int64_t T, int64_t nnz, int64_t n_targets,
                                double threshold, uint8_t *restrict keep_attn_resid,
                                uint8_t *restrict keep_ffn, uint8_t *restrict keep_ffn_resid,
                                int64_t **edges_out, int64_t *restrict n_edges,
                                const int64_t *restrict indptr, const int32_t *restrict sources,
                                const float *restrict weights, const float *restrict attn_resid,
                                const float *restrict ffn, const float *restrict ffn_resid,
                                const uint8_t *restrict parallel, const int64_t *restrict targets)
{
    const attn_rows rows = {NULL, indptr, sources, weights, nnz};
    return prune_rows(L, T, n_targets, threshold, keep_attn_resid, keep_ffn, keep_ffn_resid,
                      edges_out, n_edges, &rows, attn_resid, ffn, ffn_resid, parallel, targets);
}
