/* attn.c: contributions of attention heads and sources to the states after attention. */
#include "ltt_internal.h"

ltt_status ltt_attn_contrib_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                int64_t E, int64_t bias_row_stride, int norm,
                                float *restrict edges, float *restrict resid_out,
                                float *restrict bias_out, float *restrict extra_out,
                                double *restrict total, float *restrict heads,
                                const float *restrict resid, const float *restrict whole,
                                const float *restrict attn, const float *restrict values,
                                const float *restrict w_o, const float *restrict bias,
                                const float *restrict extra, ltt_norm_fix fix)
{
    return LTT_ERR_NULL;
}

ltt_status ltt_attn_head_map_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                 int64_t head, int norm, float *restrict out,
                                 const float *restrict whole, const float *restrict attn,
                                 const float *restrict values, const float *restrict w_o,
                                 const double *restrict total, ltt_norm_fix fix)
{
    return LTT_ERR_NULL;
}

ltt_status ltt_attn_edge_heads_f32(int64_t T, int64_t H, int64_t G, int64_t d_h, int64_t d,
                                   int64_t target, int64_t source, int norm, float *restrict out,
                                   const float *restrict whole, const float *restrict attn,
                                   const float *restrict values, const float *restrict w_o,
                                   const double *restrict total, ltt_norm_fix fix)
{
    return LTT_ERR_NULL;
}
