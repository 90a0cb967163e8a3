/* ltt_core.h: public API of the ltt attribution core (plain C11, no Python). */
#ifndef LTT_CORE_H
#define LTT_CORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every core function returns one of these. */
typedef enum {
    LTT_OK = 0,
    LTT_ERR_SIZE,      /* a size is negative or zero where it must be positive, or H % G != 0 */
    LTT_ERR_NORM,      /* norm is not 1 or 2 */
    LTT_ERR_THRESHOLD, /* threshold is not in [0, 1) or not finite */
    LTT_ERR_INDEX,     /* an index (head, target, source) is out of range */
    LTT_ERR_NOMEM,     /* an allocation failed */
    LTT_ERR_OVERFLOW,  /* an intermediate float32 value (a head vector) overflowed */
    LTT_ERR_NULL,      /* a required pointer is NULL */
    LTT_ERR_NONFINITE  /* an input value read by the kernel is NaN or inf */
} ltt_status;

/* A short English description of a status code. */
const char *ltt_status_str(ltt_status status);

/* The SIMD variant the hot loops run with on this CPU: "avx512", "avx2" or "scalar". */
const char *ltt_simd_variant(void);

/*
 * Threads of the core's parallel kernels: n >= 1 (LTT_ERR_SIZE otherwise), for every call from
 * any thread after this one. Until it is called, OpenMP's default (omp_get_max_threads(), which
 * honours OMP_NUM_THREADS). Calls below a small-work cutoff run on one thread; results are
 * bitwise identical for any thread count. Without OpenMP the core runs on one thread.
 */
ltt_status ltt_set_num_threads(int n);

/* The thread count a large call runs on now (1 in a build without OpenMP). */
int ltt_get_num_threads(void);

/* Floor of a raw contribution: raw = max(||w|| - ||w - p||, LTT_EPS). */
#define LTT_EPS 1e-5

/* Optional post-branch norm applied to head vectors / neuron vectors (NULL / 0 when absent). */
typedef struct {
    const float *row_scale; /* [T] (or [N]): per-target factor on every part, or NULL */
    const float *col_scale; /* [d]: per-coordinate factor, or NULL */
    int center;             /* remove each vector's mean before col_scale */
} ltt_norm_fix;

/* Proximity shares of parts [K, M, d] in wholes [M, d] -> out [K, M], summing to 1 over K. */
ltt_status ltt_contributions_f32(int64_t K, int64_t M, int64_t d, int norm, float *restrict out,
                                 const float *restrict parts, const float *restrict whole);

/*
 * One attention layer's contributions (see ltt/_reference.py attn_contrib).
 *   resid [T, d], whole [T, d], attn [H, T, T], values [T, G, d_h], w_o [H, d_h, d]: head h's
 *   row r, coordinate j at w_o[(h * d_h + r) * wo_stride_r + j * wo_stride_j] (element strides:
 *   (d, 1) for C order, or (1, ld >= H * d_h) for the output projection's own weight [d, ld]
 *   read in place, all its heads or a run of them; any other pair is LTT_ERR_SIZE),
 *   bias [T, d] rows with stride bias_row_stride (0 for a [d] bias) or NULL,
 *   extra [E, T, d] or NULL (E = 0).
 * Outputs: edges [T, T], resid_out [T], bias_out [T], extra_out [E, T], total [T] (double),
 *   heads [H, T, T] or NULL (not kept).
 */
ltt_status ltt_attn_contrib_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                int64_t wo_stride_r, int64_t wo_stride_j, int64_t E,
                                int64_t bias_row_stride, int norm, float *restrict edges,
                                float *restrict resid_out, float *restrict bias_out,
                                float *restrict extra_out, double *restrict total,
                                float *restrict heads, const float *restrict resid,
                                const float *restrict whole, const float *restrict attn,
                                const float *restrict values, const float *restrict w_o,
                                const float *restrict bias, const float *restrict extra,
                                ltt_norm_fix fix);

/* One head's share map out [T, T] (zero above the diagonal) from kept normalisers total [T];
 * w_o as in ltt_attn_contrib_f32. */
ltt_status ltt_attn_head_map_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                 int64_t wo_stride_r, int64_t wo_stride_j, int64_t head, int norm,
                                 float *restrict out,
                                 const float *restrict whole, const float *restrict attn,
                                 const float *restrict values, const float *restrict w_o,
                                 const double *restrict total, ltt_norm_fix fix);

/* Every head's share out [H] of the edge source -> target (source <= target); w_o as in
 * ltt_attn_contrib_f32. */
ltt_status ltt_attn_edge_heads_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                   int64_t wo_stride_r, int64_t wo_stride_j, int64_t target,
                                   int64_t source, int norm, float *restrict out,
                                   const float *restrict whole, const float *restrict attn,
                                   const float *restrict values, const float *restrict w_o,
                                   const double *restrict total, ltt_norm_fix fix);

/*
 * Per-neuron contributions of N tokens' FFN blocks (see ltt/_reference.py ffn_neuron_contrib).
 *   act [N, F], w_down: neuron i's coordinate j at w_down[i * wd_stride_i + j * wd_stride_j]
 *   (element strides; one of them must be 1), resid [N, d], whole [N, d],
 *   bias rows with stride bias_row_stride (0 for a [d] bias) or NULL.
 * Outputs: neurons [N, F], resid_out [N], bias_out [N], total [N] (double).
 */
ltt_status ltt_ffn_neuron_contrib_f32(int64_t N, int64_t F, int64_t d, int64_t wd_stride_i,
                                      int64_t wd_stride_j, int64_t bias_row_stride, int norm,
                                      float *restrict neurons, float *restrict resid_out,
                                      float *restrict bias_out, double *restrict total,
                                      const float *restrict act, const float *restrict w_down,
                                      const float *restrict resid, const float *restrict whole,
                                      const float *restrict bias, ltt_norm_fix fix);

/*
 * The running exactness check of one layer (see ltt/_reference probe_check): the decomposition
 * rebuilt at rows and compared with the model's states along the directions z [d, k], k <= 16.
 */
typedef struct {
    int64_t T, R, H, G, d_h, d, F, k;
    const int64_t *rows;           /* [R], each in [0, T) */
    const float *probs;            /* [H, R, T]: the rows' attention probabilities */
    const float *values;           /* [T, G, d_h] */
    const float *o;                /* [H, d_h, k]: w_o[h] along the directions (post-norm pulled back) */
    const double *down;            /* [F, k]: w_down along the directions */
    const double *z;               /* [d, k] */
    const float *resid_pre;        /* [T, d] */
    const float *resid_mid;        /* [T, d], NULL for a parallel block */
    const float *resid_post;       /* [T, d] */
    const float *ffn_out;          /* [T, d] */
    const float *act;              /* [T, F] */
    const float *attn_row_scale;   /* [T] or NULL */
    const float *attn_bias;        /* [T, d] or NULL */
    const float *ffn_row_scale;    /* [T] or NULL */
    const float *ffn_bias;         /* [T, d] or NULL */
} ltt_probe_inputs;

/* errors [3]: attention branch, FFN sum (0 for a parallel block), neurons. */
ltt_status ltt_probe_check(const ltt_probe_inputs *p, double *restrict errors);

/*
 * Threshold mode renormalize=True: heads [K, T, S], single [E, T] -> edges [T, S], single_out
 * [E, T]. threshold in [0, 1).
 */
ltt_status ltt_renormalize_f32(int64_t K, int64_t T, int64_t S, int64_t E, double threshold,
                               float *restrict edges, float *restrict single_out,
                               const float *restrict heads, const float *restrict single);

/*
 * Backward pruning from targets (see ltt/_reference.py prune).
 *   attn [L, T, T], attn_resid [L, T], ffn [L, T], ffn_resid [L, T], parallel [L] (0/1),
 *   targets [n_targets] in [0, T).
 * Outputs: keep_attn_resid, keep_ffn, keep_ffn_resid [L, T] (0/1 bytes, zeroed by the callee),
 *   *edges_out: a malloc'ed array of n_edges * 3 int64 rows (l, t, s) sorted; the caller frees it
 *   with free().
 */
ltt_status ltt_prune_f32(int64_t L, int64_t T, int64_t n_targets, double threshold,
                         uint8_t *restrict keep_attn_resid, uint8_t *restrict keep_ffn,
                         uint8_t *restrict keep_ffn_resid, int64_t **edges_out,
                         int64_t *restrict n_edges, const float *restrict attn,
                         const float *restrict attn_resid, const float *restrict ffn,
                         const float *restrict ffn_resid, const uint8_t *restrict parallel,
                         const int64_t *restrict targets);

/*
 * Sparse rows (see ltt/_reference.py sparsify): R rows, row r holding the parts of target
 * t = r % T as entries j in [indptr[r], indptr[r + 1]), each with a source sources[j] in [0, t]
 * and, when heads is not NULL, a head heads[j] >= 0; the entries of a row strictly increase in
 * (heads[j], sources[j]) (in sources[j] without heads). indptr [R + 1] starts at 0, never
 * decreases and ends at nnz. Returns LTT_OK, or LTT_ERR_INDEX with *bad = j for the first entry
 * at fault, or -1 - i for the first indptr[i] at fault (indptr is checked first).
 */
ltt_status ltt_sparse_check(int64_t R, int64_t T, int64_t nnz, int64_t *bad,
                            const int64_t *restrict indptr, const int32_t *restrict sources,
                            const int16_t *restrict heads);

/*
 * ltt_renormalize_f32 on one layer's sparse head parts (rows of T targets, see ltt_sparse_check):
 * parts [P] >= 0 with heads and sources, single [E, T]. Outputs parts_out [P] (each listed part
 * after the rule: kept ones rescaled, the others 0) and single_out [E, T]. An unlisted part is
 * 0. single_out is bitwise that of ltt_renormalize_f32 on the equivalent dense heads, and so is
 * each edge to within the rounding of its per-head terms (see ltt/_reference.py).
 */
ltt_status ltt_renormalize_sparse_f32(int64_t T, int64_t P, int64_t E, double threshold,
                                      float *restrict parts_out, float *restrict single_out,
                                      const int64_t *restrict indptr,
                                      const int32_t *restrict sources,
                                      const int16_t *restrict heads, const float *restrict parts,
                                      const float *restrict single);

/*
 * ltt_prune_f32 with the attention weights as sparse rows (see ltt_sparse_check, R = L * T,
 * row l * T + t holding the edges into target (l, t)): sources [nnz], weights [nnz]; an unlisted
 * source has weight 0. Same outputs, identical to ltt_prune_f32 on the equivalent dense attn.
 */
ltt_status ltt_prune_sparse_f32(int64_t L, int64_t T, int64_t nnz, int64_t n_targets,
                                double threshold, uint8_t *restrict keep_attn_resid,
                                uint8_t *restrict keep_ffn, uint8_t *restrict keep_ffn_resid,
                                int64_t **edges_out, int64_t *restrict n_edges,
                                const int64_t *restrict indptr, const int32_t *restrict sources,
                                const float *restrict weights, const float *restrict attn_resid,
                                const float *restrict ffn, const float *restrict ffn_resid,
                                const uint8_t *restrict parallel, const int64_t *restrict targets);

#ifdef __cplusplus
}
#endif

#endif /* LTT_CORE_H */
