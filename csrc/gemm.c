/* gemm.c: the core's thread count (ltt_set_num_threads), the small-work cutoff, and an sgemm
 * cut into fixed blocks so OpenBLAS and OpenMP do not oversubscribe the cores. */
#include <stdatomic.h>
#include <stdlib.h>

#include "ltt_blas.h"
#include "ltt_internal.h"

/* Default of the small-work cutoff: below this many element operations a call runs on one
 * thread (a parallel region costs microseconds; a call this small takes about a millisecond). */
#define PAR_MIN_WORK 1e6
/* Blocks of C computed by one sgemm call each: fixed, so a value of C never depends on how many
 * threads share the blocks. */
#define SG_ROWS 256
#define SG_COLS 4096

/* Threads set by ltt_set_num_threads; 0: OpenMP's default (omp_get_max_threads()). */
static atomic_int num_threads = 0;

ltt_status ltt_set_num_threads(int n)
{
    if (n < 1)
        return LTT_ERR_SIZE;
    atomic_store_explicit(&num_threads, n, memory_order_relaxed);
    return LTT_OK;
}

int ltt_get_num_threads(void)
{
#ifdef _OPENMP
    const int n = atomic_load_explicit(&num_threads, memory_order_relaxed);
    return n > 0 ? n : omp_get_max_threads();
#else
    return 1;
#endif
}

int ltt__threads(double work)
{
#ifdef _OPENMP
    /* LTT_PAR_MIN_WORK replaces the cutoff, read once (tests set 0 to thread every call). */
    static _Atomic double min_work = -1.0;
    double m = atomic_load_explicit(&min_work, memory_order_acquire);
    if (m < 0.0) {
        const char *env = getenv("LTT_PAR_MIN_WORK");
        const double v = env != NULL ? atof(env) : -1.0;
        m = v >= 0.0 ? v : PAR_MIN_WORK;
        atomic_store_explicit(&min_work, m, memory_order_release);
    }
    if (work < m || omp_in_parallel())
        return 1;
    return ltt_get_num_threads();
#else
    (void)work;
    return 1;
#endif
}

/*
 * OpenBLAS's own pthread pool spins after each call and starves our OpenMP threads (the usual
 * OpenBLAS-pthreads + OpenMP oversubscription). This OpenBLAS (its own copy, not NumPy's) is set
 * single-threaded once, before any call, and the blocks of C are shared by OpenMP threads
 * instead.
 */
static void blas_single(void)
{
#if defined(_OPENMP) && defined(LTT_BLAS_SET_THREADS)
    static atomic_int single = 0;
    if (!atomic_load_explicit(&single, memory_order_acquire)) {
        LTT_BLAS_SET_THREADS(1);
        atomic_store_explicit(&single, 1, memory_order_release);
    }
#endif
}

int64_t ltt__sgemm_blocks(int64_t M, int64_t N)
{
    if (M <= 0 || N <= 0)
        return 0;
    return ((M + SG_ROWS - 1) / SG_ROWS) * ((N + SG_COLS - 1) / SG_COLS);
}

void ltt__sgemm_block(int64_t b, int trans_b, int64_t M, int64_t N, int64_t K, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc)
{
    const int64_t nc = (N + SG_COLS - 1) / SG_COLS;
    const int64_t r0 = (b / nc) * SG_ROWS, c0 = (b % nc) * SG_COLS;
    const int64_t m = M - r0 < SG_ROWS ? M - r0 : SG_ROWS, n = N - c0 < SG_COLS ? N - c0 : SG_COLS;
    const float *bb = trans_b ? B + c0 * ldb : B + c0;
    blas_single();
    LTT_SGEMM(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n,
              (int)K, 1.0f, A + r0 * lda, (int)lda, bb, (int)ldb, 0.0f, C + r0 * ldc + c0, (int)ldc);
}

void ltt__sgemm(int threads, int trans_b, int64_t M, int64_t N, int64_t K, const float *A,
                int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0)
        return;
    const int64_t nblk = ltt__sgemm_blocks(M, N);
    int nt = (int64_t)threads < nblk ? threads : (int)nblk;
#if !(defined(_OPENMP) && defined(LTT_BLAS_SET_THREADS))
    nt = 1; /* a BLAS with its own threads is called from this thread only */
#endif
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
    for (int64_t b = 0; b < nblk; b++)
        ltt__sgemm_block(b, trans_b, M, N, K, A, lda, B, ldb, C, ldc);
}
