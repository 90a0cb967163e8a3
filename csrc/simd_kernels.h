/* simd_kernels.h: the SIMD kernel bodies, written once over vec.h; simd.c includes this file
 * once per target (LTT_VEC = 512, 256), which defines l1_rows_avx512, l1_rows_avx2, ... */
#include "vec.h"

/*
 * A group of nr <= VEC_TILE rows against one source at a time: per VEC_W coordinates one u load
 * feeds VEC_TILE rows, 3 vector operations per row (FMA, abs, add), nothing else on the vector
 * ports. The group is padded to VEC_TILE rows by repeating the last one; only real rows are
 * stored.
 */
VEC_TARGET static void VFN(l1_row_group)(int64_t n, int nr, int64_t ns, double *restrict acc,
                                         int64_t ldacc, const float *const *w,
                                         const float *restrict u, int64_t ldu,
                                         const float *restrict a, int64_t lda,
                                         const float *restrict rs)
{
    const float *wp[VEC_TILE];
    float rsp[VEC_TILE];
    const float *ap[VEC_TILE];
    for (int r = 0; r < VEC_TILE; r++) {
        const int rr = r < nr ? r : nr - 1;
        wp[r] = w[rr];
        rsp[r] = rs[rr];
        ap[r] = a + rr * lda;
    }
    const int64_t nv = n - n % VEC_W;
    for (int64_t q = 0; q < ns; q++) {
        const float *uq = u + q * ldu;
        VF av[VEC_TILE];
        for (int r = 0; r < VEC_TILE; r++)
            av[r] = VF_SET1(ap[r][q] * rsp[r]);
        double tot[VEC_TILE] = {0.0};
        int64_t j = 0;
        while (j < nv) {
            const int64_t end = (nv - j > FLUSH * VEC_W) ? j + FLUSH * VEC_W : nv;
            VF s[VEC_TILE];
            for (int r = 0; r < VEC_TILE; r++)
                s[r] = VF_ZERO();
            for (; j < end; j += VEC_W) {
                const VF x = VF_LOAD(uq + j);
                for (int r = 0; r < VEC_TILE; r++) {
                    VF y = VF_LOAD(wp[r] + j);
                    IN_REG(y);
                    y = VF_FNMADD(av[r], x, y);
                    s[r] = VF_ADD(s[r], VF_ABS(y));
                }
            }
            VFN(hsum_tile)(s, tot);
        }
        for (int r = 0; r < nr; r++) {
            double t = tot[r];
            const double aq = (double)(ap[r][q] * rsp[r]);
            for (int64_t k = nv; k < n; k++) /* scalar tail */
                t += fabs((double)wp[r][k] - aq * (double)uq[k]);
            acc[r * ldacc + q] += t;
        }
    }
}

/*
 * The mirror of l1_row_group (which operand a load feeds several of is swapped: the row here,
 * the source there), so the two loops look alike on purpose.
 * Few rows (a single token's FFN, the last row block of a triangle): one row at a time against
 * VEC_TILE sources, so no padded rows are computed; per VEC_W coordinates one w load feeds
 * VEC_TILE sources.
 */
VEC_TARGET static void VFN(l1_src_group)(int64_t n, int nr, int64_t ns, double *restrict acc,
                                         int64_t ldacc, const float *const *w,
                                         const float *restrict u, int64_t ldu,
                                         const float *restrict a, int64_t lda,
                                         const float *restrict rs)
{
    const int64_t nv = n - n % VEC_W;
    for (int r = 0; r < nr; r++) {
        const float *wr = w[r];
        for (int64_t q0 = 0; q0 < ns; q0 += VEC_TILE) {
            const int nq = (ns - q0 < VEC_TILE) ? (int)(ns - q0) : VEC_TILE;
            const float *up[VEC_TILE];
            float af[VEC_TILE];
            VF av[VEC_TILE];
            for (int q = 0; q < VEC_TILE; q++) {
                const int64_t qq = q0 + (q < nq ? q : nq - 1);
                up[q] = u + qq * ldu;
                af[q] = a[r * lda + qq] * rs[r];
                av[q] = VF_SET1(af[q]);
            }
            double tot[VEC_TILE] = {0.0};
            int64_t j = 0;
            while (j < nv) {
                const int64_t end = (nv - j > FLUSH * VEC_W) ? j + FLUSH * VEC_W : nv;
                VF s[VEC_TILE];
                for (int q = 0; q < VEC_TILE; q++)
                    s[q] = VF_ZERO();
                for (; j < end; j += VEC_W) {
                    const VF y = VF_LOAD(wr + j);
                    for (int q = 0; q < VEC_TILE; q++) {
                        VF x = VF_LOAD(up[q] + j);
                        IN_REG(x);
                        x = VF_FNMADD(av[q], x, y);
                        s[q] = VF_ADD(s[q], VF_ABS(x));
                    }
                }
                VFN(hsum_tile)(s, tot);
            }
            for (int q = 0; q < nq; q++) {
                double t = tot[q];
                const double aq = af[q];
                for (int64_t k = nv; k < n; k++) /* scalar tail */
                    t += fabs((double)wr[k] - aq * (double)up[q][k]);
                acc[r * ldacc + q0 + q] += t;
            }
        }
    }
}

/* ltt__l1_rows: groups of VEC_TILE rows; a last group of at most VEC_TILE / 2 rows goes source
 * by source instead (padding it would mostly compute copies). */
VEC_TARGET static void VFN(l1_rows)(int64_t n, int nr, int64_t ns, double *restrict acc,
                                    int64_t ldacc, const float *const *w, const float *restrict u,
                                    int64_t ldu, const float *restrict a, int64_t lda,
                                    const float *restrict rs)
{
    for (int r0 = 0; r0 < nr; r0 += VEC_TILE) {
        const int m = nr - r0 < VEC_TILE ? nr - r0 : VEC_TILE;
        if (m <= VEC_TILE / 2)
            VFN(l1_src_group)(n, m, ns, acc + r0 * ldacc, ldacc, w + r0, u, ldu, a + r0 * lda, lda,
                              rs + r0);
        else
            VFN(l1_row_group)(n, m, ns, acc + r0 * ldacc, ldacc, w + r0, u, ldu, a + r0 * lda, lda,
                              rs + r0);
    }
}

/* ltt__l1_cols: blocks of 4 vectors of neurons; the last neurons by the scalar kernel. */
VEC_TARGET static void VFN(l1_cols)(int64_t n, int64_t nf, int64_t ld, double *restrict acc,
                                    const float *restrict w, const float *restrict m,
                                    const float *restrict c)
{
    int64_t i = 0;
    for (; i + 4 * VEC_W <= nf; i += 4 * VEC_W) {
        VF cv[4], s[4];
        double tot[4 * VEC_W] = {0.0};
        for (int k = 0; k < 4; k++)
            cv[k] = VF_LOAD(c + i + VEC_W * k);
        for (int64_t j0 = 0; j0 < n; j0 += FLUSH) {
            const int64_t end = (n - j0 > FLUSH) ? j0 + FLUSH : n;
            for (int k = 0; k < 4; k++)
                s[k] = VF_ZERO();
            for (int64_t j = j0; j < end; j++) {
                const VF y = VF_SET1(w[j]);
                const float *row = m + j * ld + i;
                for (int k = 0; k < 4; k++) {
                    const VF x = VF_LOAD(row + VEC_W * k);
                    s[k] = VF_ADD(s[k], VF_ABS(VF_FNMADD(cv[k], x, y)));
                }
            }
            float lanes[4 * VEC_W];
            for (int k = 0; k < 4; k++)
                VF_STORE(lanes + VEC_W * k, s[k]);
            for (int k = 0; k < 4 * VEC_W; k++)
                tot[k] += lanes[k];
        }
        for (int k = 0; k < 4 * VEC_W; k++)
            acc[i + k] += tot[k];
    }
    if (i < nf) /* scalar tail over the last neurons */
        l1_cols_scalar(n, nf - i, ld, acc + i, w, m + i, c + i);
}

/* ltt__raw_row: two vectors of raws per step; max(x, eps) returns eps for a NaN x, as ltt__raw
 * does. */
VEC_TARGET static double VFN(raw_row)(int64_t n, double nw, const double *restrict dist,
                                      double *restrict er, float *restrict hrow)
{
    const VD wv = VD_SET1(nw), eps = VD_SET1(LTT_EPS);
    VD z0 = VD_ZERO(), z1 = VD_ZERO();
    int64_t s = 0;
    for (; s + 2 * VD_W <= n; s += 2 * VD_W) {
        const VD r0 = VD_MAX(VD_SUB(wv, VD_LOAD(dist + s)), eps);
        const VD r1 = VD_MAX(VD_SUB(wv, VD_LOAD(dist + s + VD_W)), eps);
        VD_STORE(er + s, VD_ADD(VD_LOAD(er + s), r0));
        VD_STORE(er + s + VD_W, VD_ADD(VD_LOAD(er + s + VD_W), r1));
        z0 = VD_ADD(z0, r0);
        z1 = VD_ADD(z1, r1);
        if (hrow != NULL) {
            VD_STORE_F(hrow + s, r0);
            VD_STORE_F(hrow + s + VD_W, r1);
        }
    }
    return VFN(vd_sum)(VD_ADD(z0, z1)) +
           raw_row_scalar(n - s, nw, dist + s, er + s, hrow != NULL ? hrow + s : NULL);
}

/* dist_sum: four double accumulators, so the additions do not wait on each other. */
VEC_TARGET static double VFN(dist_sum)(int64_t n, const float *restrict w,
                                       const float *restrict p, double a, int norm)
{
    const VD av = VD_SET1(a);
    VD s[4];
    for (int k = 0; k < 4; k++)
        s[k] = VD_ZERO();
    int64_t j = 0;
    for (; j + 4 * VD_W <= n; j += 4 * VD_W)
        for (int k = 0; k < 4; k++) {
            VD e = VD_LOAD_F(w + j + VD_W * k);
            if (p != NULL)
                e = VD_FNMADD(av, VD_LOAD_F(p + j + VD_W * k), e);
            s[k] = norm == 1 ? VD_ADD(s[k], VD_ABS(e)) : VD_FMADD(e, e, s[k]);
        }
    const VD t = VD_ADD(VD_ADD(s[0], s[1]), VD_ADD(s[2], s[3]));
    return VFN(vd_sum)(t) +
           dist_sum_scalar(n - j, w + j, p != NULL ? p + j : NULL, a, norm); /* scalar tail */
}

/* along4: out[c] = sum_i v[i] m[4 i + c] for c < 4 (m [n, 4] double, row-major): VD_W / 4 rows
 * of m per vector, four accumulators; the lanes of each direction are added in a fixed order. */
VEC_TARGET static void VFN(along4)(int64_t n, const float *restrict v, const double *restrict m,
                                   double *restrict out)
{
    enum { R = VD_W / 4 }; /* rows of m per vector */
    VD s[4];
    for (int k = 0; k < 4; k++)
        s[k] = VD_ZERO();
    int64_t i = 0;
    for (; i + 4 * R <= n; i += 4 * R)
        for (int k = 0; k < 4; k++)
            s[k] = VD_FMADD(VD_SPREAD4(v + i + R * k), VD_LOAD(m + 4 * (i + R * k)), s[k]);
    double lanes[VD_W];
    VD_STORE(lanes, VD_ADD(VD_ADD(s[0], s[1]), VD_ADD(s[2], s[3])));
    double tail[4];
    along4_scalar(n - i, v + i, m + 4 * i, tail);
    for (int c = 0; c < 4; c++) {
        double x = tail[c];
        for (int r = 0; r < R; r++)
            x += lanes[4 * r + c];
        out[c] = x;
    }
}
