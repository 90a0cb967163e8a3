/* ltt_blas.h: one name for the CBLAS calls the core uses, whichever OpenBLAS it links. */
#ifndef LTT_BLAS_H
#define LTT_BLAS_H

#include <cblas.h>

#if defined(LTT_BLAS_SCIPY)
/* The scipy-openblas32 wheel prefixes every symbol with scipy_. */
#define LTT_SGEMM scipy_cblas_sgemm
#define LTT_BLAS_CONFIG() scipy_openblas_get_config()
#define LTT_BLAS_THREADS() scipy_openblas_get_num_threads()
#define LTT_BLAS_SET_THREADS(n) scipy_openblas_set_num_threads(n)
#elif defined(LTT_BLAS_SYSTEM)
#define LTT_SGEMM cblas_sgemm
#if defined(OPENBLAS_VERSION)
#define LTT_BLAS_CONFIG() openblas_get_config()
#define LTT_BLAS_THREADS() openblas_get_num_threads()
#define LTT_BLAS_SET_THREADS(n) openblas_set_num_threads(n)
#endif
#else
#error "define LTT_BLAS_SCIPY or LTT_BLAS_SYSTEM (setup.py does)"
#endif

#endif /* LTT_BLAS_H */
