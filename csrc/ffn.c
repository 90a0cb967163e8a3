/* ffn.c: contributions of FFN neurons to the states after the FFN. */
#include "ltt_internal.h"

ltt_status ltt_ffn_neuron_contrib_f32(int64_t N, int64_t F, int64_t d, int64_t wd_stride_i,
                                      int64_t wd_stride_j, int64_t bias_row_stride, int norm,
                                      float *restrict neurons, float *restrict resid_out,
                                      float *restrict bias_out, double *restrict total,
                                      const float *restrict act, const float *restrict w_down,
                                      const float *restrict resid, const float *restrict whole,
                                      const float *restrict bias, ltt_norm_fix fix)
{
    return LTT_ERR_NULL;
}
