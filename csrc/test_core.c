/* test_core.c: C test driver of the core on hand-checked cases (run it under the sanitizers). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ltt_core.h"


static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define NEAR(x, y, tol)                                                                            \
    do {                                                                                           \
        const double x_ = (x), y_ = (y);                                                           \
        if (!(fabs(x_ - y_) <= (tol))) {                                                           \
            fprintf(stderr, "%s:%d: %s = %.9g, expected %.9g (tol %g)\n", __FILE__, __LINE__, #x,  \
                    x_, y_, (double)(tol));                                                        \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* free() of n pointers. */
static void free_all(int n, ...)
{
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        free(va_arg(ap, void *));
    va_end(ap);
}

static const ltt_norm_fix NOFIX = {NULL, NULL, 0};

/* Figure (a): L2, whole [2,2], resid [2,1], parts [1,1] and [-1,0]. */
static void test_contributions_figure(void)
{
    const float parts[3 * 2] = {2, 1, 1, 1, -1, 0};
    const float whole[2] = {2, 2};
    float out[3];
    CHECK(ltt_contributions_f32(3, 1, 2, 2, out, parts, whole) == LTT_OK);
    NEAR(out[0], 0.56387, 1e-5);
    NEAR(out[1], 0.43613, 1e-5);
    CHECK(out[2] > 0.0f && out[2] < 1e-5f);
    NEAR(out[0] + out[1] + out[2], 1.0, 1e-6);
    /* L1: ||w|| = 4; raws 3, 2, eps. */
    CHECK(ltt_contributions_f32(3, 1, 2, 1, out, parts, whole) == LTT_OK);
    NEAR(out[0], 3.0 / (5.0 + 1e-5), 1e-6);
    NEAR(out[1], 2.0 / (5.0 + 1e-5), 1e-6);
    NEAR(out[2], 1e-5 / (5.0 + 1e-5), 1e-9);
    CHECK(ltt_contributions_f32(3, 1, 2, 3, out, parts, whole) == LTT_ERR_NORM);
    CHECK(ltt_contributions_f32(0, 1, 2, 1, out, parts, whole) == LTT_ERR_SIZE);
    CHECK(ltt_contributions_f32(3, 1, 2, 1, NULL, parts, whole) == LTT_ERR_NULL);
}

/* The same figure as one attention layer: one token, one head, u = [1,1], extra [-1,0]. */
static void test_attn_figure(void)
{
    const float resid[2] = {2, 1}, whole[2] = {2, 2}, attn[1] = {1}, values[1] = {1};
    const float w_o[2] = {1, 1}, extra[2] = {-1, 0};
    float edges[1], r[1], b[1], ex[1], heads[1];
    double total[1];
    for (int norm = 1; norm <= 2; norm++) {
        CHECK(ltt_attn_contrib_f32(1, 1, 1, 1, 2, 2, 1, 1, 0, norm, edges, r, b, ex, total, heads, resid,
                                   whole, attn, values, w_o, NULL, extra, NOFIX) == LTT_OK);
        if (norm == 2) {
            NEAR(edges[0], 0.43613, 1e-5);
            NEAR(r[0], 0.56387, 1e-5);
        } else {
            NEAR(edges[0], 2.0 / (5.0 + 1e-5), 1e-6);
            NEAR(r[0], 3.0 / (5.0 + 1e-5), 1e-6);
            NEAR(total[0], 5.0 + 1e-5, 1e-9);
        }
        CHECK(ex[0] > 0.0f && ex[0] < 1e-5f);
        NEAR(b[0], 0.0, 0.0);
        NEAR(heads[0], edges[0], 1e-7);
        float map[1], eh[1];
        CHECK(ltt_attn_head_map_f32(1, 1, 1, 1, 2, 2, 1, 0, norm, map, whole, attn, values, w_o, total,
                                    NOFIX) == LTT_OK);
        NEAR(map[0], edges[0], 1e-6);
        CHECK(ltt_attn_edge_heads_f32(1, 1, 1, 1, 2, 2, 1, 0, 0, norm, eh, whole, attn, values, w_o,
                                      total, NOFIX) == LTT_OK);
        NEAR(eh[0], edges[0], 1e-6);
    }
}

/* Naive double L1/L2 distance of whole[t] - a * (values[s, g] @ w_o[h]). */
static double naive_dist(int64_t H, int64_t G, int64_t dh, int64_t d, int64_t t, int64_t s,
                         int64_t h, double a, const float *whole, const float *values,
                         const float *w_o, int norm)
{
    const int64_t g = h / (H / G);
    double acc = 0.0;
    for (int64_t j = 0; j < d; j++) {
        double u = 0.0;
        for (int64_t k = 0; k < dh; k++)
            u += (double)values[(s * G + g) * dh + k] * (double)w_o[(h * dh + k) * d + j];
        const double e = (double)whole[t * d + j] - a * u;
        acc += norm == 1 ? fabs(e) : e * e;
    }
    return norm == 1 ? acc : sqrt(acc);
}

static double wnorm(int64_t d, const float *w, int norm)
{
    double s = 0.0;
    for (int64_t j = 0; j < d; j++)
        s += norm == 1 ? fabs((double)w[j]) : (double)w[j] * w[j];
    return norm == 1 ? s : sqrt(s);
}

static float frand(unsigned *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* A GQA layer with odd sizes against a naive double computation. */
static void test_attn_random(void)
{
    const int64_t T = 19, H = 4, G = 2, dh = 3, d = 37, E = 1;
    unsigned st = 12345u;
    float *resid = malloc(T * d * sizeof(float)), *whole = malloc(T * d * sizeof(float));
    float *attn = malloc(H * T * T * sizeof(float)), *values = malloc(T * G * dh * sizeof(float));
    float *w_o = malloc(H * dh * d * sizeof(float)), *extra = malloc(E * T * d * sizeof(float));
    float *bias = malloc(d * sizeof(float)), *rs = malloc(T * sizeof(float));
    float *edges = malloc(T * T * sizeof(float)), *heads = malloc(H * T * T * sizeof(float));
    float *r = malloc(T * sizeof(float)), *b = malloc(T * sizeof(float));
    float *ex = malloc(E * T * sizeof(float)), *map = malloc(T * T * sizeof(float));
    double *total = malloc(T * sizeof(double));
    for (int64_t i = 0; i < T * d; i++) {
        resid[i] = frand(&st);
        whole[i] = resid[i] + frand(&st);
        extra[i] = 0.5f * frand(&st);
    }
    for (int64_t i = 0; i < H * T * T; i++)
        attn[i] = 0.5f + 0.5f * frand(&st);
    for (int64_t i = 0; i < T * G * dh; i++)
        values[i] = frand(&st);
    for (int64_t i = 0; i < H * dh * d; i++)
        w_o[i] = frand(&st);
    for (int64_t i = 0; i < d; i++)
        bias[i] = 0.1f * frand(&st);
    for (int64_t t = 0; t < T; t++)
        rs[t] = 1.0f + 0.25f * frand(&st);
    const ltt_norm_fix fix = {rs, NULL, 0};
    for (int norm = 1; norm <= 2; norm++) {
        CHECK(ltt_attn_contrib_f32(T, H, G, dh, d, d, 1, E, 0, norm, edges, r, b, ex, total, heads, resid,
                                   whole, attn, values, w_o, bias, extra, fix) == LTT_OK);
        double worst = 0.0;
        for (int64_t t = 0; t < T; t++) {
            const double nw = wnorm(d, whole + t * d, norm);
            double sum = r[t] + b[t] + ex[t];
            for (int64_t s = 0; s < T; s++) {
                double e = 0.0;
                for (int64_t h = 0; h < H; h++) {
                    const double a = (double)(attn[(h * T + t) * T + s] * rs[t]);
                    double raw = 0.0;
                    if (s <= t) {
                        raw = nw - naive_dist(H, G, dh, d, t, s, h, a, whole, values, w_o, norm);
                        raw = raw > LTT_EPS ? raw : LTT_EPS;
                    }
                    const double want = raw / total[t];
                    const double got = heads[(h * T + t) * T + s];
                    worst = fmax(worst, fabs(got - want));
                    e += want;
                }
                worst = fmax(worst, fabs(edges[t * T + s] - e));
                sum += edges[t * T + s];
            }
            NEAR(sum, 1.0, 1e-5);
        }
        NEAR(worst, 0.0, 2e-6);
        for (int64_t h = 0; h < H; h++) {
            CHECK(ltt_attn_head_map_f32(T, H, G, dh, d, d, 1, h, norm, map, whole, attn, values, w_o,
                                        total, fix) == LTT_OK);
            for (int64_t i = 0; i < T * T; i++)
                NEAR(map[i], heads[h * T * T + i], 1e-6);
        }
        float eh[4];
        CHECK(ltt_attn_edge_heads_f32(T, H, G, dh, d, d, 1, T - 1, 3, norm, eh, whole, attn, values, w_o,
                                      total, fix) == LTT_OK);
        for (int64_t h = 0; h < H; h++)
            NEAR(eh[h], heads[(h * T + T - 1) * T + 3], 1e-6);
    }
    /* w_o read in place as the output projection's own weight [d, H dh] (strides (1, H dh)):
     * the same shares as from its [H, dh, d] copy, also with the centring that copies it. */
    float *w_lin = malloc(H * dh * d * sizeof(float)), *edges2 = malloc(T * T * sizeof(float));
    float *heads2 = malloc(H * T * T * sizeof(float)), eh1[4], eh2[4];
    double *total2 = malloc(T * sizeof(double));
    for (int64_t k = 0; k < H * dh; k++)
        for (int64_t j = 0; j < d; j++)
            w_lin[j * H * dh + k] = w_o[k * d + j];
    for (int center = 0; center <= 1; center++) {
        const ltt_norm_fix fc = {rs, NULL, center};
        CHECK(ltt_attn_contrib_f32(T, H, G, dh, d, d, 1, E, 0, 1, edges, r, b, ex, total, heads,
                                   resid, whole, attn, values, w_o, bias, extra, fc) == LTT_OK);
        CHECK(ltt_attn_contrib_f32(T, H, G, dh, d, 1, H * dh, E, 0, 1, edges2, r, b, ex, total2,
                                   heads2, resid, whole, attn, values, w_lin, bias, extra,
                                   fc) == LTT_OK);
        for (int64_t i = 0; i < T * T; i++)
            NEAR(edges2[i], edges[i], 1e-6);
        for (int64_t i = 0; i < H * T * T; i++)
            NEAR(heads2[i], heads[i], 1e-6);
        CHECK(ltt_attn_head_map_f32(T, H, G, dh, d, 1, H * dh, 1, 1, map, whole, attn, values,
                                    w_lin, total, fc) == LTT_OK);
        for (int64_t i = 0; i < T * T; i++)
            NEAR(map[i], heads[T * T + i], 1e-6);
        CHECK(ltt_attn_edge_heads_f32(T, H, G, dh, d, d, 1, T - 1, 3, 1, eh1, whole, attn, values,
                                      w_o, total, fc) == LTT_OK);
        CHECK(ltt_attn_edge_heads_f32(T, H, G, dh, d, 1, H * dh, T - 1, 3, 1, eh2, whole, attn,
                                      values, w_lin, total, fc) == LTT_OK);
        for (int64_t h = 0; h < H; h++)
            NEAR(eh2[h], eh1[h], 1e-6);
    }
    /* Strides of neither layout. */
    CHECK(ltt_attn_contrib_f32(T, H, G, dh, d, d + 1, 1, 0, 0, 1, edges, r, b, ex, total, NULL,
                               resid, whole, attn, values, w_o, NULL, NULL, NOFIX) == LTT_ERR_SIZE);
    CHECK(ltt_attn_head_map_f32(T, H, G, dh, d, 1, H * dh - 1, 0, 1, map, whole, attn, values, w_o, total,
                                NOFIX) == LTT_ERR_SIZE);
    CHECK(ltt_attn_edge_heads_f32(T, H, G, dh, d, 2, 2, 2, 1, 1, map, whole, attn, values, w_o,
                                  total, NOFIX) == LTT_ERR_SIZE);
    free_all(4, w_lin, edges2, heads2, total2);
    /* Bad arguments. */
    CHECK(ltt_attn_contrib_f32(T, 3, 2, dh, d, d, 1, 0, 0, 1, edges, r, b, ex, total, NULL, resid, whole,
                               attn, values, w_o, NULL, NULL, NOFIX) == LTT_ERR_SIZE);
    CHECK(ltt_attn_contrib_f32(T, H, G, dh, d, d, 1, 0, 0, 3, edges, r, b, ex, total, NULL, resid, whole,
                               attn, values, w_o, NULL, NULL, NOFIX) == LTT_ERR_NORM);
    CHECK(ltt_attn_contrib_f32(T, H, G, dh, d, d, 1, 0, 0, 1, edges, r, b, ex, total, NULL, NULL, whole,
                               attn, values, w_o, NULL, NULL, NOFIX) == LTT_ERR_NULL);
    CHECK(ltt_attn_head_map_f32(T, H, G, dh, d, d, 1, H, 1, map, whole, attn, values, w_o, total,
                                NOFIX) == LTT_ERR_INDEX);
    CHECK(ltt_attn_edge_heads_f32(T, H, G, dh, d, d, 1, 2, 3, 1, map, whole, attn, values, w_o, total,
                                  NOFIX) == LTT_ERR_INDEX);
    CHECK(ltt_attn_edge_heads_f32(T, H, G, dh, d, d, 1, T, 0, 1, map, whole, attn, values, w_o, total,
                                  NOFIX) == LTT_ERR_INDEX);
    /* A head vector that overflows float32. */
    float big_v[1] = {3e38f}, big_w[2] = {10.0f, 1.0f}, w1[2] = {1, 1}, a1[1] = {1};
    float e1[1], r1[1], b1[1];
    double z1[1];
    CHECK(ltt_attn_contrib_f32(1, 1, 1, 1, 2, 2, 1, 0, 0, 1, e1, r1, b1, NULL, z1, NULL, w1, w1, a1,
                               big_v, big_w, NULL, NULL, NOFIX) == LTT_ERR_OVERFLOW);
    free_all(15, resid, whole, attn, values, w_o, extra, bias, rs, edges, heads, r, b, ex, map,
             total);
}

/* The figure as an FFN: neurons [1,1] and [-1,0] with activations 1, in both weight layouts. */
static void test_ffn_figure(void)
{
    const float act[2] = {1, 1}, resid[2] = {2, 1}, whole[2] = {2, 2};
    const float rows[4] = {1, 1, -1, 0}; /* [F=2, d=2] */
    const float cols[4] = {1, -1, 1, 0}; /* the same, stored [d, F] */
    float neurons[2], r[1], b[1];
    double total[1];
    for (int layout = 0; layout < 2; layout++) {
        const float *wd = layout ? cols : rows;
        const int64_t si = layout ? 1 : 2, sj = layout ? 2 : 1;
        CHECK(ltt_ffn_neuron_contrib_f32(1, 2, 2, si, sj, 0, 2, neurons, r, b, total, act, wd,
                                         resid, whole, NULL, NOFIX) == LTT_OK);
        NEAR(neurons[0], 0.43613, 1e-5);
        NEAR(r[0], 0.56387, 1e-5);
        CHECK(neurons[1] > 0.0f && neurons[1] < 1e-5f);
        CHECK(ltt_ffn_neuron_contrib_f32(1, 2, 2, si, sj, 0, 1, neurons, r, b, total, act, wd,
                                         resid, whole, NULL, NOFIX) == LTT_OK);
        NEAR(neurons[0], 2.0 / (5.0 + 1e-5), 1e-6);
        NEAR(r[0], 3.0 / (5.0 + 1e-5), 1e-6);
    }
    CHECK(ltt_ffn_neuron_contrib_f32(1, 2, 2, 2, 2, 0, 1, neurons, r, b, total, act, rows, resid,
                                     whole, NULL, NOFIX) == LTT_ERR_SIZE);
    CHECK(ltt_ffn_neuron_contrib_f32(1, 2, 2, 2, 1, 0, 0, neurons, r, b, total, act, rows, resid,
                                     whole, NULL, NOFIX) == LTT_ERR_NORM);
}

/* Figure (b): threshold 0.1 on parts [[0.05, 0.15], [0.05, 0.05]] and residuals [0.8, 0.9]. */
static void test_renormalize_figure(void)
{
    const float heads[4] = {0.05f, 0.15f, 0.05f, 0.05f}, single[2] = {0.8f, 0.9f};
    float edges[4], out[2];
    CHECK(ltt_renormalize_f32(1, 2, 2, 1, 0.1, edges, out, heads, single) == LTT_OK);
    NEAR(edges[0], 0.0, 0.0);
    NEAR(edges[1], 0.157894, 1e-6);
    NEAR(edges[2], 0.0, 0.0);
    NEAR(edges[3], 0.0, 0.0);
    NEAR(out[0], 0.842105, 1e-6);
    NEAR(out[1], 1.0, 1e-7);
    /* Everything below the threshold: the largest part alone, at share 1. */
    const float low[4] = {0.01f, 0.03f, 0.02f, 0.02f}, low1[2] = {0.02f, 0.01f};
    CHECK(ltt_renormalize_f32(1, 2, 2, 1, 0.5, edges, out, low, low1) == LTT_OK);
    NEAR(edges[1], 1.0, 0.0);
    NEAR(edges[0] + out[0], 0.0, 0.0);
    NEAR(edges[2], 1.0, 0.0); /* tie 0.02 / 0.02 / 0.01: the first head part wins */
    NEAR(edges[3] + out[1], 0.0, 0.0);
    CHECK(ltt_renormalize_f32(1, 2, 2, 1, 1.0, edges, out, heads, single) == LTT_ERR_THRESHOLD);
    CHECK(ltt_renormalize_f32(1, 2, 2, 1, NAN, edges, out, heads, single) == LTT_ERR_THRESHOLD);
}

static void test_prune(void)
{
    /* One sequential layer, two tokens (the wrapper's docstring example). */
    const float attn[4] = {0.0f, 0.0f, 0.7f, 0.1f}, ar[2] = {1.0f, 0.2f};
    const float ffn[2] = {0.3f, 0.3f}, fr[2] = {0.7f, 0.7f};
    const uint8_t seq[1] = {0}, par[1] = {1};
    const int64_t tg[1] = {1};
    uint8_t kar[2], kf[2], kfr[2];
    int64_t *edges = NULL, n = -1;
    CHECK(ltt_prune_f32(1, 2, 1, 0.5, kar, kf, kfr, &edges, &n, attn, ar, ffn, fr, seq, tg) ==
          LTT_OK);
    CHECK(n == 1 && edges != NULL && edges[0] == 0 && edges[1] == 1 && edges[2] == 0);
    CHECK(kar[0] == 0 && kar[1] == 0 && kf[1] == 0 && kfr[1] == 1 && kfr[0] == 0);
    free(edges);
    /* Parallel: nothing reaches 0.8, the largest incoming edge (attention 0.7) is kept. */
    CHECK(ltt_prune_f32(1, 2, 1, 0.8, kar, kf, kfr, &edges, &n, attn, ar, ffn, fr, par, tg) ==
          LTT_OK);
    CHECK(n == 1 && edges[0] == 0 && edges[1] == 1 && edges[2] == 0);
    CHECK(kar[1] == 0 && kf[1] == 0 && kfr[1] == 0);
    free(edges);
    /* No targets: nothing kept. */
    CHECK(ltt_prune_f32(1, 2, 0, 0.5, kar, kf, kfr, &edges, &n, attn, ar, ffn, fr, seq, tg) ==
          LTT_OK);
    CHECK(n == 0 && edges == NULL);
    const int64_t bad[1] = {2};
    CHECK(ltt_prune_f32(1, 2, 1, 0.5, kar, kf, kfr, &edges, &n, attn, ar, ffn, fr, seq, bad) ==
          LTT_ERR_INDEX);
    const float nan_attn[4] = {0.0f, 0.0f, NAN, 0.1f};
    CHECK(ltt_prune_f32(1, 2, 1, 0.5, kar, kf, kfr, &edges, &n, nan_attn, ar, ffn, fr, seq, tg) ==
          LTT_ERR_NONFINITE);
    free(edges);
}

static float urand(unsigned *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffff) / 65536.0f - 0.5f;
}

/* The same layer, FFN and contributions on 1, 2 and 3 threads (run with LTT_PAR_MIN_WORK=0 to
 * take the threaded paths: whole heads per thread, heads shared in row bands, neuron blocks). */
static void test_threads_agree(void)
{
    enum { T = 150, G = 1, DH = 5, D = 70, E = 1, N = 11, F = 300 };
    /* on 3 threads: a group of 2 heads (2), 3 + 1 (4), 3 + 3 (6), or heads shared in row bands
     * when built with -DPRIVATE_BYTES=0 (test_core_shared); on 1 thread: one head at a time */
    const int Hs[3] = {2, 4, 6};
    unsigned st = 7;
    float *resid = malloc(sizeof(float) * T * D), *whole = malloc(sizeof(float) * T * D);
    float *attn = malloc(sizeof(float) * 6 * T * T), *values = malloc(sizeof(float) * T * G * DH);
    float *w_o = malloc(sizeof(float) * 6 * DH * D), *extra = malloc(sizeof(float) * E * T * D);
    float *bias = malloc(sizeof(float) * D), *rs = malloc(sizeof(float) * T);
    float *act = malloc(sizeof(float) * N * F), *wd = malloc(sizeof(float) * F * D);
    for (int i = 0; i < T * D; i++) {
        resid[i] = urand(&st);
        whole[i] = resid[i] + 0.3f * urand(&st);
        extra[i] = 0.2f * urand(&st);
    }
    for (int i = 0; i < 6 * T * T; i++)
        attn[i] = urand(&st) + 0.5f;
    for (int i = 0; i < T * G * DH; i++)
        values[i] = urand(&st);
    for (int i = 0; i < 6 * DH * D; i++)
        w_o[i] = urand(&st);
    for (int i = 0; i < D; i++)
        bias[i] = 0.1f * urand(&st);
    for (int i = 0; i < T; i++)
        rs[i] = 0.5f + urand(&st) + 0.5f;
    for (int i = 0; i < N * F; i++)
        act[i] = urand(&st);
    for (int i = 0; i < F * D; i++)
        wd[i] = 0.05f * urand(&st);
    const ltt_norm_fix fix = {rs, NULL, 1};
    float *edges[3], *heads[3], *ro[3], *bo[3], *xo[3], *map[3], *neu[3];
    double *total[3];
    for (int k = 0; k < 3; k++) {
        edges[k] = malloc(sizeof(float) * T * T);
        heads[k] = malloc(sizeof(float) * 6 * T * T);
        map[k] = malloc(sizeof(float) * T * T);
        ro[k] = malloc(sizeof(float) * T);
        bo[k] = malloc(sizeof(float) * T);
        xo[k] = malloc(sizeof(float) * E * T);
        total[k] = malloc(sizeof(double) * T);
        neu[k] = malloc(sizeof(float) * N * F);
    }
    for (int hi = 0; hi < 3; hi++)
        for (int norm = 1; norm <= 2; norm++) {
            const int H = Hs[hi];
            for (int k = 0; k < 3; k++) {
                CHECK(ltt_set_num_threads(k + 1) == LTT_OK);
                CHECK(ltt_attn_contrib_f32(T, H, G, DH, D, D, 1, E, 0, norm, edges[k], ro[k], bo[k],
                                           xo[k], total[k], heads[k], resid, whole, attn, values,
                                           w_o, bias, extra, fix) == LTT_OK);
                CHECK(ltt_attn_head_map_f32(T, H, G, DH, D, D, 1, H - 1, norm, map[k], whole, attn,
                                            values, w_o, total[k], fix) == LTT_OK);
                float r1[N], b1[N];
                double t1[N];
                CHECK(ltt_ffn_neuron_contrib_f32(N, F, D, norm == 1 ? D : 1, norm == 1 ? 1 : F, 0,
                                                 norm, neu[k], r1, b1, t1, act, wd, resid, whole,
                                                 bias, NOFIX) == LTT_OK);
            }
            for (int k = 1; k < 3; k++) {
                double e = 0.0, em = 0.0;
                for (int i = 0; i < T * T; i++) {
                    e = fmax(e, fabs(edges[k][i] - edges[0][i]));
                    e = fmax(e, fabs(map[k][i] - map[0][i]));
                    /* kept heads are rounded to float before the division: not bitwise */
                    em = fmax(em, fabs(map[k][i] - heads[0][(H - 1) * T * T + i]));
                }
                for (int i = 0; i < H * T * T; i++)
                    e = fmax(e, fabs(heads[k][i] - heads[0][i]));
                for (int i = 0; i < T; i++) {
                    e = fmax(e, fabs(ro[k][i] - ro[0][i]) + fabs(bo[k][i] - bo[0][i]));
                    e = fmax(e, fabs(xo[k][i] - xo[0][i]));
                    e = fmax(e, fabs(total[k][i] - total[0][i]) / total[0][i]);
                }
                for (int i = 0; i < N * F; i++)
                    e = fmax(e, fabs(neu[k][i] - neu[0][i]));
                NEAR(e, 0.0, 0.0); /* bitwise: reductions run in a fixed order */
                NEAR(em, 0.0, 1e-6);
            }
        }
    CHECK(ltt_set_num_threads(1) == LTT_OK);
    /* contributions: K = 3 parts of M = T wholes */
    float out1[3 * T], out3[3 * T];
    float *parts = malloc(sizeof(float) * 3 * T * D);
    for (int i = 0; i < 3 * T * D; i++)
        parts[i] = urand(&st);
    CHECK(ltt_contributions_f32(3, T, D, 1, out1, parts, whole) == LTT_OK);
    CHECK(ltt_set_num_threads(3) == LTT_OK);
    CHECK(ltt_contributions_f32(3, T, D, 1, out3, parts, whole) == LTT_OK);
    for (int i = 0; i < 3 * T; i++)
        NEAR(out3[i], out1[i], 0.0);
    free(parts);
    for (int k = 0; k < 3; k++)
        free_all(8, edges[k], heads[k], map[k], ro[k], bo[k], xo[k], total[k], neu[k]);
    free_all(10, resid, whole, attn, values, w_o, extra, bias, rs, act, wd);
}

/* Sparse rows: the checker, and both sparse kernels against the dense ones on the dense
 * equivalent (entries below 0.05 dropped, so rows of every length occur, empty ones included). */
static void test_sparse(void)
{
    /* ltt_sparse_check: 2 rows of T = 2 (targets 0, 1). */
    const int64_t ip[3] = {0, 1, 3}, ip_start[3] = {1, 1, 3}, ip_down[3] = {0, 2, 1};
    const int32_t src[3] = {0, 0, 1}, src_far[3] = {0, 2, 1}, src_dup[3] = {0, 1, 1};
    const int16_t hd[3] = {0, 1, 0}, hd_neg[3] = {0, -1, 0};
    int64_t bad = 0;
    CHECK(ltt_sparse_check(2, 2, 3, &bad, ip, src, NULL) == LTT_OK);
    CHECK(ltt_sparse_check(2, 2, 3, &bad, ip_start, src, NULL) == LTT_ERR_INDEX && bad == -1);
    CHECK(ltt_sparse_check(2, 2, 3, &bad, ip_down, src, NULL) == LTT_ERR_INDEX && bad == -3);
    CHECK(ltt_sparse_check(2, 2, 4, &bad, ip, src, NULL) == LTT_ERR_INDEX && bad == -3);
    CHECK(ltt_sparse_check(2, 2, 3, &bad, ip, src_far, NULL) == LTT_ERR_INDEX && bad == 1);
    CHECK(ltt_sparse_check(2, 2, 3, &bad, ip, src_dup, NULL) == LTT_ERR_INDEX && bad == 2);
    CHECK(ltt_sparse_check(2, 2, 3, &bad, ip, src, hd) == LTT_ERR_INDEX && bad == 2);
    CHECK(ltt_sparse_check(2, 2, 3, &bad, ip, src, hd_neg) == LTT_ERR_INDEX && bad == 1);
    CHECK(ltt_sparse_check(0, 2, 3, &bad, ip, src, NULL) == LTT_ERR_SIZE);
    CHECK(ltt_sparse_check(2, 2, 3, &bad, NULL, src, NULL) == LTT_ERR_NULL);

    enum { L = 3, T = 40, H = 3, E = 2 };
    unsigned st = 11;
    float *attn = calloc(L * T * T, sizeof(float)), *w = malloc(sizeof(float) * L * T * T);
    float *ar = malloc(sizeof(float) * L * T), *ffn = malloc(sizeof(float) * L * T);
    float *fr = malloc(sizeof(float) * L * T), *heads = calloc(H * T * T, sizeof(float));
    float *parts = malloc(sizeof(float) * H * T * T), *single = malloc(sizeof(float) * E * T);
    int64_t *indptr = malloc(sizeof(int64_t) * (L * T + 1));
    int32_t *sources = malloc(sizeof(int32_t) * L * T * T);
    int16_t *phd = malloc(sizeof(int16_t) * H * T * T);
    const uint8_t par[L] = {0, 1, 0};
    const int64_t targets[3] = {T - 1, 0, 17};
    int64_t nnz = 0;
    indptr[0] = 0;
    for (int l = 0; l < L; l++)
        for (int t = 0; t < T; t++) {
            for (int s = 0; s <= t; s++) {
                const float v = (urand(&st) + 0.5f) * (urand(&st) + 0.5f) * 0.3f;
                if (v >= 0.05f) {
                    attn[(l * T + t) * T + s] = w[nnz] = v;
                    sources[nnz++] = s;
                }
            }
            indptr[l * T + t + 1] = nnz;
            ar[l * T + t] = 0.15f * (urand(&st) + 0.5f);
            ffn[l * T + t] = 0.15f * (urand(&st) + 0.5f);
            fr[l * T + t] = 0.15f * (urand(&st) + 0.5f);
        }
    const double thresholds[4] = {0.0, 0.05, 0.1, 0.2};
    for (int k = 0; k < 4; k++) {
        uint8_t kd[3][L * T], ks[3][L * T];
        int64_t *ed = NULL, *es = NULL, nd = -1, ns = -2;
        CHECK(ltt_prune_f32(L, T, 3, thresholds[k], kd[0], kd[1], kd[2], &ed, &nd, attn, ar, ffn,
                            fr, par, targets) == LTT_OK);
        CHECK(ltt_prune_sparse_f32(L, T, nnz, 3, thresholds[k], ks[0], ks[1], ks[2], &es, &ns,
                                   indptr, sources, w, ar, ffn, fr, par, targets) == LTT_OK);
        CHECK(nd == ns && nd > 0);
        CHECK(nd != ns || nd == 0 || memcmp(ed, es, sizeof(int64_t) * 3 * (size_t)nd) == 0);
        CHECK(memcmp(kd, ks, sizeof kd) == 0);
        free(ed);
        free(es);
    }
    int64_t *e1 = NULL, n1 = 0;
    uint8_t kk[3][L * T];
    CHECK(ltt_prune_sparse_f32(L, T, nnz, 3, 1.0, kk[0], kk[1], kk[2], &e1, &n1, indptr, sources, w,
                               ar, ffn, fr, par, targets) == LTT_ERR_THRESHOLD);
    CHECK(ltt_prune_sparse_f32(L, T, nnz + 1, 3, 0.1, kk[0], kk[1], kk[2], &e1, &n1, indptr,
                               sources, w, ar, ffn, fr, par, targets) == LTT_ERR_INDEX);
    CHECK(ltt_prune_sparse_f32(L, T, nnz, 3, 0.1, kk[0], kk[1], kk[2], &e1, &n1, NULL, sources, w,
                               ar, ffn, fr, par, targets) == LTT_ERR_NULL);
    CHECK(e1 == NULL);

    /* renormalize: one layer's head parts, rows sorted by (head, source) */
    int64_t P = 0;
    int64_t *rip = malloc(sizeof(int64_t) * (T + 1));
    rip[0] = 0;
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < H; h++)
            for (int s = 0; s <= t; s++) {
                const float v = (urand(&st) + 0.5f) * (urand(&st) + 0.5f) * 0.2f;
                if (v >= 0.05f) {
                    heads[(h * T + t) * T + s] = parts[P] = v;
                    sources[P] = s;
                    phd[P++] = (int16_t)h;
                }
            }
        rip[t + 1] = P;
    }
    for (int i = 0; i < E * T; i++)
        single[i] = 0.2f * (urand(&st) + 0.5f);
    float *edges = malloc(sizeof(float) * T * T), *sd = malloc(sizeof(float) * E * T);
    float *po = malloc(sizeof(float) * (P + 1)), *ss = malloc(sizeof(float) * E * T);
    double *sum = malloc(sizeof(double) * T * T);
    for (int k = 0; k < 4; k++) {
        CHECK(ltt_renormalize_f32(H, T, T, E, thresholds[k], edges, sd, heads, single) == LTT_OK);
        CHECK(ltt_renormalize_sparse_f32(T, P, E, thresholds[k], po, ss, rip, sources, phd, parts,
                                         single) == LTT_OK);
        CHECK(memcmp(sd, ss, sizeof(float) * E * T) == 0);
        for (int i = 0; i < T * T; i++)
            sum[i] = 0.0;
        for (int t = 0; t < T; t++)
            for (int64_t j = rip[t]; j < rip[t + 1]; j++)
                sum[t * T + sources[j]] += po[j];
        double e = 0.0;
        for (int i = 0; i < T * T; i++)
            e = fmax(e, fabs((double)(float)sum[i] - edges[i]) / fmax(edges[i], 1e-30));
        NEAR(e, 0.0, 1e-6);
    }
    CHECK(ltt_renormalize_sparse_f32(T, P, E, NAN, po, ss, rip, sources, phd, parts, single) ==
          LTT_ERR_THRESHOLD);
    CHECK(ltt_renormalize_sparse_f32(T, P, E, 0.1, po, ss, rip, sources, NULL, parts, single) ==
          LTT_ERR_NULL);
    CHECK(ltt_renormalize_sparse_f32(T, P - 1, E, 0.1, po, ss, rip, sources, phd, parts, single) ==
          LTT_ERR_INDEX);
    free(attn);
    free(w);
    free(ar);
    free(ffn);
    free(fr);
    free(heads);
    free(parts);
    free(single);
    free(indptr);
    free(sources);
    free(phd);
    free(rip);
    free(edges);
    free(sd);
    free(po);
    free(ss);
    free(sum);
}

static void test_status(void)
{
    for (int s = LTT_OK; s <= LTT_ERR_NONFINITE; s++)
        CHECK(strlen(ltt_status_str((ltt_status)s)) > 0);
    CHECK(strcmp(ltt_status_str((ltt_status)999), "unknown status") == 0);
    const char *v = ltt_simd_variant();
    CHECK(strcmp(v, "avx512") == 0 || strcmp(v, "avx2") == 0 || strcmp(v, "scalar") == 0);
}

/* A two-token layer whose decomposition is exact in binary: every error is 0; one spoiled state
 * shows at its exact size; bad sizes, rows and pointers give their status. */
static void test_probe_check(void)
{
    const int64_t rows[2] = {0, 1};
    const float probs[4] = {1.0f, 0.0f, 0.5f, 0.5f}; /* [H=1, R=2, T=2] */
    const float values[2] = {1.0f, 3.0f};            /* [T, G=1, d_h=1] */
    const float o[1] = {1.0f};                       /* w_o = [1, 0] along z = [1, 2] */
    const double down[1] = {2.0}, z[2] = {1.0, 2.0}; /* w_down = [0, 1] along z */
    const float pre[4] = {1, 1, 1, 1}, mid[4] = {2, 1, 3, 1}, ffn[4] = {0, 2, 0, 1},
                act[2] = {2, 1};
    float post[4] = {2, 3, 3, 2};
    ltt_probe_inputs in = {2,    2,   1,    1,   1,    2,   1,    1,    rows, probs, values, o,
                           down, z,   pre,  mid, post, ffn, act,  NULL, NULL, NULL,  NULL};
    double e[3] = {-1, -1, -1};
    CHECK(ltt_probe_check(&in, e) == LTT_OK);
    CHECK(e[0] == 0.0 && e[1] == 0.0 && e[2] == 0.0);
    post[2] += 1.0f; /* token 1's output [4, 2]: the FFN sum is off by 1 of 4 */
    CHECK(ltt_probe_check(&in, e) == LTT_OK);
    CHECK(e[0] == 0.0 && fabs(e[1] - 0.25) < 1e-12 && e[2] == 0.0);
    in.resid_mid = NULL; /* a parallel block: pre + attn + ffn against post */
    CHECK(ltt_probe_check(&in, e) == LTT_OK);
    CHECK(e[0] > 0.1 && e[1] == 0.0);
    in.resid_mid = mid;
    in.k = 17;
    CHECK(ltt_probe_check(&in, e) == LTT_ERR_SIZE);
    in.k = 1;
    const int64_t bad[2] = {0, 2};
    in.rows = bad;
    CHECK(ltt_probe_check(&in, e) == LTT_ERR_INDEX);
    in.rows = rows;
    in.act = NULL;
    CHECK(ltt_probe_check(&in, e) == LTT_ERR_NULL);
}

int main(void)
{
    test_contributions_figure();
    test_attn_figure();
    test_attn_random();
    test_ffn_figure();
    test_renormalize_figure();
    test_prune();
    test_threads_agree();
    test_sparse();
    test_probe_check();
    test_status();
    if (failures) {
        fprintf(stderr, "test_core (%s): %d failure(s)\n", ltt_simd_variant(), failures);
        return 1;
    }
    printf("test_core (%s): all passed\n", ltt_simd_variant());
    return 0;
}
