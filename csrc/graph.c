/* graph.c: threshold renormalisation and backward pruning of the contribution graph. */
#include "ltt_internal.h"

ltt_status ltt_renormalize_f32(int64_t K, int64_t T, int64_t S, int64_t E, double threshold,
                               float *restrict edges, float *restrict single_out,
                               const float *restrict heads, const float *restrict single)
{
    return LTT_ERR_NULL;
}

ltt_status ltt_prune_f32(int64_t L, int64_t T, int64_t n_targets, double threshold,
                         uint8_t *restrict keep_attn_resid, uint8_t *restrict keep_ffn,
                         uint8_t *restrict keep_ffn_resid, int64_t **edges_out,
                         int64_t *restrict n_edges, const float *restrict attn,
                         const float *restrict attn_resid, const float *restrict ffn,
                         const float *restrict ffn_resid, const uint8_t *restrict parallel,
                         const int64_t *restrict targets)
{
    return LTT_ERR_NULL;
}
