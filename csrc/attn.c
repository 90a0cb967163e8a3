/* attn.c: contributions of attention heads and sources to the states after attention. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ltt_blas.h"
#include "ltt_internal.h"

/* Bytes of head vectors (all sources, one column chunk) meant to stay in a core's L2 cache. */
#define U_CHUNK_BYTES (1 << 20)
/* L2 mode: pairs with ||w - a u||^2 below this fraction of ||w||^2 + ||a u||^2 are recomputed
 * directly in double, because the float32 dot product would lose too many digits there. */
#define L2_REFINE 0.1

static ltt_status check_sizes(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d, int norm)
{
    if (T <= 0 || H <= 0 || G <= 0 || d_h <= 0 || d <= 0 || H % G != 0)
        return LTT_ERR_SIZE;
    if (norm != 1 && norm != 2)
        return LTT_ERR_NORM;
    return LTT_OK;
}

/* u[s] = transform(values[s, g(h)] @ w_o[h]) for s < T, into u [T, d]. */
static ltt_status head_vectors(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d, int64_t h,
                               float *restrict u, const float *restrict values,
                               const float *restrict w_o, ltt_norm_fix fix)
{
    const int64_t g = h / (H / G);
    ltt__sgemm(0, T, d, d_h, values + g * d_h, G * d_h, w_o + h * d_h * d, d, u, d);
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (T * d > 65536)
    for (int64_t s = 0; s < T; s++) {
        float *us = u + s * d;
        if (fix.center) {
            double mean = 0.0;
            for (int64_t j = 0; j < d; j++)
                mean += us[j];
            mean /= (double)d;
            for (int64_t j = 0; j < d; j++)
                us[j] = (float)((double)us[j] - mean);
        }
        if (fix.col_scale != NULL)
            for (int64_t j = 0; j < d; j++)
                us[j] *= fix.col_scale[j];
        for (int64_t j = 0; j < d; j++)
            bad |= !isfinite(us[j]);
    }
    return bad ? LTT_ERR_OVERFLOW : LTT_OK;
}

static inline float coef(const float *restrict a_h, const float *restrict row_scale, int64_t T,
                         int64_t t, int64_t s)
{
    const float a = a_h[t * T + s];
    return row_scale != NULL ? a * row_scale[t] : a;
}

/*
 * L1 distances dist[t * T + s] = ||w_t - a[t,s] u_s||_1 for s <= t (other entries untouched).
 * Blocked: a column chunk of every u_s stays in L2 while blocks of LTT_TILE_R targets stream
 * past it, each u load feeding LTT_TILE_R rows; the triangular work is balanced dynamically.
 */
static void dist_l1(int64_t T, int64_t d, double *restrict dist, const float *restrict whole,
                    const float *restrict u, const float *restrict a_h,
                    const float *restrict row_scale)
{
    int64_t D = U_CHUNK_BYTES / (4 * T);
    D = D < 64 ? 64 : D - D % 16;
    if (D > d)
        D = d;
    const int64_t nblk = (T + LTT_TILE_R - 1) / LTT_TILE_R;
    /* Entries above the diagonal near it are computed too (harmless scratch), so zero all. */
    memset(dist, 0, (size_t)(T * T) * sizeof(double));
#pragma omp parallel
    {
        for (int64_t j0 = 0; j0 < d; j0 += D) {
            const int64_t n = (d - j0 < D) ? d - j0 : D;
            /* Largest blocks first so the dynamic schedule ends evenly. */
#pragma omp for schedule(dynamic, 1)
            for (int64_t bi = 0; bi < nblk; bi++) {
                const int64_t t0 = (nblk - 1 - bi) * LTT_TILE_R;
                const int nr = (int)((T - t0 < LTT_TILE_R) ? T - t0 : LTT_TILE_R);
                const float *w[LTT_TILE_R];
                float rs[LTT_TILE_R];
                for (int r = 0; r < nr; r++) {
                    w[r] = whole + (t0 + r) * d + j0;
                    rs[r] = row_scale != NULL ? row_scale[t0 + r] : 1.0f;
                }
                /* sources 0 .. t0 + nr - 1 */
                ltt__l1_rows(n, nr, t0 + nr, dist + t0 * T, T, w, u + j0, d, a_h + t0 * T, T, rs);
            }
        }
    }
}

/*
 * L2 distances from ||w - a u||^2 = ||w||^2 - 2 a (w . u) + a^2 ||u||^2 with w . u from one
 * sgemm; pairs where cancellation or float range makes that inexact are recomputed in double.
 * scratch: T * T floats.
 */
static void dist_l2(int64_t T, int64_t d, double *restrict dist, float *restrict dots,
                    const double *restrict wn2, double *restrict un2, const float *restrict whole,
                    const float *restrict u, const float *restrict a_h,
                    const float *restrict row_scale)
{
    ltt__sgemm(1, T, T, d, whole, d, u, d, dots, T);
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < T; s++) {
        const double n = ltt__norm(d, u + s * d, 2);
        un2[s] = n * n;
    }
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t t = 0; t < T; t++) {
        for (int64_t s = 0; s <= t; s++) {
            const double a = coef(a_h, row_scale, T, t, s);
            const double p2 = a * a * un2[s];
            const double dot = dots[t * T + s];
            const double big = wn2[t] + p2;
            const double e2 = big - 2.0 * a * dot;
            /* float32 dots lose digits when the product leaves float range or w ~ a u. */
            const double scale = sqrt(wn2[t] * un2[s]);
            if (isfinite(dot) && e2 > L2_REFINE * big && scale < 1e30 && scale > 1e-30)
                dist[t * T + s] = sqrt(e2);
            else
                dist[t * T + s] = ltt__dist(d, whole + t * d, u + s * d, a, 2);
        }
    }
}

/* Per-target norms of the wholes: wn[t] = ||w_t||; wn2[t] = ||w_t||^2 (L2 mode). */
static void whole_norms(int64_t T, int64_t d, int norm, double *wn, double *wn2, const float *whole)
{
#pragma omp parallel for schedule(static) if (T * d > 65536)
    for (int64_t t = 0; t < T; t++) {
        wn[t] = ltt__norm(d, whole + t * d, norm);
        wn2[t] = ltt__norm(d, whole + t * d, 2);
        wn2[t] *= wn2[t];
    }
}

/* Workspace of one head's distances. */
typedef struct {
    float *u;     /* [T, d] */
    double *dist; /* [T, T] */
    float *dots;  /* [T, T], L2 only */
    double *un2;  /* [T], L2 only */
    double *wn;   /* [T] */
    double *wn2;  /* [T] */
} workspace;

static void ws_free(workspace *w)
{
    free(w->u);
    free(w->dist);
    free(w->dots);
    free(w->un2);
    free(w->wn);
    free(w->wn2);
    memset(w, 0, sizeof *w);
}

static ltt_status ws_alloc(workspace *w, int64_t T, int64_t d, int norm)
{
    memset(w, 0, sizeof *w);
    w->u = malloc((size_t)(T * d) * sizeof(float));
    w->dist = malloc((size_t)(T * T) * sizeof(double));
    w->wn = malloc((size_t)T * sizeof(double));
    w->wn2 = malloc((size_t)T * sizeof(double));
    if (norm == 2) {
        w->dots = malloc((size_t)(T * T) * sizeof(float));
        w->un2 = malloc((size_t)T * sizeof(double));
    }
    if (!w->u || !w->dist || !w->wn || !w->wn2 || (norm == 2 && (!w->dots || !w->un2))) {
        ws_free(w);
        return LTT_ERR_NOMEM;
    }
    return LTT_OK;
}

/* Distances of head h into ws->dist (s <= t). */
static ltt_status head_dists(workspace *ws, int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                             int64_t h, int norm, const float *whole, const float *attn,
                             const float *values, const float *w_o, ltt_norm_fix fix)
{
    ltt_status st = head_vectors(T, H, G, d_h, d, h, ws->u, values, w_o, fix);
    if (st != LTT_OK)
        return st;
    const float *a_h = attn + h * T * T;
    if (norm == 1)
        dist_l1(T, d, ws->dist, whole, ws->u, a_h, fix.row_scale);
    else
        dist_l2(T, d, ws->dist, ws->dots, ws->wn2, ws->un2, whole, ws->u, a_h, fix.row_scale);
    return LTT_OK;
}

ltt_status ltt_attn_contrib_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d, int64_t E,
                                int64_t bias_row_stride, int norm, float *restrict edges,
                                float *restrict resid_out, float *restrict bias_out,
                                float *restrict extra_out, double *restrict total,
                                float *restrict heads, const float *restrict resid,
                                const float *restrict whole, const float *restrict attn,
                                const float *restrict values, const float *restrict w_o,
                                const float *restrict bias, const float *restrict extra,
                                ltt_norm_fix fix)
{
    ltt_status st = check_sizes(T, H, G, d_h, d, norm);
    if (st != LTT_OK)
        return st;
    if (E < 0 || bias_row_stride < 0)
        return LTT_ERR_SIZE;
    if (!edges || !resid_out || !bias_out || (E > 0 && (!extra_out || !extra)) || !total ||
        !resid || !whole || !attn || !values || !w_o)
        return LTT_ERR_NULL;
    workspace ws;
    if ((st = ws_alloc(&ws, T, d, norm)) != LTT_OK)
        return st;
    double *edge_raw = calloc((size_t)(T * T), sizeof(double));
    if (edge_raw == NULL) {
        ws_free(&ws);
        return LTT_ERR_NOMEM;
    }
    whole_norms(T, d, norm, ws.wn, ws.wn2, whole);

    /* Node parts: residual, bias, extra. Their raws go to the outputs, normalised at the end. */
    for (int64_t t = 0; t < T; t++) {
        const float *w = whole + t * d;
        double z = 0.0, r;
        r = ltt__raw(ws.wn[t], ltt__dist(d, w, resid + t * d, 1.0, norm));
        resid_out[t] = (float)r;
        z += r;
        bias_out[t] = 0.0f;
        if (bias != NULL) {
            r = ltt__raw(ws.wn[t], ltt__dist(d, w, bias + t * bias_row_stride, 1.0, norm));
            bias_out[t] = (float)r;
            z += r;
        }
        for (int64_t e = 0; e < E; e++) {
            r = ltt__raw(ws.wn[t], ltt__dist(d, w, extra + (e * T + t) * d, 1.0, norm));
            extra_out[e * T + t] = (float)r;
            z += r;
        }
        total[t] = z;
    }

    /* Heads are independent: with enough of them each thread takes whole heads (no barrier
     * per column chunk, so a thread slowed by other work on the machine stalls no one), with
     * private buffers summed at the end. Otherwise the heads run in turn, each one parallel
     * inside. */
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
    const double per_thread = (double)T * (double)T * 16.0 + (double)T * (double)d * 4.0;
    if (H < 2 * nt || per_thread * nt > (double)(1u << 30))
        nt = 1;
#endif
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        workspace tw;
        int mine = nt > 1; /* private workspace and sums, or the shared ones */
        ltt_status tst = mine ? ws_alloc(&tw, T, d, norm) : LTT_OK;
        double *er = edge_raw, *zt = NULL;
        if (!mine)
            tw = ws;
        if (mine && tst == LTT_OK) {
            memcpy(tw.wn, ws.wn, (size_t)T * sizeof(double));
            memcpy(tw.wn2, ws.wn2, (size_t)T * sizeof(double));
        }
        if (mine && tst == LTT_OK) {
            er = calloc((size_t)(T * T), sizeof(double));
            if (er == NULL)
                tst = LTT_ERR_NOMEM;
        }
        if (tst == LTT_OK && (zt = calloc((size_t)T, sizeof(double))) == NULL)
            tst = LTT_ERR_NOMEM;
#pragma omp for schedule(dynamic, 1)
        for (int64_t h = 0; h < H; h++) {
            if (tst != LTT_OK)
                continue;
            tst = head_dists(&tw, T, H, G, d_h, d, h, norm, whole, attn, values, w_o, fix);
            if (tst != LTT_OK)
                continue;
            for (int64_t t = 0; t < T; t++) {
                double z = 0.0;
                for (int64_t s = 0; s <= t; s++) {
                    const double r = ltt__raw(tw.wn[t], tw.dist[t * T + s]);
                    er[t * T + s] += r;
                    z += r;
                    if (heads != NULL)
                        heads[(h * T + t) * T + s] = (float)r;
                }
                zt[t] += z;
            }
        }
#pragma omp critical(ltt_attn_sum)
        {
            if (tst != LTT_OK) {
                st = tst;
            } else {
                if (mine)
                    for (int64_t k = 0; k < T * T; k++)
                        edge_raw[k] += er[k];
                for (int64_t t = 0; t < T; t++)
                    total[t] += zt[t];
            }
        }
        if (mine) {
            free(er);
            ws_free(&tw);
        }
        free(zt);
    }
    if (st != LTT_OK)
        goto done;

    /* Shares. The node parts' raws were stored as float; recompute them in double instead. */
    for (int64_t t = 0; t < T; t++) {
        const double inv = 1.0 / total[t];
        const float *w = whole + t * d;
        resid_out[t] = (float)(ltt__raw(ws.wn[t], ltt__dist(d, w, resid + t * d, 1.0, norm)) * inv);
        if (bias != NULL)
            bias_out[t] =
                (float)(ltt__raw(ws.wn[t], ltt__dist(d, w, bias + t * bias_row_stride, 1.0, norm)) *
                        inv);
        for (int64_t e = 0; e < E; e++)
            extra_out[e * T + t] = (float)(extra_out[e * T + t] * inv);
        for (int64_t s = 0; s < T; s++)
            edges[t * T + s] = s <= t ? (float)(edge_raw[t * T + s] * inv) : 0.0f;
        if (heads != NULL)
            for (int64_t h = 0; h < H; h++) {
                float *row = heads + (h * T + t) * T;
                for (int64_t s = 0; s <= t; s++)
                    row[s] = (float)(row[s] * inv);
                for (int64_t s = t + 1; s < T; s++)
                    row[s] = 0.0f;
            }
    }
done:
    free(edge_raw);
    ws_free(&ws);
    return st;
}

ltt_status ltt_attn_head_map_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                 int64_t head, int norm, float *restrict out,
                                 const float *restrict whole, const float *restrict attn,
                                 const float *restrict values, const float *restrict w_o,
                                 const double *restrict total, ltt_norm_fix fix)
{
    ltt_status st = check_sizes(T, H, G, d_h, d, norm);
    if (st != LTT_OK)
        return st;
    if (head < 0 || head >= H)
        return LTT_ERR_INDEX;
    if (!out || !whole || !attn || !values || !w_o || !total)
        return LTT_ERR_NULL;
    workspace ws;
    if ((st = ws_alloc(&ws, T, d, norm)) != LTT_OK)
        return st;
    whole_norms(T, d, norm, ws.wn, ws.wn2, whole);
    st = head_dists(&ws, T, H, G, d_h, d, head, norm, whole, attn, values, w_o, fix);
    if (st == LTT_OK)
        for (int64_t t = 0; t < T; t++)
            for (int64_t s = 0; s < T; s++)
                out[t * T + s] =
                    s <= t ? (float)(ltt__raw(ws.wn[t], ws.dist[t * T + s]) / total[t]) : 0.0f;
    ws_free(&ws);
    return st;
}

ltt_status ltt_attn_edge_heads_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                   int64_t target, int64_t source, int norm, float *restrict out,
                                   const float *restrict whole, const float *restrict attn,
                                   const float *restrict values, const float *restrict w_o,
                                   const double *restrict total, ltt_norm_fix fix)
{
    ltt_status st = check_sizes(T, H, G, d_h, d, norm);
    if (st != LTT_OK)
        return st;
    if (target < 0 || target >= T || source < 0 || source > target)
        return LTT_ERR_INDEX;
    if (!out || !whole || !attn || !values || !w_o || !total)
        return LTT_ERR_NULL;
    float *u = malloc((size_t)d * sizeof(float));
    if (u == NULL)
        return LTT_ERR_NOMEM;
    const float *w = whole + target * d;
    const double nw = ltt__norm(d, w, norm);
    for (int64_t h = 0; h < H && st == LTT_OK; h++) {
        /* One source: a [1, d_h] x [d_h, d] product. */
        st = head_vectors(1, H, G, d_h, d, h, u, values + source * G * d_h, w_o, fix);
        if (st != LTT_OK)
            break;
        const double a = coef(attn + h * T * T, fix.row_scale, T, target, source);
        out[h] = (float)(ltt__raw(nw, ltt__dist(d, w, u, a, norm)) / total[target]);
    }
    free(u);
    return st;
}
