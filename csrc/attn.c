/* attn.c: contributions of attention heads and sources to the states after attention. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ltt_blas.h"
#include "ltt_internal.h"

/*
 * L1 blocking: a column chunk of L1_COLS coordinates of LTT_TILE_R target rows (32 KB) stays in
 * the L1 cache while sources stream past, and the chunk of a block of sources (U_BLOCK_BYTES)
 * stays in L2 while the row blocks below it pass over it.
 */
#define L1_COLS 1024
#define U_BLOCK_BYTES (1 << 19)
/*
 * The same bits for any thread count: a head's vectors are made in slices of U_ROWS sources and
 * its L2 dot products in slices of DOT_ROWS targets (aligned at 0), whether one thread or several
 * share the head; threads sharing a head take row bands (at most BANDS, their edges multiples of
 * DOT_ROWS), and an L1 distance does not depend on the band its row is in.
 */
#define BANDS 32
#define U_ROWS 64
#define DOT_ROWS 64
/* Heads are taken one per thread (a group of heads at a time) only while all threads' private
 * buffers stay below this; otherwise the threads share each head (the C test driver is also
 * built with 0, to take that path on small layers). */
#ifndef PRIVATE_BYTES
#define PRIVATE_BYTES (1u << 30)
#endif
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

/* One layer's inputs, as the kernels below read them. */
typedef struct {
    int64_t T, H, G, d_h, d;
    int norm;
    const float *whole, *attn, *values, *w_o;
    int64_t wsr, wsj; /* w_o's element strides (wo_layout) */
    ltt_norm_fix fix;
    const double *wn2; /* [T] ||w_t||^2, L2 only */
} layer;

/* Buffers of one head's distances. */
typedef struct {
    float *u;     /* [T, d] head vectors */
    double *dist; /* [T, T] */
    float *dots;  /* [T, T], L2 only */
    double *un2;  /* [T] ||u_s||^2, L2 only */
} workspace;

/* Rows [s0, s1) of u [., d] after the product: the post-branch norm's column scale, the finiteness
 * check, un2[s] = ||u[s]||^2 unless un2 is NULL. Returns nonzero when a value is not finite. */
static int finish_vectors(int64_t d, int64_t s0, int64_t s1, float *restrict u,
                          double *restrict un2, ltt_norm_fix fix)
{
    int bad = 0;
    for (int64_t s = s0; s < s1; s++) {
        float *us = u + s * d; /* centred already: see centred_weights */
        if (fix.col_scale != NULL)
            for (int64_t j = 0; j < d; j++)
                us[j] *= fix.col_scale[j];
        for (int64_t j = 0; j < d; j++)
            bad |= !isfinite(us[j]);
        if (un2 != NULL) {
            const double nu = ltt__norm(d, us, 2);
            un2[s] = nu * nu;
        }
    }
    return bad;
}

/*
 * The two layouts of w_o the kernels read in place: head h's row r, coordinate j at
 * w_o[(h d_h + r) wsr + j wsj], either [H, d_h, d] in C order (wsr = d, wsj = 1) or the output
 * projection's own weight [d, >= H d_h] (wsr = 1, wsj its row length: the .T viewed as
 * [H, d_h, d], of every head or of a run of heads).
 */
static int wo_layout(int64_t H, int64_t d_h, int64_t d, int64_t wsr, int64_t wsj)
{
    return (wsr == d && wsj == 1) || (wsr == 1 && wsj >= H * d_h);
}

/* w_o[h] [d_h, d] as the B operand of a product: its start, its leading dimension and whether it
 * is stored transposed. */
static const float *head_weights(const float *w_o, int64_t h, int64_t d_h, int64_t wsr,
                                 int64_t wsj, int *trans, int64_t *ldb)
{
    *trans = wsr == 1 && wsj != 1;
    *ldb = *trans ? wsj : wsr;
    return w_o + h * d_h * wsr;
}

/*
 * u[i] = transform(values_i[g(h)] @ w_o[h]) for n sources whose value rows start at `values`
 * (rows of G * d_h), into u [n, d]; un2[i] = ||u[i]||^2 unless un2 is NULL. Single-threaded.
 * Returns nonzero when a value is not finite.
 */
static int head_vectors(const layer *L, int64_t h, int64_t n, float *restrict u,
                        double *restrict un2, const float *restrict values)
{
    const int64_t g = h / (L->H / L->G), d = L->d, d_h = L->d_h;
    int trans;
    int64_t ldb;
    const float *b = head_weights(L->w_o, h, d_h, L->wsr, L->wsj, &trans, &ldb);
    ltt__sgemm(1, trans, n, d, d_h, values + g * d_h, L->G * d_h, b, ldb, u, d);
    return finish_vectors(d, 0, n, u, un2, L->fix);
}

/* Block b of the product values[:, g(h)] @ w_o[h] into ws->u (the fixed blocks of
 * ltt__sgemm_block, so the same bits whoever computes it). */
static void vector_block(const layer *L, int64_t h, int64_t b, workspace *ws)
{
    const int64_t g = h / (L->H / L->G);
    int trans;
    int64_t ldb;
    const float *w = head_weights(L->w_o, h, L->d_h, L->wsr, L->wsj, &trans, &ldb);
    ltt__sgemm_block(b, trans, L->T, L->d, L->d_h, L->values + g * L->d_h, L->G * L->d_h, w, ldb,
                     ws->u, L->d);
}

/* Rows [s0, s1) of head h's vectors in ws after their product (u and, L2, un2). */
static int vector_rows(const layer *L, int64_t s0, int64_t s1, workspace *ws)
{
    return finish_vectors(L->d, s0, s1, ws->u, ws->un2, L->fix);
}

/*
 * Centring (a post-branch LayerNorm's mean removal) moved from the head vectors to the output
 * projection: mean_j (v W)_j = v mean_j(W_kj), so u - mean(u) = v (W - rowmean(W)) exactly. The
 * centred vectors then come from one float product of centred weights instead of the difference
 * of two large float numbers (a head whose vectors are nearly constant across coordinates lost
 * its digits there: 7.5e-4 of a share). The centred [H * d_h, d] copy (ltt__fold_rows, from w_o
 * in either layout) is read with strides (d, 1), with fix.center cleared.
 */
static float *centred_weights(int64_t rows, int64_t d, const float *restrict w_o, int64_t wsr,
                              int64_t wsj)
{
    return ltt__fold_rows(rows, d, w_o, wsr, wsj, 1, NULL);
}

/* a[t, s] times the target's row scale, in float as the kernels use it. */
static inline float coef(const float *restrict a_h, const float *restrict row_scale, int64_t T,
                         int64_t t, int64_t s)
{
    const float a = a_h[t * T + s];
    return row_scale != NULL ? a * row_scale[t] : a;
}

/*
 * L1 distances dist[t * T + s] = ||w_t - a[t,s] u_s||_1 for targets t in [r0, r1) (r0 a
 * multiple of LTT_TILE_R) and s <= t; entries just above the diagonal are scratch.
 * Single-threaded; each u load feeds LTT_TILE_R rows.
 */
static void dist_l1(int64_t T, int64_t d, int64_t r0, int64_t r1, double *restrict dist,
                    const float *restrict whole, const float *restrict u, const float *restrict a_h,
                    const float *restrict row_scale)
{
    for (int64_t t = r0; t < r1; t++) { /* sources up to the end of t's row block */
        const int64_t end = r0 + ((t - r0) / LTT_TILE_R + 1) * LTT_TILE_R;
        memset(dist + t * T, 0, (size_t)(end < r1 ? end : r1) * sizeof(double));
    }
    const int64_t D = d < L1_COLS ? d : L1_COLS;
    int64_t SB = U_BLOCK_BYTES / (4 * D);
    SB -= SB % LTT_TILE_R;
    if (SB < LTT_TILE_R)
        SB = LTT_TILE_R;
    for (int64_t j0 = 0; j0 < d; j0 += D) {
        const int64_t n = (d - j0 < D) ? d - j0 : D;
        for (int64_t s0 = 0; s0 < r1; s0 += SB) {
            /* the first row block holding a target t >= s0 */
            int64_t t0 = s0 > r0 ? r0 + (s0 - r0) / LTT_TILE_R * LTT_TILE_R : r0;
            for (; t0 < r1; t0 += LTT_TILE_R) {
                const int nr = (int)((r1 - t0 < LTT_TILE_R) ? r1 - t0 : LTT_TILE_R);
                const int64_t s1 = (s0 + SB < t0 + nr) ? s0 + SB : t0 + nr;
                const float *w[LTT_TILE_R];
                float rs[LTT_TILE_R];
                for (int r = 0; r < nr; r++) {
                    w[r] = whole + (t0 + r) * d + j0;
                    rs[r] = row_scale != NULL ? row_scale[t0 + r] : 1.0f;
                }
                ltt__l1_rows(n, nr, s1 - s0, dist + t0 * T + s0, T, w, u + s0 * d + j0, d,
                             a_h + t0 * T + s0, T, rs);
            }
        }
    }
}

/*
 * L2 distances for targets [r0, r1) (r0 a multiple of DOT_ROWS) from
 * ||w - a u||^2 = ||w||^2 - 2 a (w . u) + a^2 ||u||^2 with w . u from one sgemm per DOT_ROWS
 * targets; pairs where cancellation or float range makes that inexact are recomputed in double.
 * Single-threaded.
 */
static void dist_l2(int64_t T, int64_t d, int64_t r0, int64_t r1, double *restrict dist,
                    float *restrict dots, const double *restrict wn2, const double *restrict un2,
                    const float *restrict whole, const float *restrict u, const float *restrict a_h,
                    const float *restrict row_scale)
{
    for (int64_t c = r0; c < r1; c += DOT_ROWS) {
        const int64_t c1 = c + DOT_ROWS < r1 ? c + DOT_ROWS : r1;
        ltt__sgemm(1, 1, c1 - c, c1, d, whole + c * d, d, u, d, dots + c * T, T);
    }
    for (int64_t t = r0; t < r1; t++) {
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

/* Head h's distances for targets [r0, r1), its vectors for sources < r1 in ws. */
static void dist_rows(const layer *L, int64_t h, int64_t r0, int64_t r1, workspace *ws)
{
    const float *a_h = L->attn + h * L->T * L->T;
    if (L->norm == 1)
        dist_l1(L->T, L->d, r0, r1, ws->dist, L->whole, ws->u, a_h, L->fix.row_scale);
    else
        dist_l2(L->T, L->d, r0, r1, ws->dist, ws->dots, L->wn2, ws->un2, L->whole, ws->u, a_h,
                L->fix.row_scale);
}

/* Edge k of nb row bands of about equal triangle area, on DOT_ROWS boundaries. */
static int64_t band_edge(int64_t T, int64_t nb, int64_t k)
{
    if (k >= nb)
        return T;
    int64_t r = (int64_t)((double)T * sqrt((double)k / (double)nb));
    r -= r % DOT_ROWS;
    return r < T ? r : T;
}

static int64_t n_bands(int64_t T)
{
    const int64_t blocks = (T + DOT_ROWS - 1) / DOT_ROWS;
    return BANDS < blocks ? BANDS : blocks;
}

/* Raw contributions of head h for targets [r0, r1): added to er [T, T] and zt [T], and stored
 * in heads [H, T, T] (unless NULL). */
static void add_raws(int64_t T, int64_t h, int64_t r0, int64_t r1, const double *restrict wn,
                     const double *restrict dist, double *restrict er, double *restrict zt,
                     float *restrict heads)
{
    for (int64_t t = r0; t < r1; t++)
        zt[t] += ltt__raw_row(t + 1, wn[t], dist + t * T, er + t * T,
                              heads != NULL ? heads + (h * T + t) * T : NULL);
}

/* What runs after the distances of one row band of a shared head. */
typedef void (*band_fn)(void *ctx, int64_t h, int64_t r0, int64_t r1);

/*
 * Head h shared by the threads of the enclosing parallel region (or run by one): the blocks of
 * its vectors' product, their rows in U_ROWS source slices, then its distances in row bands,
 * each band followed by band(). Every thread of the team calls it (it holds three work-sharing
 * loops, each ending in a barrier).
 */
static void shared_head(const layer *L, int64_t h, workspace *ws, int *bad, band_fn band,
                        void *ctx)
{
    const int64_t nblk = ltt__sgemm_blocks(L->T, L->d);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < nblk; b++)
        vector_block(L, h, b, ws);
    const int64_t nu = (L->T + U_ROWS - 1) / U_ROWS;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nu; c++) {
        const int64_t s1 = (c + 1) * U_ROWS < L->T ? (c + 1) * U_ROWS : L->T;
        if (vector_rows(L, c * U_ROWS, s1, ws)) {
#pragma omp atomic write
            *bad = 1;
        }
    }
    const int64_t nb = n_bands(L->T);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t r0 = band_edge(L->T, nb, b), r1 = band_edge(L->T, nb, b + 1);
        if (r1 > r0) {
            dist_rows(L, h, r0, r1, ws);
            band(ctx, h, r0, r1);
        }
    }
}

/* Head h's vectors (the product in the blocks of shared_head) and distances on this thread.
 * Returns nonzero when a vector is not finite. */
static int own_head(const layer *L, int64_t h, workspace *ws)
{
    const int64_t nblk = ltt__sgemm_blocks(L->T, L->d);
    for (int64_t b = 0; b < nblk; b++)
        vector_block(L, h, b, ws);
    const int bad = vector_rows(L, 0, L->T, ws);
    dist_rows(L, h, 0, L->T, ws);
    return bad;
}

static void ws_free(workspace *w)
{
    free(w->u);
    free(w->dist);
    free(w->dots);
    free(w->un2);
    memset(w, 0, sizeof *w);
}

/* n workspaces in one allocation each (workspace k at offset k). */
static int ws_alloc(workspace *w, int n, int64_t T, int64_t d, int norm)
{
    const size_t TT = (size_t)T * (size_t)T;
    w->u = malloc((size_t)n * (size_t)T * (size_t)d * sizeof(float));
    w->dist = malloc((size_t)n * TT * sizeof(double));
    w->dots = norm == 2 ? malloc((size_t)n * TT * sizeof(float)) : NULL;
    w->un2 = norm == 2 ? malloc((size_t)n * (size_t)T * sizeof(double)) : NULL;
    if (!w->u || !w->dist || (norm == 2 && (!w->dots || !w->un2))) {
        ws_free(w);
        return -1;
    }
    return 0;
}

static workspace ws_part(const workspace *w, int k, int64_t T, int64_t d)
{
    const size_t TT = (size_t)T * (size_t)T;
    workspace p = {w->u + (size_t)k * (size_t)T * (size_t)d, w->dist + (size_t)k * TT,
                   w->dots != NULL ? w->dots + (size_t)k * TT : NULL,
                   w->un2 != NULL ? w->un2 + (size_t)k * (size_t)T : NULL};
    return p;
}

/* The shared-head band step of ltt_attn_contrib_f32: raws into the shared sums. */
typedef struct {
    int64_t T;
    const double *wn;
    const workspace *ws;
    double *er, *zt;
    float *heads;
} raws_ctx;

static void raws_band(void *ctx, int64_t h, int64_t r0, int64_t r1)
{
    const raws_ctx *c = ctx;
    add_raws(c->T, h, r0, r1, c->wn, c->ws->dist, c->er, c->zt, c->heads);
}

/* The band step of ltt_attn_head_map_f32: shares of the band's rows. */
typedef struct {
    int64_t T;
    const double *wn, *total;
    const workspace *ws;
    float *out;
} map_ctx;

static void map_band(void *ctx, int64_t h, int64_t r0, int64_t r1)
{
    const map_ctx *c = ctx;
    const int64_t T = c->T;
    for (int64_t t = r0; t < r1; t++)
        for (int64_t s = 0; s < T; s++)
            c->out[t * T + s] =
                s <= t ? (float)(ltt__raw(c->wn[t], c->ws->dist[t * T + s]) / c->total[t]) : 0.0f;
}

/* Element operations of one head's distances (the L1 triangle, plus the head vectors). */
static double head_work(int64_t T, int64_t d_h, int64_t d)
{
    return (double)T * (double)d * ((double)(T + 1) / 2.0 + (double)d_h / 4.0);
}

ltt_status ltt_attn_contrib_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                int64_t wo_stride_r, int64_t wo_stride_j, int64_t E,
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
    if (E < 0 || bias_row_stride < 0 || !wo_layout(H, d_h, d, wo_stride_r, wo_stride_j))
        return LTT_ERR_SIZE;
    if (!edges || !resid_out || !bias_out || (E > 0 && (!extra_out || !extra)) || !total ||
        !resid || !whole || !attn || !values || !w_o)
        return LTT_ERR_NULL;
    float *wc = NULL;
    if (fix.center) {
        if ((wc = centred_weights(H * d_h, d, w_o, wo_stride_r, wo_stride_j)) == NULL)
            return LTT_ERR_NOMEM;
        w_o = wc;
        wo_stride_r = d;
        wo_stride_j = 1;
        fix.center = 0;
    }

    /*
     * One parallel region per call (none for small calls). Fixed order: every target row adds
     * its heads' raws in head order 0..H-1, whatever the thread count. The threads take a group
     * of heads at a time, one head each, into private buffers, then add the group's raws row by
     * row (one thread: one head at a time); when private buffers would be too large they share
     * each head in row bands instead.
     */
    const size_t TT = (size_t)T * (size_t)T;
    const int nt = ltt__threads((double)H * head_work(T, d_h, d));
    const double per_thread = (double)TT * (norm == 2 ? 20.0 : 16.0) + (double)T * (double)d * 4.0;
    const int shared = nt > 1 && per_thread * nt > (double)PRIVATE_BYTES;
    const int64_t group = shared ? 1 : (nt < H ? nt : H);
    workspace ws;
    const int ws_bad = ws_alloc(&ws, (int)group, T, d, norm);
    double *er = calloc(TT, sizeof(double));
    double *zt = calloc((size_t)T, sizeof(double));
    double *wn = malloc((size_t)T * sizeof(double));
    double *wn2 = malloc((size_t)T * sizeof(double));
    double *node = malloc((size_t)(2 + E) * (size_t)T * sizeof(double)); /* resid, bias, extra */
    if (ws_bad || !er || !zt || !wn || !wn2 || !node) {
        st = LTT_ERR_NOMEM;
        goto done;
    }
    const layer L = {T,      H,    G,           d_h,         d,   norm, whole,
                     attn,   values, w_o, wo_stride_r, wo_stride_j, fix, wn2};
    int bad = 0;

    /* Norms and raws of the node parts per target (T d (3 + E) operations, on this thread). */
    for (int64_t t = 0; t < T; t++) {
        const float *w = whole + t * d;
        wn[t] = ltt__norm(d, w, norm);
        wn2[t] = wn[t] * wn[t]; /* read in L2 mode only */
        node[t] = ltt__raw(wn[t], ltt__dist(d, w, resid + t * d, 1.0, norm));
        node[T + t] = bias != NULL
                          ? ltt__raw(wn[t], ltt__dist(d, w, bias + t * bias_row_stride, 1.0, norm))
                          : 0.0;
        for (int64_t e = 0; e < E; e++)
            node[(2 + e) * T + t] =
                ltt__raw(wn[t], ltt__dist(d, w, extra + (e * T + t) * d, 1.0, norm));
    }

    /* The heads: the only parallel part. */
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        raws_ctx ctx = {T, wn, &ws, er, zt, heads};
        for (int64_t g0 = 0; g0 < H; g0 += group) {
            const int64_t g1 = g0 + group < H ? g0 + group : H;
            if (shared) {
                shared_head(&L, g0, &ws, &bad, raws_band, &ctx);
                continue;
            }
#pragma omp for schedule(static, 1)
            for (int64_t h = g0; h < g1; h++) {
                workspace mine = ws_part(&ws, (int)(h - g0), T, d);
                if (own_head(&L, h, &mine)) {
#pragma omp atomic write
                    bad = 1;
                }
            }
#pragma omp for schedule(dynamic, 16)
            for (int64_t t = 0; t < T; t++)
                for (int64_t h = g0; h < g1; h++)
                    zt[t] += ltt__raw_row(t + 1, wn[t], ws.dist + (size_t)(h - g0) * TT + t * T,
                                          er + t * T, heads != NULL ? heads + (h * T + t) * T : NULL);
        }
    }

    /* Shares: every part's raw over the target's total (on this thread: a thread that the
     * machine's other work delays can hold up no one here). */
    for (int64_t t = 0; t < T; t++) {
        double z = node[t] + node[T + t];
        for (int64_t e = 0; e < E; e++)
            z += node[(2 + e) * T + t];
        z += zt[t];
        total[t] = z;
        const double inv = 1.0 / z;
        resid_out[t] = (float)(node[t] * inv);
        bias_out[t] = bias != NULL ? (float)(node[T + t] * inv) : 0.0f;
        for (int64_t e = 0; e < E; e++)
            extra_out[e * T + t] = (float)(node[(2 + e) * T + t] * inv);
        float *erow = edges + t * T;
        const double *e0 = er + t * T;
        for (int64_t s = 0; s <= t; s++)
            erow[s] = (float)(e0[s] * inv);
        for (int64_t s = t + 1; s < T; s++)
            erow[s] = 0.0f;
        if (heads != NULL)
            for (int64_t h = 0; h < H; h++) {
                float *row = heads + (h * T + t) * T;
                for (int64_t s = 0; s <= t; s++)
                    row[s] = (float)(row[s] * inv);
                for (int64_t s = t + 1; s < T; s++)
                    row[s] = 0.0f;
            }
    }
    if (bad)
        st = LTT_ERR_OVERFLOW;
done:
    free(wc);
    ws_free(&ws);
    free(er);
    free(zt);
    free(wn);
    free(wn2);
    free(node);
    return st;
}

/* The checks of a partial view (one head, one edge): sizes, then its index (bad_index: out of
 * range), then the pointers. */
static ltt_status check_view(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                             int64_t wsr, int64_t wsj, int norm, int bad_index, const float *out,
                             const float *whole, const float *attn, const float *values,
                             const float *w_o, const double *total)
{
    const ltt_status st = check_sizes(T, H, G, d_h, d, norm);
    if (st != LTT_OK)
        return st;
    if (!wo_layout(H, d_h, d, wsr, wsj))
        return LTT_ERR_SIZE;
    if (bad_index)
        return LTT_ERR_INDEX;
    if (!out || !whole || !attn || !values || !w_o || !total)
        return LTT_ERR_NULL;
    return LTT_OK;
}

ltt_status ltt_attn_head_map_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                 int64_t wo_stride_r, int64_t wo_stride_j, int64_t head, int norm,
                                 float *restrict out,
                                 const float *restrict whole, const float *restrict attn,
                                 const float *restrict values, const float *restrict w_o,
                                 const double *restrict total, ltt_norm_fix fix)
{
    ltt_status st = check_view(T, H, G, d_h, d, wo_stride_r, wo_stride_j, norm, head < 0 || head >= H,
                               out, whole, attn, values, w_o, total);
    if (st != LTT_OK)
        return st;
    workspace ws;
    const int ws_bad = ws_alloc(&ws, 1, T, d, norm);
    double *wn = malloc((size_t)T * sizeof(double));
    double *wn2 = malloc((size_t)T * sizeof(double));
    float *wc = fix.center ? centred_weights(H * d_h, d, w_o, wo_stride_r, wo_stride_j) : NULL;
    if (ws_bad || !wn || !wn2 || (fix.center && wc == NULL)) {
        ws_free(&ws);
        free(wn);
        free(wn2);
        free(wc);
        return LTT_ERR_NOMEM;
    }
    if (wc != NULL) {
        w_o = wc;
        wo_stride_r = d;
        wo_stride_j = 1;
        fix.center = 0;
    }
    const layer L = {T,      H,    G,           d_h,         d,   norm, whole,
                     attn,   values, w_o, wo_stride_r, wo_stride_j, fix, wn2};
    for (int64_t t = 0; t < T; t++) {
        wn[t] = ltt__norm(d, whole + t * d, norm);
        wn2[t] = wn[t] * wn[t]; /* read in L2 mode only */
    }
    const int nt = ltt__threads(head_work(T, d_h, d));
    int bad = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        map_ctx ctx = {T, wn, total, &ws, out};
        shared_head(&L, head, &ws, &bad, map_band, &ctx);
    }
    if (bad)
        st = LTT_ERR_OVERFLOW;
    ws_free(&ws);
    free(wn);
    free(wn2);
    free(wc);
    return st;
}

ltt_status ltt_attn_edge_heads_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                   int64_t wo_stride_r, int64_t wo_stride_j, int64_t target,
                                   int64_t source, int norm, float *restrict out,
                                   const float *restrict whole, const float *restrict attn,
                                   const float *restrict values, const float *restrict w_o,
                                   const double *restrict total, ltt_norm_fix fix)
{
    ltt_status st =
        check_view(T, H, G, d_h, d, wo_stride_r, wo_stride_j, norm,
                   target < 0 || target >= T || source < 0 || source > target, out, whole, attn,
                   values, w_o, total);
    if (st != LTT_OK)
        return st;
    float *u = malloc((size_t)d * sizeof(float));
    float *wc = fix.center ? centred_weights(H * d_h, d, w_o, wo_stride_r, wo_stride_j) : NULL;
    if (u == NULL || (fix.center && wc == NULL)) {
        free(u);
        free(wc);
        return LTT_ERR_NOMEM;
    }
    if (wc != NULL) { /* the same centred vectors as ltt_attn_contrib_f32's */
        w_o = wc;
        wo_stride_r = d;
        wo_stride_j = 1;
        fix.center = 0;
    }
    const float *w = whole + target * d;
    const double nw = ltt__norm(d, w, norm);
    const layer L = {T,      H,    G,           d_h,         d,   norm, whole,
                     attn,   values, w_o, wo_stride_r, wo_stride_j, fix, NULL};
    for (int64_t h = 0; h < H; h++) {
        /* One source: a [1, d_h] x [d_h, d] product. */
        if (head_vectors(&L, h, 1, u, NULL, values + source * G * d_h)) {
            st = LTT_ERR_OVERFLOW;
            break;
        }
        const double aq = coef(attn + h * T * T, fix.row_scale, T, target, source);
        out[h] = (float)(ltt__raw(nw, ltt__dist(d, w, u, aq, norm)) / total[target]);
    }
    free(u);
    free(wc);
    return st;
}
