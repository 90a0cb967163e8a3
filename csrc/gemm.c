/* gemm.c: row-split sgemm so OpenBLAS and OpenMP do not oversubscribe the cores. */
#include <stdatomic.h>

#include "ltt_blas.h"
#include "ltt_internal.h"

void ltt__sgemm(int trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                const float *B, int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0)
        return;
#if defined(_OPENMP) && defined(LTT_BLAS_SET_THREADS)
    /* OpenBLAS's own pthread pool spins after each call and starves our OpenMP threads (the
     * usual OpenBLAS-pthreads + OpenMP oversubscription). This OpenBLAS (its own copy, not
     * NumPy's) is set single-threaded once, and the rows of C are split across OpenMP
     * threads instead. */
    static atomic_int single = 0;
    if (!atomic_exchange(&single, 1))
        LTT_BLAS_SET_THREADS(1);
    int nt = omp_get_max_threads();
    if (nt > M)
        nt = (int)M;
    if ((double)M * (double)N * (double)K < 1e6)
        nt = 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int id = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t r0 = M * id / n, r1 = M * (id + 1) / n;
        if (r1 > r0)
            LTT_SGEMM(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                      (int)(r1 - r0), (int)N, (int)K, 1.0f, A + r0 * lda, (int)lda, B, (int)ldb,
                      0.0f, C + r0 * ldc, (int)ldc);
    }
#else
    LTT_SGEMM(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N,
              (int)K, 1.0f, A, (int)lda, B, (int)ldb, 0.0f, C, (int)ldc);
#endif
}
