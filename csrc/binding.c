/* binding.c: the ltt._core Python module; the only file that includes Python.h and NumPy. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <numpy/arrayobject.h>

#include "ltt_blas.h"
#include "ltt_core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef LTT_BLAS_NAME
#define LTT_BLAS_NAME "unknown"
#endif
#ifndef LTT_CFLAGS
#define LTT_CFLAGS "unknown"
#endif

/* ---- argument helpers (each returns 0 on success, -1 with a Python exception set) -------- */

/* repr of a double into buf (PyErr_Format has no %g). */
static const char *fmt_double(char *buf, size_t size, double x)
{
    char *r = PyOS_double_to_string(x, 'r', 0, 0, NULL);
    snprintf(buf, size, "%s", r ? r : "?");
    PyMem_Free(r);
    return buf;
}

static void fmt_shape(char *buf, size_t size, int ndim, const npy_intp *dims)
{
    size_t len = 0;
    len += (size_t)snprintf(buf + len, size - len, "(");
    for (int i = 0; i < ndim && len < size; i++)
        len += dims[i] < 0 ? (size_t)snprintf(buf + len, size - len, "%s*", i ? ", " : "")
                           : (size_t)snprintf(buf + len, size - len, "%s%lld", i ? ", " : "",
                                              (long long)dims[i]);
    if (len < size)
        snprintf(buf + len, size - len, ndim == 1 ? ",)" : ")");
}

/* Whether an array's dtype is a real floating type (the only kind the core accepts). */
static int require_float_kind(PyArrayObject *a, const char *name)
{
    const char kind = PyArray_DESCR(a)->kind;
    if (kind != 'f') {
        PyErr_Format(PyExc_TypeError,
                     "%s must be an array of floats (float16/32/64 are cast to float32), "
                     "got dtype %S",
                     name, (PyObject *)PyArray_DESCR(a));
        return -1;
    }
    return 0;
}

/*
 * Whether any of n floats (bits: float32 words, or float64 when wide) is NaN or inf: the exponent
 * field all ones, found branch-free over blocks (the loop vectorises; an inputs scan used to cost
 * a tenth of an attention call), then located by the caller's scalar loop.
 */
static int any_nonfinite(const void *data, npy_intp n, int wide)
{
    const npy_intp block = 4096;
    for (npy_intp i0 = 0; i0 < n; i0 += block) {
        const npy_intp m = n - i0 < block ? n - i0 : block;
        if (wide) {
            const uint64_t *b = (const uint64_t *)data + i0;
            uint64_t bad = 0;
            for (npy_intp i = 0; i < m; i++) /* bit 63 set iff the exponent is all ones */
                bad |= (b[i] & 0x7ff0000000000000u) + 0x0010000000000000u;
            if (bad >> 63)
                return 1;
        } else {
            const uint32_t *b = (const uint32_t *)data + i0;
            uint32_t bad = 0;
            for (npy_intp i = 0; i < m; i++) /* bit 31 set iff the exponent is all ones */
                bad |= (b[i] & 0x7f800000u) + 0x00800000u;
            if (bad >> 31)
                return 1;
        }
    }
    return 0;
}

static int require_finite(PyArrayObject *a, const char *name)
{
    const npy_intp n = PyArray_SIZE(a);
    const int wide = PyArray_TYPE(a) == NPY_FLOAT64;
    if (!any_nonfinite(PyArray_DATA(a), n, wide))
        return 0;
    if (wide) {
        const double *x = (const double *)PyArray_DATA(a);
        for (npy_intp i = 0; i < n; i++)
            if (!isfinite(x[i])) {
                char v[64];
                PyErr_Format(PyExc_ValueError, "%s contains NaN or inf (flat index %zd: %s)", name,
                             (Py_ssize_t)i, fmt_double(v, sizeof v, x[i]));
                return -1;
            }
        return 0;
    }
    const float *x = (const float *)PyArray_DATA(a);
    for (npy_intp i = 0; i < n; i++)
        if (!isfinite(x[i])) {
            char v[64];
            PyErr_Format(PyExc_ValueError,
                         "%s contains NaN or inf after the cast to float32 (flat index %zd: %s)",
                         name, (Py_ssize_t)i, fmt_double(v, sizeof v, (double)x[i]));
            return -1;
        }
    return 0;
}

/* Shares are never negative: a negative part (float32 array) is a ValueError naming it (issue
 * 11: renormalize and its twin disagreed on a state whose parts were all negative). */
static int require_nonnegative(PyArrayObject *a, const char *name)
{
    const npy_intp n = PyArray_SIZE(a);
    const float *x = (const float *)PyArray_DATA(a);
    for (npy_intp i = 0; i < n; i++)
        if (x[i] < 0.0f) {
            char v[64];
            PyErr_Format(PyExc_ValueError,
                         "%s holds a negative share (flat index %zd: %s); shares are >= 0", name,
                         (Py_ssize_t)i, fmt_double(v, sizeof v, (double)x[i]));
            return -1;
        }
    return 0;
}

/*
 * A failed PyArray_FROM_O of argument `name`. Issue 11: only NumPy's own "cannot convert" errors
 * (TypeError, ValueError) become the TypeError naming the argument, chained to the original;
 * anything else raised while converting (an __array__ raising MemoryError or KeyboardInterrupt)
 * propagates unchanged. Returns -1.
 */
static int conversion_failed(PyObject *obj, const char *name)
{
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    PyErr_Format(PyExc_TypeError, "%s must be an array of floats, got %.100s", name,
                 Py_TYPE(obj)->tp_name);
    if (value != NULL) {
        PyObject *t2, *v2, *tb2;
        PyErr_Fetch(&t2, &v2, &tb2);
        PyErr_NormalizeException(&t2, &v2, &tb2);
        Py_INCREF(value);
        PyException_SetContext(v2, value); /* steals one reference */
        PyException_SetCause(v2, value);   /* steals the other */
        PyErr_Restore(t2, v2, tb2);
    }
    return -1;
}

/*
 * obj -> aligned float32 (or float64 when dtype is NPY_FLOAT64) array: C-contiguous, or in any
 * layout when `strided`; finite unless `unchecked`. None gives *out = NULL when optional, a
 * TypeError otherwise.
 */
static int to_float_array(PyObject *obj, const char *name, int optional, int dtype, int unchecked,
                          int strided, PyArrayObject **out)
{
    *out = NULL;
    if (obj == NULL || obj == Py_None) {
        if (optional)
            return 0;
        PyErr_Format(PyExc_TypeError, "%s is required, got None", name);
        return -1;
    }
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj);
    if (raw == NULL)
        return conversion_failed(obj, name);
    if (require_float_kind(raw, name) < 0) {
        Py_DECREF(raw);
        return -1;
    }
    const int req = (strided ? NPY_ARRAY_ALIGNED : NPY_ARRAY_IN_ARRAY) | NPY_ARRAY_FORCECAST;
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)raw, dtype, req);
    Py_DECREF(raw);
    if (a == NULL)
        return -1;
    if (!unchecked && require_finite(a, name) < 0) {
        Py_DECREF(a);
        return -1;
    }
    *out = a;
    return 0;
}

/* obj -> C-contiguous aligned array of exactly the integer dtype `type` (no cast: TypeError). */
static int to_index_array(PyObject *obj, const char *name, int type, PyArrayObject **out)
{
    *out = NULL;
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s is required, got None", name);
        return -1;
    }
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj);
    if (raw == NULL)
        return -1;
    if (PyArray_TYPE(raw) != type) {
        PyArray_Descr *want = PyArray_DescrFromType(type);
        PyErr_Format(PyExc_TypeError, "%s must be an array of %S, got dtype %S", name,
                     (PyObject *)want, (PyObject *)PyArray_DESCR(raw));
        Py_XDECREF(want);
        Py_DECREF(raw);
        return -1;
    }
    *out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)raw, type, NPY_ARRAY_IN_ARRAY);
    Py_DECREF(raw);
    return *out == NULL ? -1 : 0;
}

/* ---- argument and output tables ------------------------------------------------------------ */

/* How one array argument is converted (flags of arg_spec). */
enum {
    ARG_OPTIONAL = 1,  /* None gives NULL */
    ARG_UNCHECKED = 2, /* finiteness is checked later (by the caller or the kernel) */
    ARG_STRIDED = 4    /* any layout (a transposed view is kept without a copy) */
};

/* One array argument: its name, its dtype (float32/64: any float dtype is cast; an integer
 * type: exactly that dtype) and flags. */
typedef struct {
    const char *name;
    int type;
    int flags;
} arg_spec;

/*
 * The n array arguments objs[i] -> arrs[i] by spec[i], in order; the first failure raises.
 * The caller releases arrs with release() whatever the result.
 */
static int convert_args(int n, const arg_spec *spec, PyObject *const *objs, PyArrayObject **arrs)
{
    for (int i = 0; i < n; i++)
        arrs[i] = NULL;
    for (int i = 0; i < n; i++) {
        const arg_spec *a = &spec[i];
        const int r = a->type == NPY_FLOAT32 || a->type == NPY_FLOAT64
                          ? to_float_array(objs[i], a->name, a->flags & ARG_OPTIONAL, a->type,
                                           a->flags & ARG_UNCHECKED, a->flags & ARG_STRIDED,
                                           &arrs[i])
                          : to_index_array(objs[i], a->name, a->type, &arrs[i]);
        if (r < 0)
            return -1;
    }
    return 0;
}

static void release(int n, PyArrayObject **arrs)
{
    for (int i = 0; i < n; i++)
        Py_CLEAR(arrs[i]);
}

/* One output array: its key in the returned dict, dtype and shape (zero-filled). */
typedef struct {
    const char *key;
    int type;
    int ndim;
    npy_intp dims[3];
} out_spec;

/* Allocates the n outputs of spec into outs (-1 with MemoryError on failure). */
static int alloc_outputs(int n, const out_spec *spec, PyArrayObject **outs)
{
    for (int i = 0; i < n; i++)
        if ((outs[i] = (PyArrayObject *)PyArray_ZEROS(spec[i].ndim, (npy_intp *)spec[i].dims,
                                                      spec[i].type, 0)) == NULL)
            return -1;
    return 0;
}

/* The dict {spec[i].key: outs[i]}, taking the outputs (outs[i] cleared); NULL on failure. */
static PyObject *outputs_dict(int n, const out_spec *spec, PyArrayObject **outs)
{
    PyObject *d = PyDict_New();
    for (int i = 0; i < n; i++) {
        if (d != NULL && PyDict_SetItemString(d, spec[i].key, (PyObject *)outs[i]) < 0) {
            Py_DECREF(d);
            d = NULL;
        }
    }
    release(n, outs);
    return d;
}

/* The end of every entry point: releases the n array arguments and the m outputs, returns ret. */
static PyObject *cleanup(PyObject *ret, int n, PyArrayObject **args, int m, PyArrayObject **outs)
{
    release(n, args);
    release(m, outs);
    return ret;
}

/* Check a's shape against want (a -1 entry matches any size); sym names the dimensions. */
static int check_shape(PyArrayObject *a, const char *name, const char *sym, int ndim,
                       const npy_intp *want)
{
    int ok = PyArray_NDIM(a) == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (want[i] >= 0 && PyArray_DIM(a, i) != want[i])
            ok = 0;
    if (!ok) {
        char got[160], exp[160];
        fmt_shape(got, sizeof got, PyArray_NDIM(a), PyArray_DIMS(a));
        fmt_shape(exp, sizeof exp, ndim, want);
        PyErr_Format(PyExc_ValueError, "%s must have shape %s = %s, got %s", name, sym, exp, got);
        return -1;
    }
    return 0;
}

static int check_nonempty(PyArrayObject *a, const char *name)
{
    if (PyArray_SIZE(a) == 0) {
        char got[160];
        fmt_shape(got, sizeof got, PyArray_NDIM(a), PyArray_DIMS(a));
        PyErr_Format(PyExc_ValueError, "%s must not be empty, got shape %s", name, got);
        return -1;
    }
    return 0;
}

static int check_norm(int norm)
{
    if (norm != 1 && norm != 2) {
        PyErr_Format(PyExc_ValueError, "norm must be 1 or 2, got %d", norm);
        return -1;
    }
    return 0;
}

static int check_threshold(double threshold)
{
    if (!(threshold >= 0.0 && threshold < 1.0)) {
        char v[64];
        PyErr_Format(PyExc_ValueError, "threshold must be in [0, 1), got %s",
                     fmt_double(v, sizeof v, threshold));
        return -1;
    }
    return 0;
}

/* Python-style index (negative counts from the end) into [0, n). */
static int fix_index(long long *idx, long long n, const char *name)
{
    long long i = *idx;
    if (i < -n || i >= n) {
        PyErr_Format(PyExc_ValueError, "%s must be in [-%lld, %lld), got %lld", name, n, n, i);
        return -1;
    }
    *idx = i < 0 ? i + n : i;
    return 0;
}

static int check_status(ltt_status st, const char *fn)
{
    if (st == LTT_OK)
        return 0;
    if (st == LTT_ERR_NOMEM)
        PyErr_Format(PyExc_MemoryError, "%s: %s", fn, ltt_status_str(st));
    else
        PyErr_Format(PyExc_ValueError, "%s: %s", fn, ltt_status_str(st));
    return -1;
}

static const float *fdata(PyArrayObject *a)
{
    return a == NULL ? NULL : (const float *)PyArray_DATA(a);
}

/* Shared validation of the head-vector inputs: attn [H,T,T], values [T,G,d_h], w_o [H,d_h,d]. */
typedef struct {
    npy_intp T, H, G, dh, d;
} attn_dims;

static int check_attn_inputs(attn_dims *D, PyArrayObject *whole, PyArrayObject *attn,
                             PyArrayObject *values, PyArrayObject *w_o, PyArrayObject *row_scale,
                             PyArrayObject *col_scale)
{
    if (check_nonempty(whole, "whole") < 0)
        return -1;
    npy_intp any2[2] = {-1, -1};
    if (check_shape(whole, "whole", "(T, d)", 2, any2) < 0)
        return -1;
    D->T = PyArray_DIM(whole, 0);
    D->d = PyArray_DIM(whole, 1);
    if (PyArray_NDIM(attn) != 3 || PyArray_DIM(attn, 0) == 0) {
        npy_intp w[3] = {-1, D->T, D->T};
        if (check_shape(attn, "attn", "(H, T, T)", 3, w) < 0)
            return -1;
        return check_nonempty(attn, "attn");
    }
    D->H = PyArray_DIM(attn, 0);
    npy_intp wa[3] = {D->H, D->T, D->T};
    if (check_shape(attn, "attn", "(H, T, T)", 3, wa) < 0)
        return -1;
    npy_intp wv[3] = {D->T, -1, -1};
    if (check_shape(values, "values", "(T, G, d_h)", 3, wv) < 0 ||
        check_nonempty(values, "values") < 0)
        return -1;
    D->G = PyArray_DIM(values, 1);
    D->dh = PyArray_DIM(values, 2);
    if (D->H % D->G != 0) {
        PyErr_Format(PyExc_ValueError,
                     "the number of heads H=%zd (attn.shape[0]) must be a multiple of the "
                     "number of kv groups G=%zd (values.shape[1])",
                     (Py_ssize_t)D->H, (Py_ssize_t)D->G);
        return -1;
    }
    npy_intp wo[3] = {D->H, D->dh, D->d};
    if (check_shape(w_o, "w_o", "(H, d_h, d)", 3, wo) < 0)
        return -1;
    npy_intp wr[1] = {D->T}, wc[1] = {D->d};
    if (row_scale != NULL && check_shape(row_scale, "row_scale", "(T,)", 1, wr) < 0)
        return -1;
    if (col_scale != NULL && check_shape(col_scale, "col_scale", "(d,)", 1, wc) < 0)
        return -1;
    return 0;
}

/*
 * w_o [H, d_h, d] as the kernels read it in place: C order (element strides (d, 1)), or the .T
 * of the output projection's own weight [d, >= H d_h] viewed as [H, d_h, d] (strides (1, ld):
 * every head of the weight, or a run of them); any other layout is replaced by a C-order copy.
 */
static int wo_strides(PyArrayObject **w_o, const attn_dims *D, int64_t *sr, int64_t *sj)
{
    const npy_intp fs = sizeof(float), *st = PyArray_STRIDES(*w_o);
    if (PyArray_IS_C_CONTIGUOUS(*w_o)) {
        *sr = D->d;
        *sj = 1;
    } else if (st[0] == fs * D->dh && st[1] == fs && st[2] >= fs * D->H * D->dh && st[2] % fs == 0) {
        *sr = 1;
        *sj = st[2] / fs;
    } else {
        PyArrayObject *c = (PyArrayObject *)PyArray_NewCopy(*w_o, NPY_CORDER);
        if (c == NULL)
            return -1;
        Py_SETREF(*w_o, c);
        *sr = D->d;
        *sj = 1;
    }
    return 0;
}

/* require_finite for w_o in either layout of wo_strides; the flat index is that of [H, d_h, d]. */
static int wo_require_finite(PyArrayObject *w_o, const attn_dims *D, int64_t sj)
{
    if (sj == 1)
        return require_finite(w_o, "w_o");
    const float *x = fdata(w_o);
    const npy_intp k = D->H * D->dh;
    for (npy_intp j = 0; j < D->d; j++) {
        const float *row = x + j * sj; /* coordinate j of every head's rows */
        if (!any_nonfinite(row, k, 0))
            continue;
        for (npy_intp i = 0; i < k; i++)
            if (!isfinite(row[i])) {
                char v[64];
                PyErr_Format(PyExc_ValueError,
                             "w_o contains NaN or inf after the cast to float32 (flat index %zd: %s)",
                             (Py_ssize_t)(i * D->d + j), fmt_double(v, sizeof v, (double)row[i]));
                return -1;
            }
    }
    return 0;
}

/* bias: [d] (row stride 0) or [n, d]. */
static int check_bias(PyArrayObject *bias, npy_intp n, npy_intp d, const char *nsym,
                      int64_t *row_stride)
{
    *row_stride = 0;
    if (bias == NULL)
        return 0;
    if (PyArray_NDIM(bias) == 1) {
        npy_intp w[1] = {d};
        return check_shape(bias, "bias", "(d,)", 1, w);
    }
    npy_intp w[2] = {n, d};
    char sym[32];
    snprintf(sym, sizeof sym, "(%s, d)", nsym);
    if (check_shape(bias, "bias", sym, 2, w) < 0)
        return -1;
    *row_stride = d;
    return 0;
}

static int check_total(PyArrayObject *total, npy_intp T)
{
    npy_intp w[1] = {T};
    if (check_shape(total, "total", "(T,)", 1, w) < 0)
        return -1;
    const double *z = (const double *)PyArray_DATA(total);
    for (npy_intp i = 0; i < T; i++)
        if (!(z[i] > 0.0)) {
            char v[64];
            PyErr_Format(PyExc_ValueError, "total must be positive, got %s at index %zd",
                         fmt_double(v, sizeof v, z[i]), (Py_ssize_t)i);
            return -1;
        }
    return 0;
}

/* ---- prune's flags, targets and outputs (dense and sparse) ---------------------------------- */

/* parallel [L] flags (bool or integer dtype) and targets (integer positions, negative ones from
 * the end, each checked against [-T, T)) as prune and prune_sparse take them. */
static int prune_flags_targets(PyObject *par_o, PyObject *tg_o, npy_intp L, npy_intp T,
                               PyArrayObject **par, PyArrayObject **tg)
{
    *par = *tg = NULL;
    PyArrayObject *tmp = (PyArrayObject *)PyArray_FROM_O(par_o);
    if (tmp == NULL)
        return -1;
    const char pk = PyArray_DESCR(tmp)->kind;
    if (pk != 'b' && pk != 'i' && pk != 'u') {
        PyErr_Format(PyExc_TypeError, "parallel must be an array of bools, got dtype %S",
                     (PyObject *)PyArray_DESCR(tmp));
        Py_DECREF(tmp);
        return -1;
    }
    *par = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)tmp, NPY_BOOL,
                                             NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(tmp);
    npy_intp wl[1] = {L};
    if (*par == NULL || check_shape(*par, "parallel", "(L,)", 1, wl) < 0)
        return -1;
    if ((tmp = (PyArrayObject *)PyArray_FROM_O(tg_o)) == NULL)
        return -1;
    const char tk = PyArray_DESCR(tmp)->kind;
    if ((tk != 'i' && tk != 'u') || PyArray_NDIM(tmp) > 1) {
        if (tk != 'i' && tk != 'u')
            PyErr_Format(PyExc_TypeError, "targets must be integer token positions, got dtype %S",
                         (PyObject *)PyArray_DESCR(tmp));
        else
            PyErr_Format(PyExc_ValueError, "targets must be a 1-d list of positions, got %d dims",
                         PyArray_NDIM(tmp));
        Py_DECREF(tmp);
        return -1;
    }
    if (tk == 'u' && PyArray_ITEMSIZE(tmp) >= 8) {
        /* Issue 11: the cast to int64 read 2**64-1 as -1 (the last token). */
        PyArrayObject *u =
            (PyArrayObject *)PyArray_FROM_OTF((PyObject *)tmp, NPY_UINT64, NPY_ARRAY_IN_ARRAY);
        if (u == NULL) {
            Py_DECREF(tmp);
            return -1;
        }
        const uint64_t *uv = (const uint64_t *)PyArray_DATA(u);
        for (npy_intp i = 0; i < PyArray_SIZE(u); i++)
            if (uv[i] > (uint64_t)INT64_MAX) {
                PyErr_Format(PyExc_ValueError,
                             "targets holds %llu, which does not fit in int64 (token positions "
                             "are in [-T, T))",
                             (unsigned long long)uv[i]);
                Py_DECREF(u);
                Py_DECREF(tmp);
                return -1;
            }
        Py_DECREF(u);
    }
    *tg = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)tmp, NPY_INT64,
                                            NPY_ARRAY_IN_ARRAY | NPY_ARRAY_ENSURECOPY |
                                                NPY_ARRAY_FORCECAST);
    Py_DECREF(tmp);
    if (*tg == NULL)
        return -1;
    int64_t *tv = (int64_t *)PyArray_DATA(*tg);
    for (npy_intp i = 0; i < PyArray_SIZE(*tg); i++) {
        long long v = tv[i];
        if (fix_index(&v, T, "targets") < 0)
            return -1;
        tv[i] = v;
    }
    return 0;
}

/* prune's outputs: attn_edges [n_edges, 3] (made after the call), the keep masks [L, T]. */
static void prune_outputs_spec(out_spec *spec, npy_intp L, npy_intp T)
{
    const out_spec s[4] = {{"attn_edges", NPY_INT64, 2, {0, 3}},
                           {"attn_resid", NPY_BOOL, 2, {L, T}},
                           {"ffn", NPY_BOOL, 2, {L, T}},
                           {"ffn_resid", NPY_BOOL, 2, {L, T}}};
    memcpy(spec, s, sizeof s);
}

/* What prune and prune_sparse check alike once L and T are known: ffn and ffn_resid (L, T), the
 * parallel flags and targets; then the keep masks allocated (outs[1..3], spec in os). */
static int prune_prepare(PyArrayObject *ffn, PyArrayObject *ffn_resid, PyObject *par_o,
                         PyObject *tg_o, npy_intp L, npy_intp T, PyArrayObject **par,
                         PyArrayObject **tg, out_spec *os, PyArrayObject **outs)
{
    npy_intp wlt[2] = {L, T};
    if (check_shape(ffn, "ffn", "(L, T)", 2, wlt) < 0 ||
        check_shape(ffn_resid, "ffn_resid", "(L, T)", 2, wlt) < 0 ||
        prune_flags_targets(par_o, tg_o, L, T, par, tg) < 0)
        return -1;
    prune_outputs_spec(os, L, T);
    return alloc_outputs(3, os + 1, outs + 1);
}

/* The dict of prune's results: the kernel's edge rows (l, t, s) copied into attn_edges. */
static PyObject *prune_result(out_spec *spec, PyArrayObject **outs, const int64_t *edges,
                              int64_t n_edges)
{
    spec[0].dims[0] = n_edges;
    if (alloc_outputs(1, spec, outs) < 0)
        return NULL;
    if (n_edges > 0)
        memcpy(PyArray_DATA(outs[0]), edges, (size_t)n_edges * 3 * sizeof(int64_t));
    return outputs_dict(4, spec, outs);
}

/* Shapes of sparse rows: indptr [R + 1], sources [nnz], heads [nnz] (when not NULL). */
static int check_sparse_shapes(PyArrayObject *indptr, PyArrayObject *sources, PyArrayObject *heads,
                               npy_intp R, int layered)
{
    npy_intp wi[1] = {R + 1}, wn[1] = {-1};
    if (check_shape(indptr, "indptr", layered ? "(L * T + 1,)" : "(T + 1,)", 1, wi) < 0 ||
        check_shape(sources, "sources", "(nnz,)", 1, wn) < 0)
        return -1;
    wn[0] = PyArray_DIM(sources, 0);
    if (heads != NULL && check_shape(heads, "heads", "(nnz,) = sources.shape", 1, wn) < 0)
        return -1;
    return 0;
}

/*
 * The exception for a kernel status st on sparse rows (the row r holds the parts of target
 * r % T, of layer r / T when layered): LTT_ERR_INDEX is a fault in the rows (the kernel checked
 * everything else first), found again with ltt_sparse_check and named.
 */
static int sparse_rows_status(ltt_status st, const char *fn, PyArrayObject *indptr,
                              PyArrayObject *sources, PyArrayObject *heads, npy_intp R, npy_intp T,
                              int layered)
{
    if (st != LTT_ERR_INDEX)
        return check_status(st, fn);
    const npy_intp nnz = PyArray_DIM(sources, 0);
    const int64_t *ip = (const int64_t *)PyArray_DATA(indptr);
    const int32_t *src = (const int32_t *)PyArray_DATA(sources);
    const int16_t *hd = heads != NULL ? (const int16_t *)PyArray_DATA(heads) : NULL;
    int64_t bad = 0;
    if (ltt_sparse_check(R, T, nnz, &bad, ip, src, hd) != LTT_ERR_INDEX)
        return check_status(st, fn);
    if (bad < 0) {
        const npy_intp i = (npy_intp)(-1 - bad);
        PyErr_Format(PyExc_ValueError,
                     "indptr must start at 0, never decrease and end at len(sources) = %zd; got "
                     "indptr[%zd] = %lld (previous %lld)",
                     (Py_ssize_t)nnz, (Py_ssize_t)i, (long long)ip[i],
                     i > 0 ? (long long)ip[i - 1] : 0LL);
        return -1;
    }
    npy_intp lo = 0, hi = R; /* the row r with indptr[r] <= bad < indptr[r + 1] */
    while (hi - lo > 1) {
        const npy_intp mid = lo + (hi - lo) / 2;
        if (ip[mid] <= bad)
            lo = mid;
        else
            hi = mid;
    }
    char row[96];
    if (layered)
        snprintf(row, sizeof row, "the row of layer %lld, target t = %lld", (long long)(lo / T),
                 (long long)(lo % T));
    else
        snprintf(row, sizeof row, "the row of target t = %lld", (long long)lo);
    const long long s = src[bad], t = lo % T;
    if (s < 0 || s > t)
        PyErr_Format(PyExc_ValueError, "sources[%lld] = %lld in %s is not in [0, t] = [0, %lld]",
                     (long long)bad, s, row, t);
    else if (hd != NULL && hd[bad] < 0)
        PyErr_Format(PyExc_ValueError, "heads[%lld] = %d in %s is negative", (long long)bad,
                     (int)hd[bad], row);
    else
        PyErr_Format(PyExc_ValueError,
                     "the entries of a row must strictly increase in %s; entry %lld in %s "
                     "does not",
                     hd != NULL ? "(heads, sources)" : "sources", (long long)bad, row);
    return -1;
}

/* ---- entry points -------------------------------------------------------------------------- */

/*
 * Every entry point runs the same fixed sequence (STYLE.md 5): parse the keywords, convert the
 * arrays by its argument table, check shapes and scalars, allocate the outputs by its output
 * table, call the core without the GIL, map the status, clean up in one place. Their heads and
 * tails look alike on purpose; what differs (the shape rules, the call) is written out.
 */

/* The head-vector inputs every attention entry point reads, in this order in its table. */
#define HEAD_INPUTS                                                                                \
    {"whole", NPY_FLOAT32, 0}, {"attn", NPY_FLOAT32, 0}, {"values", NPY_FLOAT32, 0},               \
        {"w_o", NPY_FLOAT32, ARG_STRIDED | ARG_UNCHECKED} /* wo_strides, then checked */
#define NORM_SCALES {"row_scale", NPY_FLOAT32, ARG_OPTIONAL}, {"col_scale", NPY_FLOAT32, ARG_OPTIONAL}

PyDoc_STRVAR(contributions_doc,
             "contributions(parts, whole, norm=1)\n--\n\n"
             "Proximity shares of parts [K, ..., d] in whole [..., d] -> float32 [K, ...].\n"
             "See ltt._reference.contributions.");

static PyObject *py_contributions(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"parts", "whole", "norm", NULL};
    static const arg_spec spec[] = {{"parts", NPY_FLOAT32, 0}, {"whole", NPY_FLOAT32, 0}};
    enum { PARTS, WHOLE, N_ARGS };
    PyObject *o[N_ARGS] = {NULL}, *ret = NULL;
    PyArrayObject *a[N_ARGS], *out[1] = {NULL};
    int norm = 1;
    ltt_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|i:contributions", kwlist, &o[PARTS],
                                     &o[WHOLE], &norm))
        return NULL;
    if (convert_args(N_ARGS, spec, o, a) < 0 || check_norm(norm) < 0)
        goto done;
    PyArrayObject *parts = a[PARTS], *whole = a[WHOLE];
    const int wd = PyArray_NDIM(whole);
    int ok = wd >= 1 && PyArray_NDIM(parts) == wd + 1;
    for (int i = 0; ok && i < wd; i++)
        ok = PyArray_DIM(parts, i + 1) == PyArray_DIM(whole, i);
    if (!ok) {
        char gp[160], gw[160];
        fmt_shape(gp, sizeof gp, PyArray_NDIM(parts), PyArray_DIMS(parts));
        fmt_shape(gw, sizeof gw, wd, PyArray_DIMS(whole));
        PyErr_Format(PyExc_ValueError,
                     "parts must have shape (K, *whole.shape) with whole of shape (..., d); "
                     "got parts %s and whole %s",
                     gp, gw);
        goto done;
    }
    if (check_nonempty(parts, "parts") < 0)
        goto done;
    const int64_t K = PyArray_DIM(parts, 0), d = PyArray_DIM(whole, wd - 1);
    const int64_t M = PyArray_SIZE(whole) / d;
    /* the shares have the shape of parts less its last axis (any number of axes) */
    if ((out[0] = (PyArrayObject *)PyArray_ZEROS(wd, PyArray_DIMS(parts), NPY_FLOAT32, 0)) == NULL)
        goto done;
    Py_BEGIN_ALLOW_THREADS;
    st = ltt_contributions_f32(K, M, d, norm, (float *)PyArray_DATA(out[0]), fdata(parts),
                               fdata(whole));
    Py_END_ALLOW_THREADS;
    if (check_status(st, "contributions") < 0)
        goto done;
    ret = (PyObject *)out[0];
    out[0] = NULL;
done:
    return cleanup(ret, N_ARGS, a, 1, out);
}

PyDoc_STRVAR(attn_contrib_doc,
             "attn_contrib(resid, whole, attn, values, w_o, bias=None, extra=None, "
             "row_scale=None, col_scale=None, center=False, norm=1, keep_heads=False)\n--\n\n"
             "Contributions of one attention layer. See ltt._reference.attn_contrib.");

static PyObject *py_attn_contrib(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"resid", "whole",      "attn",      "values",    "w_o",
                             "bias",  "extra",      "row_scale", "col_scale", "center",
                             "norm",  "keep_heads", NULL};
    /* w_o [H, d_h, d] (every head's weights, the largest input) is not scanned up front: a NaN
     * or inf in it makes head vectors non-finite, which the kernel reports (LTT_ERR_OVERFLOW);
     * only then is w_o scanned, for the error that names it */
    static const arg_spec spec[] = {{"resid", NPY_FLOAT32, 0},
                                    {"whole", NPY_FLOAT32, 0},
                                    {"attn", NPY_FLOAT32, 0},
                                    {"values", NPY_FLOAT32, 0},
                                    {"w_o", NPY_FLOAT32, ARG_STRIDED | ARG_UNCHECKED},
                                    {"bias", NPY_FLOAT32, ARG_OPTIONAL},
                                    {"extra", NPY_FLOAT32, ARG_OPTIONAL},
                                    NORM_SCALES};
    enum { RESID, WHOLE, ATTN, VALUES, W_O, BIAS, EXTRA, ROW_SCALE, COL_SCALE, N_ARGS };
    PyObject *o[N_ARGS] = {NULL}, *ret = NULL;
    PyArrayObject *a[N_ARGS], *outs[6] = {NULL};
    int center = 0, norm = 1, keep_heads = 0;
    ltt_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|OOOOpip:attn_contrib", kwlist, &o[RESID],
                                     &o[WHOLE], &o[ATTN], &o[VALUES], &o[W_O], &o[BIAS], &o[EXTRA],
                                     &o[ROW_SCALE], &o[COL_SCALE], &center, &norm, &keep_heads))
        return NULL;
    if (convert_args(N_ARGS, spec, o, a) < 0 || check_norm(norm) < 0)
        goto done;
    attn_dims D;
    int64_t wsr, wsj;
    if (check_attn_inputs(&D, a[WHOLE], a[ATTN], a[VALUES], a[W_O], a[ROW_SCALE], a[COL_SCALE]) < 0 ||
        wo_strides(&a[W_O], &D, &wsr, &wsj) < 0)
        goto done;
    npy_intp wr[2] = {D.T, D.d};
    if (check_shape(a[RESID], "resid", "(T, d)", 2, wr) < 0)
        goto done;
    int64_t bias_stride = 0, E = 0;
    if (check_bias(a[BIAS], D.T, D.d, "T", &bias_stride) < 0)
        goto done;
    if (a[EXTRA] != NULL) {
        npy_intp we[3] = {-1, D.T, D.d};
        if (check_shape(a[EXTRA], "extra", "(E, T, d)", 3, we) < 0 ||
            check_nonempty(a[EXTRA], "extra") < 0)
            goto done;
        E = PyArray_DIM(a[EXTRA], 0);
    }
    const out_spec os[6] = {{"edges", NPY_FLOAT32, 2, {D.T, D.T}},
                            {"resid", NPY_FLOAT32, 1, {D.T}},
                            {"bias", NPY_FLOAT32, 1, {D.T}},
                            {"extra", NPY_FLOAT32, 2, {E, D.T}},
                            {"total", NPY_FLOAT64, 1, {D.T}},
                            {"heads", NPY_FLOAT32, 3, {D.H, D.T, D.T}}};
    const int n_out = keep_heads ? 6 : 5;
    if (alloc_outputs(n_out, os, outs) < 0)
        goto done;
    ltt_norm_fix fix = {fdata(a[ROW_SCALE]), fdata(a[COL_SCALE]), center};
    Py_BEGIN_ALLOW_THREADS;
    st = ltt_attn_contrib_f32(
        D.T, D.H, D.G, D.dh, D.d, wsr, wsj, E, bias_stride, norm, (float *)PyArray_DATA(outs[0]),
        (float *)PyArray_DATA(outs[1]), (float *)PyArray_DATA(outs[2]),
        (float *)PyArray_DATA(outs[3]), (double *)PyArray_DATA(outs[4]),
        keep_heads ? (float *)PyArray_DATA(outs[5]) : NULL, fdata(a[RESID]), fdata(a[WHOLE]),
        fdata(a[ATTN]), fdata(a[VALUES]), fdata(a[W_O]), fdata(a[BIAS]), fdata(a[EXTRA]), fix);
    Py_END_ALLOW_THREADS;
    if (st == LTT_ERR_OVERFLOW && wo_require_finite(a[W_O], &D, wsj) < 0)
        goto done;
    ret = check_status(st, "attn_contrib") < 0 ? NULL : outputs_dict(n_out, os, outs);
done:
    return cleanup(ret, N_ARGS, a, 6, outs);
}

PyDoc_STRVAR(attn_head_map_doc,
             "attn_head_map(head, whole, attn, values, w_o, total, row_scale=None, "
             "col_scale=None, center=False, norm=1)\n--\n\n"
             "One head's share map [T, T]. See ltt._reference.attn_head_map.");

PyDoc_STRVAR(attn_edge_heads_doc,
             "attn_edge_heads(target, source, whole, attn, values, w_o, total, row_scale=None, "
             "col_scale=None, center=False, norm=1)\n--\n\n"
             "Every head's share [H] of one edge. See ltt._reference.attn_edge_heads.");

/* attn_head_map and attn_edge_heads share everything after their index arguments. */
static PyObject *head_run(int edge, long long i0, long long i1, PyObject **o, int center, int norm)
{
    static const arg_spec spec[] = {HEAD_INPUTS, {"total", NPY_FLOAT64, 0}, NORM_SCALES};
    enum { WHOLE, ATTN, VALUES, W_O, TOTAL, ROW_SCALE, COL_SCALE, N_ARGS };
    PyArrayObject *a[N_ARGS], *out[1] = {NULL};
    PyObject *ret = NULL;
    ltt_status st;
    const char *fn = edge ? "attn_edge_heads" : "attn_head_map";
    if (convert_args(N_ARGS, spec, o, a) < 0 || check_norm(norm) < 0)
        goto done;
    attn_dims D;
    int64_t wsr, wsj;
    if (check_attn_inputs(&D, a[WHOLE], a[ATTN], a[VALUES], a[W_O], a[ROW_SCALE], a[COL_SCALE]) <
            0 ||
        wo_strides(&a[W_O], &D, &wsr, &wsj) < 0 || wo_require_finite(a[W_O], &D, wsj) < 0 ||
        check_total(a[TOTAL], D.T) < 0)
        goto done;
    ltt_norm_fix fix = {fdata(a[ROW_SCALE]), fdata(a[COL_SCALE]), center};
    const double *total = (const double *)PyArray_DATA(a[TOTAL]);
    if (edge) {
        if (fix_index(&i0, D.T, "target") < 0 || fix_index(&i1, D.T, "source") < 0)
            goto done;
        if (i1 > i0) {
            PyErr_Format(PyExc_ValueError,
                         "source must be <= target (future positions are masked), got "
                         "target=%lld, source=%lld",
                         i0, i1);
            goto done;
        }
        const out_spec os = {"", NPY_FLOAT32, 1, {D.H}};
        if (alloc_outputs(1, &os, out) < 0)
            goto done;
        Py_BEGIN_ALLOW_THREADS;
        st = ltt_attn_edge_heads_f32(D.T, D.H, D.G, D.dh, D.d, wsr, wsj, i0, i1, norm,
                                     (float *)PyArray_DATA(out[0]), fdata(a[WHOLE]),
                                     fdata(a[ATTN]), fdata(a[VALUES]), fdata(a[W_O]), total, fix);
        Py_END_ALLOW_THREADS;
    } else {
        if (fix_index(&i0, D.H, "head") < 0)
            goto done;
        const out_spec os = {"", NPY_FLOAT32, 2, {D.T, D.T}};
        if (alloc_outputs(1, &os, out) < 0)
            goto done;
        Py_BEGIN_ALLOW_THREADS;
        st = ltt_attn_head_map_f32(D.T, D.H, D.G, D.dh, D.d, wsr, wsj, i0, norm,
                                   (float *)PyArray_DATA(out[0]), fdata(a[WHOLE]), fdata(a[ATTN]),
                                   fdata(a[VALUES]), fdata(a[W_O]), total, fix);
        Py_END_ALLOW_THREADS;
    }
    if (check_status(st, fn) < 0)
        goto done;
    ret = (PyObject *)out[0];
    out[0] = NULL;
done:
    return cleanup(ret, N_ARGS, a, 1, out);
}

static PyObject *py_attn_head_map(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"head",      "whole",     "attn",   "values", "w_o", "total",
                             "row_scale", "col_scale", "center", "norm",   NULL};
    long long head = 0;
    PyObject *o[7] = {NULL};
    int center = 0, norm = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LOOOOO|OOpi:attn_head_map", kwlist, &head, &o[0],
                                     &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &center, &norm))
        return NULL;
    return head_run(0, head, 0, o, center, norm);
}

static PyObject *py_attn_edge_heads(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"target", "source",    "whole",     "attn",   "values", "w_o",
                             "total",  "row_scale", "col_scale", "center", "norm",   NULL};
    long long target = 0, source = 0;
    PyObject *o[7] = {NULL};
    int center = 0, norm = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LLOOOOO|OOpi:attn_edge_heads", kwlist, &target,
                                     &source, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                                     &center, &norm))
        return NULL;
    return head_run(1, target, source, o, center, norm);
}

PyDoc_STRVAR(ffn_neuron_contrib_doc,
             "ffn_neuron_contrib(act, w_down, resid, whole, bias=None, row_scale=None, "
             "col_scale=None, center=False, norm=1)\n--\n\n"
             "Per-neuron FFN contributions. See ltt._reference.ffn_neuron_contrib.");

static PyObject *py_ffn_neuron_contrib(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"act",       "w_down",    "resid",  "whole", "bias",
                             "row_scale", "col_scale", "center", "norm",  NULL};
    /* w_down: a [F, d] C-contiguous array, or the .T view of a [d, F] one kept without a copy;
     * its finiteness is checked below, in whichever layout it has. */
    static const arg_spec spec[] = {{"act", NPY_FLOAT32, 0},
                                    {"w_down", NPY_FLOAT32, ARG_STRIDED | ARG_UNCHECKED},
                                    {"resid", NPY_FLOAT32, 0},
                                    {"whole", NPY_FLOAT32, 0},
                                    {"bias", NPY_FLOAT32, ARG_OPTIONAL},
                                    NORM_SCALES};
    enum { ACT, W_DOWN, RESID, WHOLE, BIAS, ROW_SCALE, COL_SCALE, N_ARGS };
    PyObject *o[N_ARGS] = {NULL}, *ret = NULL;
    PyArrayObject *a[N_ARGS], *outs[4] = {NULL};
    int center = 0, norm = 1;
    ltt_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO|OOOpi:ffn_neuron_contrib", kwlist, &o[ACT],
                                     &o[W_DOWN], &o[RESID], &o[WHOLE], &o[BIAS], &o[ROW_SCALE],
                                     &o[COL_SCALE], &center, &norm))
        return NULL;
    if (convert_args(N_ARGS, spec, o, a) < 0 || check_norm(norm) < 0)
        goto done;
    PyArrayObject *act = a[ACT], *resid = a[RESID], *whole = a[WHOLE], *bias = a[BIAS],
                  *row_scale = a[ROW_SCALE], *col_scale = a[COL_SCALE];
    npy_intp any2[2] = {-1, -1};
    if (check_shape(whole, "whole", "(N, d)", 2, any2) < 0 || check_nonempty(whole, "whole") < 0)
        goto done;
    const npy_intp N = PyArray_DIM(whole, 0), d = PyArray_DIM(whole, 1);
    npy_intp wa[2] = {N, -1};
    if (check_shape(act, "act", "(N, F)", 2, wa) < 0 || check_nonempty(act, "act") < 0)
        goto done;
    const npy_intp F = PyArray_DIM(act, 1);
    npy_intp ww[2] = {F, d}, wr[2] = {N, d}, wn[1] = {N}, wc[1] = {d};
    if (check_shape(a[W_DOWN], "w_down", "(F, d)", 2, ww) < 0 ||
        check_shape(resid, "resid", "(N, d)", 2, wr) < 0)
        goto done;
    int64_t bias_stride = 0;
    if (check_bias(bias, N, d, "N", &bias_stride) < 0)
        goto done;
    if (row_scale != NULL && check_shape(row_scale, "row_scale", "(N,)", 1, wn) < 0)
        goto done;
    if (col_scale != NULL && check_shape(col_scale, "col_scale", "(d,)", 1, wc) < 0)
        goto done;
    int64_t si, sj;
    const npy_intp s0 = PyArray_STRIDE(a[W_DOWN], 0), s1 = PyArray_STRIDE(a[W_DOWN], 1),
                   fs = sizeof(float);
    if ((d == 1 || s1 == fs) && (F == 1 || s0 == fs * d)) {
        si = d; /* [F, d] C-contiguous */
        sj = 1;
    } else if ((F == 1 || s0 == fs) && (d == 1 || s1 == fs * F)) {
        si = 1; /* the .T view of a [d, F] C-contiguous weight */
        sj = F;
    } else {
        PyArrayObject *c = (PyArrayObject *)PyArray_NewCopy(a[W_DOWN], NPY_CORDER);
        if (c == NULL)
            goto done;
        Py_SETREF(a[W_DOWN], c);
        si = d;
        sj = 1;
    }
    {
        /* Both layouts are one dense block of F * d floats. */
        const float *x = fdata(a[W_DOWN]);
        for (npy_intp k = 0; k < F * d; k++)
            if (!isfinite(x[k])) {
                PyErr_Format(PyExc_ValueError,
                             "w_down contains NaN or inf after the cast to float32 (neuron "
                             "%zd, coordinate %zd)",
                             (Py_ssize_t)(si == 1 ? k % F : k / d),
                             (Py_ssize_t)(si == 1 ? k / F : k % d));
                goto done;
            }
    }
    const out_spec os[4] = {{"neurons", NPY_FLOAT32, 2, {N, F}},
                            {"resid", NPY_FLOAT32, 1, {N}},
                            {"bias", NPY_FLOAT32, 1, {N}},
                            {"total", NPY_FLOAT64, 1, {N}}};
    if (alloc_outputs(4, os, outs) < 0)
        goto done;
    ltt_norm_fix fix = {fdata(row_scale), fdata(col_scale), center};
    Py_BEGIN_ALLOW_THREADS;
    st = ltt_ffn_neuron_contrib_f32(N, F, d, si, sj, bias_stride, norm,
                                    (float *)PyArray_DATA(outs[0]), (float *)PyArray_DATA(outs[1]),
                                    (float *)PyArray_DATA(outs[2]), (double *)PyArray_DATA(outs[3]),
                                    fdata(act), fdata(a[W_DOWN]), fdata(resid), fdata(whole), fdata(bias),
                                    fix);
    Py_END_ALLOW_THREADS;
    ret = check_status(st, "ffn_neuron_contrib") < 0 ? NULL : outputs_dict(4, os, outs);
done:
    return cleanup(ret, N_ARGS, a, 4, outs);
}

PyDoc_STRVAR(renormalize_doc,
             "renormalize(heads, single, threshold)\n--\n\n"
             "The renormalize=True threshold mode. See ltt._reference.renormalize.");

static PyObject *py_renormalize(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"heads", "single", "threshold", NULL};
    static const arg_spec spec[] = {{"heads", NPY_FLOAT32, 0}, {"single", NPY_FLOAT32, 0}};
    enum { HEADS, SINGLE, N_ARGS };
    PyObject *o[N_ARGS] = {NULL}, *ret = NULL;
    PyArrayObject *a[N_ARGS], *outs[2] = {NULL};
    double threshold = 0.0;
    ltt_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOd:renormalize", kwlist, &o[HEADS], &o[SINGLE],
                                     &threshold))
        return NULL;
    if (convert_args(N_ARGS, spec, o, a) < 0 || check_threshold(threshold) < 0)
        goto done;
    npy_intp w3[3] = {-1, -1, -1};
    if (check_shape(a[HEADS], "heads", "(K, T, S)", 3, w3) < 0 ||
        check_nonempty(a[HEADS], "heads") < 0)
        goto done;
    const npy_intp K = PyArray_DIM(a[HEADS], 0), T = PyArray_DIM(a[HEADS], 1),
                   S = PyArray_DIM(a[HEADS], 2);
    npy_intp ws[2] = {-1, T};
    if (check_shape(a[SINGLE], "single", "(E, T)", 2, ws) < 0)
        goto done;
    const npy_intp E = PyArray_DIM(a[SINGLE], 0);
    if (require_nonnegative(a[HEADS], "heads") < 0 || require_nonnegative(a[SINGLE], "single") < 0)
        goto done;
    const out_spec os[2] = {{"edges", NPY_FLOAT32, 2, {T, S}}, {"single", NPY_FLOAT32, 2, {E, T}}};
    if (alloc_outputs(2, os, outs) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS;
    st = ltt_renormalize_f32(K, T, S, E, threshold, (float *)PyArray_DATA(outs[0]),
                             (float *)PyArray_DATA(outs[1]), fdata(a[HEADS]), fdata(a[SINGLE]));
    Py_END_ALLOW_THREADS;
    ret = check_status(st, "renormalize") < 0 ? NULL : outputs_dict(2, os, outs);
done:
    return cleanup(ret, N_ARGS, a, 2, outs);
}

PyDoc_STRVAR(prune_doc,
             "prune(attn, attn_resid, ffn, ffn_resid, parallel, targets, threshold)\n--\n\n"
             "Backward pruning of the full graph. See ltt._reference.prune.");

static PyObject *py_prune(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"attn",     "attn_resid", "ffn",       "ffn_resid",
                             "parallel", "targets",    "threshold", NULL};
    /* attn [L, T, T] can be huge: the core checks finiteness of the rows it scans only. */
    static const arg_spec spec[] = {{"attn", NPY_FLOAT32, ARG_UNCHECKED},
                                    {"attn_resid", NPY_FLOAT32, 0},
                                    {"ffn", NPY_FLOAT32, 0},
                                    {"ffn_resid", NPY_FLOAT32, 0}};
    enum { ATTN, ATTN_RESID, FFN, FFN_RESID, PARALLEL, TARGETS, N_ARGS };
    PyObject *o[N_ARGS] = {NULL}, *ret = NULL;
    PyArrayObject *a[N_ARGS], *outs[4] = {NULL};
    out_spec os[4];
    double threshold = 0.0;
    int64_t *edges = NULL, n_edges = 0;
    ltt_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOd:prune", kwlist, &o[ATTN], &o[ATTN_RESID],
                                     &o[FFN], &o[FFN_RESID], &o[PARALLEL], &o[TARGETS], &threshold))
        return NULL;
    a[PARALLEL] = a[TARGETS] = NULL;
    if (convert_args(PARALLEL, spec, o, a) < 0 || check_threshold(threshold) < 0)
        goto done;
    npy_intp w3[3] = {-1, -1, -1};
    if (check_shape(a[ATTN], "attn", "(L, T, T)", 3, w3) < 0 || check_nonempty(a[ATTN], "attn") < 0)
        goto done;
    const npy_intp L = PyArray_DIM(a[ATTN], 0), T = PyArray_DIM(a[ATTN], 1);
    npy_intp wa[3] = {L, T, T}, wlt[2] = {L, T};
    if (check_shape(a[ATTN], "attn", "(L, T, T)", 3, wa) < 0 ||
        check_shape(a[ATTN_RESID], "attn_resid", "(L, T)", 2, wlt) < 0 ||
        prune_prepare(a[FFN], a[FFN_RESID], o[PARALLEL], o[TARGETS], L, T, &a[PARALLEL],
                      &a[TARGETS], os, outs) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS;
    st = ltt_prune_f32(L, T, PyArray_SIZE(a[TARGETS]), threshold, (uint8_t *)PyArray_DATA(outs[1]),
                       (uint8_t *)PyArray_DATA(outs[2]), (uint8_t *)PyArray_DATA(outs[3]), &edges,
                       &n_edges, fdata(a[ATTN]), fdata(a[ATTN_RESID]), fdata(a[FFN]),
                       fdata(a[FFN_RESID]), (const uint8_t *)PyArray_DATA(a[PARALLEL]),
                       (const int64_t *)PyArray_DATA(a[TARGETS]));
    Py_END_ALLOW_THREADS;
    if (st == LTT_ERR_NONFINITE) {
        PyErr_SetString(PyExc_ValueError,
                        "attn contains NaN or inf in a row reached by the pruning");
        goto done;
    }
    if (check_status(st, "prune") < 0)
        goto done;
    ret = prune_result(os, outs, edges, n_edges);
done:
    free(edges);
    return cleanup(ret, N_ARGS, a, 4, outs);
}

PyDoc_STRVAR(prune_sparse_doc,
             "prune_sparse(indptr, sources, weights, attn_resid, ffn, ffn_resid, parallel, "
             "targets, threshold)\n--\n\n"
             "prune with sparse attention rows. See ltt._reference.prune_sparse.");

static PyObject *py_prune_sparse(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"indptr",    "sources",  "weights", "attn_resid", "ffn",
                             "ffn_resid", "parallel", "targets", "threshold",  NULL};
    static const arg_spec spec[] = {{"indptr", NPY_INT64, 0},     {"sources", NPY_INT32, 0},
                                    {"weights", NPY_FLOAT32, 0},  {"attn_resid", NPY_FLOAT32, 0},
                                    {"ffn", NPY_FLOAT32, 0},      {"ffn_resid", NPY_FLOAT32, 0}};
    enum { INDPTR, SOURCES, WEIGHTS, ATTN_RESID, FFN, FFN_RESID, PARALLEL, TARGETS, N_ARGS };
    PyObject *o[N_ARGS] = {NULL}, *ret = NULL;
    PyArrayObject *a[N_ARGS], *outs[4] = {NULL};
    out_spec os[4];
    double threshold = 0.0;
    int64_t *edges = NULL, n_edges = 0;
    ltt_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOd:prune_sparse", kwlist, &o[INDPTR],
                                     &o[SOURCES], &o[WEIGHTS], &o[ATTN_RESID], &o[FFN],
                                     &o[FFN_RESID], &o[PARALLEL], &o[TARGETS], &threshold))
        return NULL;
    a[PARALLEL] = a[TARGETS] = NULL;
    if (convert_args(PARALLEL, spec, o, a) < 0 || check_threshold(threshold) < 0)
        goto done;
    npy_intp w2[2] = {-1, -1};
    if (check_shape(a[ATTN_RESID], "attn_resid", "(L, T)", 2, w2) < 0 ||
        check_nonempty(a[ATTN_RESID], "attn_resid") < 0)
        goto done;
    const npy_intp L = PyArray_DIM(a[ATTN_RESID], 0), T = PyArray_DIM(a[ATTN_RESID], 1);
    npy_intp wn[1] = {PyArray_SIZE(a[SOURCES])};
    if (check_sparse_shapes(a[INDPTR], a[SOURCES], NULL, L * T, 1) < 0 ||
        check_shape(a[WEIGHTS], "weights", "(nnz,) = sources.shape", 1, wn) < 0 ||
        prune_prepare(a[FFN], a[FFN_RESID], o[PARALLEL], o[TARGETS], L, T, &a[PARALLEL],
                      &a[TARGETS], os, outs) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS;
    st = ltt_prune_sparse_f32(
        L, T, wn[0], PyArray_SIZE(a[TARGETS]), threshold, (uint8_t *)PyArray_DATA(outs[1]),
        (uint8_t *)PyArray_DATA(outs[2]), (uint8_t *)PyArray_DATA(outs[3]), &edges, &n_edges,
        (const int64_t *)PyArray_DATA(a[INDPTR]), (const int32_t *)PyArray_DATA(a[SOURCES]),
        fdata(a[WEIGHTS]), fdata(a[ATTN_RESID]), fdata(a[FFN]), fdata(a[FFN_RESID]),
        (const uint8_t *)PyArray_DATA(a[PARALLEL]), (const int64_t *)PyArray_DATA(a[TARGETS]));
    Py_END_ALLOW_THREADS;
    if (sparse_rows_status(st, "prune_sparse", a[INDPTR], a[SOURCES], NULL, L * T, T, 1) < 0)
        goto done;
    ret = prune_result(os, outs, edges, n_edges);
done:
    free(edges);
    return cleanup(ret, N_ARGS, a, 4, outs);
}

PyDoc_STRVAR(renormalize_sparse_doc,
             "renormalize_sparse(indptr, sources, heads, parts, single, threshold)\n--\n\n"
             "renormalize on one layer's sparse head parts. See "
             "ltt._reference.renormalize_sparse.");

static PyObject *py_renormalize_sparse(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"indptr", "sources", "heads", "parts", "single", "threshold", NULL};
    static const arg_spec spec[] = {{"indptr", NPY_INT64, 0}, {"sources", NPY_INT32, 0},
                                    {"heads", NPY_INT16, 0},  {"parts", NPY_FLOAT32, 0},
                                    {"single", NPY_FLOAT32, 0}};
    enum { INDPTR, SOURCES, HEADS, PARTS, SINGLE, N_ARGS };
    PyObject *o[N_ARGS] = {NULL}, *ret = NULL;
    PyArrayObject *a[N_ARGS], *outs[2] = {NULL};
    double threshold = 0.0;
    ltt_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOd:renormalize_sparse", kwlist, &o[INDPTR],
                                     &o[SOURCES], &o[HEADS], &o[PARTS], &o[SINGLE], &threshold))
        return NULL;
    if (convert_args(N_ARGS, spec, o, a) < 0 || check_threshold(threshold) < 0)
        goto done;
    npy_intp w2[2] = {-1, -1};
    if (check_shape(a[SINGLE], "single", "(E, T)", 2, w2) < 0)
        goto done;
    const npy_intp E = PyArray_DIM(a[SINGLE], 0), T = PyArray_DIM(a[SINGLE], 1);
    if (T == 0) {
        PyErr_SetString(PyExc_ValueError, "single must have shape (E, T) with T >= 1, got T = 0");
        goto done;
    }
    npy_intp wn[1] = {PyArray_SIZE(a[SOURCES])};
    if (check_sparse_shapes(a[INDPTR], a[SOURCES], a[HEADS], T, 0) < 0 ||
        check_shape(a[PARTS], "parts", "(nnz,) = sources.shape", 1, wn) < 0)
        goto done;
    const float *pv = fdata(a[PARTS]);
    int negative = 0;
    for (npy_intp j = 0; j < wn[0]; j++)
        negative |= pv[j] < 0.0f;
    for (npy_intp j = 0; negative && j < wn[0]; j++)
        if (pv[j] < 0.0f) {
            char v[64];
            PyErr_Format(PyExc_ValueError, "parts must be >= 0 (shares), got %s at index %zd",
                         fmt_double(v, sizeof v, (double)pv[j]), (Py_ssize_t)j);
            goto done;
        }
    if (require_nonnegative(a[SINGLE], "single") < 0) /* as renormalize: shares only */
        goto done;
    const out_spec os[2] = {{"parts", NPY_FLOAT32, 1, {wn[0]}},
                            {"single", NPY_FLOAT32, 2, {E, T}}};
    if (alloc_outputs(2, os, outs) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS;
    st = ltt_renormalize_sparse_f32(
        T, wn[0], E, threshold, (float *)PyArray_DATA(outs[0]), (float *)PyArray_DATA(outs[1]),
        (const int64_t *)PyArray_DATA(a[INDPTR]), (const int32_t *)PyArray_DATA(a[SOURCES]),
        (const int16_t *)PyArray_DATA(a[HEADS]), pv, fdata(a[SINGLE]));
    Py_END_ALLOW_THREADS;
    if (sparse_rows_status(st, "renormalize_sparse", a[INDPTR], a[SOURCES], a[HEADS], T, T, 0) == 0)
        ret = outputs_dict(2, os, outs);
done:
    return cleanup(ret, N_ARGS, a, 2, outs);
}

/* ---- the running exactness check ---------------------------------------------------------- */

/* The rows `rows` of a row-major [T, n] (or [T]) float32 array are finite: the only ones the
 * check reads (a ValueError naming the argument, the row and the value otherwise). */
static int require_finite_rows(PyArrayObject *a, const char *name, const int64_t *rows, npy_intp R)
{
    if (a == NULL)
        return 0;
    const npy_intp n = PyArray_NDIM(a) == 1 ? 1 : PyArray_SIZE(a) / PyArray_DIM(a, 0);
    for (npy_intp j = 0; j < R; j++) {
        const float *row = fdata(a) + rows[j] * n;
        if (!any_nonfinite(row, n, 0))
            continue;
        for (npy_intp i = 0; i < n; i++)
            if (!isfinite(row[i])) {
                char v[64];
                PyErr_Format(PyExc_ValueError,
                             "%s contains NaN or inf after the cast to float32 (row %lld, column "
                             "%zd: %s)",
                             name, (long long)rows[j], (Py_ssize_t)i,
                             fmt_double(v, sizeof v, (double)row[i]));
                return -1;
            }
    }
    return 0;
}

PyDoc_STRVAR(probe_check_doc,
             "probe_check(rows, probs, values, o, down, z, resid_pre, resid_mid, resid_post, "
             "ffn_out, act, attn_row_scale=None, attn_bias=None, ffn_row_scale=None, "
             "ffn_bias=None)\n--\n\n"
             "One layer's running exactness check at rows, along directions z -> dict of "
             "relative errors. See ltt._reference.probe_check.");

static PyObject *py_probe_check(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"rows",       "probs",          "values",    "o",
                             "down",       "z",              "resid_pre", "resid_mid",
                             "resid_post", "ffn_out",        "act",       "attn_row_scale",
                             "attn_bias",  "ffn_row_scale",  "ffn_bias",  NULL};
    enum { ROWS, PROBS, VALUES, O, DOWN, Z, PRE, MID, POST, FFN, ACT, A_ROW, A_BIAS, F_ROW, F_BIAS,
           N_ARGS };
    /* the states are read at rows only: their finiteness is checked there, below */
    static const arg_spec spec[] = {{"rows", NPY_INT64, 0},
                                    {"probs", NPY_FLOAT32, 0},
                                    {"values", NPY_FLOAT32, 0},
                                    {"o", NPY_FLOAT32, 0},
                                    {"down", NPY_FLOAT64, 0},
                                    {"z", NPY_FLOAT64, 0},
                                    {"resid_pre", NPY_FLOAT32, ARG_UNCHECKED},
                                    {"resid_mid", NPY_FLOAT32, ARG_OPTIONAL | ARG_UNCHECKED},
                                    {"resid_post", NPY_FLOAT32, ARG_UNCHECKED},
                                    {"ffn_out", NPY_FLOAT32, ARG_UNCHECKED},
                                    {"act", NPY_FLOAT32, ARG_UNCHECKED},
                                    {"attn_row_scale", NPY_FLOAT32, ARG_OPTIONAL | ARG_UNCHECKED},
                                    {"attn_bias", NPY_FLOAT32, ARG_OPTIONAL | ARG_UNCHECKED},
                                    {"ffn_row_scale", NPY_FLOAT32, ARG_OPTIONAL | ARG_UNCHECKED},
                                    {"ffn_bias", NPY_FLOAT32, ARG_OPTIONAL | ARG_UNCHECKED}};
    PyObject *o[N_ARGS] = {NULL}, *ret = NULL;
    PyArrayObject *a[N_ARGS];
    ltt_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOOOO|OOOO:probe_check", kwlist, &o[ROWS],
                                     &o[PROBS], &o[VALUES], &o[O], &o[DOWN], &o[Z], &o[PRE],
                                     &o[MID], &o[POST], &o[FFN], &o[ACT], &o[A_ROW], &o[A_BIAS],
                                     &o[F_ROW], &o[F_BIAS]))
        return NULL;
    if (convert_args(N_ARGS, spec, o, a) < 0)
        goto done;
    npy_intp any1[1] = {-1}, any2[2] = {-1, -1};
    if (check_shape(a[PRE], "resid_pre", "(T, d)", 2, any2) < 0 ||
        check_nonempty(a[PRE], "resid_pre") < 0)
        goto done;
    const npy_intp T = PyArray_DIM(a[PRE], 0), d = PyArray_DIM(a[PRE], 1);
    npy_intp td[2] = {T, d}, t1[1] = {T};
    if ((a[MID] != NULL && check_shape(a[MID], "resid_mid", "(T, d)", 2, td) < 0) ||
        check_shape(a[POST], "resid_post", "(T, d)", 2, td) < 0 ||
        check_shape(a[FFN], "ffn_out", "(T, d)", 2, td) < 0 ||
        check_shape(a[ROWS], "rows", "(R,)", 1, any1) < 0 || check_nonempty(a[ROWS], "rows") < 0 ||
        check_shape(a[Z], "z", "(d, k)", 2, (npy_intp[2]){d, -1}) < 0 ||
        check_nonempty(a[Z], "z") < 0)
        goto done;
    const npy_intp R = PyArray_DIM(a[ROWS], 0), k = PyArray_DIM(a[Z], 1);
    if (k > 16) {
        PyErr_Format(PyExc_ValueError, "z must have at most 16 directions (k), got %zd",
                     (Py_ssize_t)k);
        goto done;
    }
    if (check_shape(a[PROBS], "probs", "(H, R, T)", 3, (npy_intp[3]){-1, R, T}) < 0 ||
        check_nonempty(a[PROBS], "probs") < 0 ||
        check_shape(a[VALUES], "values", "(T, G, d_h)", 3, (npy_intp[3]){T, -1, -1}) < 0 ||
        check_nonempty(a[VALUES], "values") < 0 ||
        check_shape(a[ACT], "act", "(T, F)", 2, (npy_intp[2]){T, -1}) < 0 ||
        check_nonempty(a[ACT], "act") < 0)
        goto done;
    const npy_intp H = PyArray_DIM(a[PROBS], 0), G = PyArray_DIM(a[VALUES], 1),
                   dh = PyArray_DIM(a[VALUES], 2), F = PyArray_DIM(a[ACT], 1);
    if (H % G != 0) {
        PyErr_Format(PyExc_ValueError,
                     "values has %zd kv groups, which do not divide the %zd heads of probs",
                     (Py_ssize_t)G, (Py_ssize_t)H);
        goto done;
    }
    if (check_shape(a[O], "o", "(H, d_h, k)", 3, (npy_intp[3]){H, dh, k}) < 0 ||
        check_shape(a[DOWN], "down", "(F, k)", 2, (npy_intp[2]){F, k}) < 0 ||
        (a[A_ROW] != NULL && check_shape(a[A_ROW], "attn_row_scale", "(T,)", 1, t1) < 0) ||
        (a[F_ROW] != NULL && check_shape(a[F_ROW], "ffn_row_scale", "(T,)", 1, t1) < 0) ||
        (a[A_BIAS] != NULL && check_shape(a[A_BIAS], "attn_bias", "(T, d)", 2, td) < 0) ||
        (a[F_BIAS] != NULL && check_shape(a[F_BIAS], "ffn_bias", "(T, d)", 2, td) < 0))
        goto done;
    const int64_t *rows = (const int64_t *)PyArray_DATA(a[ROWS]);
    for (npy_intp j = 0; j < R; j++)
        if (rows[j] < 0 || rows[j] >= T) {
            PyErr_Format(PyExc_ValueError, "rows must be in [0, %zd) (T), got %lld at index %zd",
                         (Py_ssize_t)T, (long long)rows[j], (Py_ssize_t)j);
            goto done;
        }
    static const int row_args[] = {PRE, MID, POST, FFN, ACT, A_ROW, A_BIAS, F_ROW, F_BIAS};
    for (size_t i = 0; i < sizeof row_args / sizeof row_args[0]; i++)
        if (require_finite_rows(a[row_args[i]], spec[row_args[i]].name, rows, R) < 0)
            goto done;
    ltt_probe_inputs in = {T, R, H, G, dh, d, F, k, rows, fdata(a[PROBS]), fdata(a[VALUES]),
                           fdata(a[O]), (const double *)PyArray_DATA(a[DOWN]),
                           (const double *)PyArray_DATA(a[Z]), fdata(a[PRE]), fdata(a[MID]),
                           fdata(a[POST]), fdata(a[FFN]), fdata(a[ACT]), fdata(a[A_ROW]),
                           fdata(a[A_BIAS]), fdata(a[F_ROW]), fdata(a[F_BIAS])};
    double errors[3] = {0.0, 0.0, 0.0};
    Py_BEGIN_ALLOW_THREADS;
    st = ltt_probe_check(&in, errors);
    Py_END_ALLOW_THREADS;
    if (check_status(st, "probe_check") < 0)
        goto done;
    ret = a[MID] == NULL
              ? Py_BuildValue("{s:d,s:d}", "attn", errors[0], "neurons", errors[2])
              : Py_BuildValue("{s:d,s:d,s:d}", "attn", errors[0], "ffn", errors[1], "neurons",
                              errors[2]);
done:
    return cleanup(ret, N_ARGS, a, 0, NULL);
}

/* ---- build information --------------------------------------------------------------------- */

PyDoc_STRVAR(build_info_doc, "build_info()\n--\n\n"
                             "How ltt._core was built: BLAS, OpenMP, NumPy, flags, SIMD variant.");

static PyObject *py_build_info(PyObject *self, PyObject *unused)
{
    const char *config = "";
    int blas_threads = -1;
#ifdef LTT_BLAS_CONFIG
    config = LTT_BLAS_CONFIG();
    blas_threads = LTT_BLAS_THREADS();
#endif
    int omp = 0, omp_threads = 1;
#ifdef _OPENMP
    omp = 1;
    omp_threads = omp_get_max_threads();
#endif
    PyObject *np_version = NULL, *np = PyImport_ImportModule("numpy");
    if (np != NULL) {
        np_version = PyObject_GetAttrString(np, "__version__");
        Py_DECREF(np);
    }
    if (np_version == NULL)
        return NULL;
    PyObject *info =
        Py_BuildValue("{s:{s:s,s:s,s:i},s:{s:O,s:i},s:O,s:s,s:s,s:s}", "blas", "name",
                      LTT_BLAS_NAME, "config", config ? config : "", "threads", blas_threads,
                      "openmp", "enabled", omp ? Py_True : Py_False, "max_threads", omp_threads,
                      "numpy", np_version, "numpy_build_api", NPY_FEATURE_VERSION_STRING, "cflags",
                      LTT_CFLAGS, "simd", ltt_simd_variant());
    Py_DECREF(np_version);
    return info;
}

/* ---- threads ------------------------------------------------------------------------------- */

PyDoc_STRVAR(set_num_threads_doc, "set_num_threads(n)\n--\n\n"
                                  "Threads of the core's large calls (n >= 1). See "
                                  "ltt.set_num_threads.");

static PyObject *py_set_num_threads(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"n", NULL};
    int n = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i:set_num_threads", kwlist, &n))
        return NULL;
    if (ltt_set_num_threads(n) != LTT_OK) {
        PyErr_Format(PyExc_ValueError, "n must be a positive int, got %d", n);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(get_num_threads_doc, "get_num_threads()\n--\n\n"
                                  "Threads of the core's large calls. See ltt.get_num_threads.");

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong(ltt_get_num_threads());
}

static PyMethodDef methods[] = {
    {"set_num_threads", (PyCFunction)(void (*)(void))py_set_num_threads,
     METH_VARARGS | METH_KEYWORDS, set_num_threads_doc},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, get_num_threads_doc},
    {"contributions", (PyCFunction)(void (*)(void))py_contributions, METH_VARARGS | METH_KEYWORDS,
     contributions_doc},
    {"attn_contrib", (PyCFunction)(void (*)(void))py_attn_contrib, METH_VARARGS | METH_KEYWORDS,
     attn_contrib_doc},
    {"attn_head_map", (PyCFunction)(void (*)(void))py_attn_head_map, METH_VARARGS | METH_KEYWORDS,
     attn_head_map_doc},
    {"attn_edge_heads", (PyCFunction)(void (*)(void))py_attn_edge_heads,
     METH_VARARGS | METH_KEYWORDS, attn_edge_heads_doc},
    {"ffn_neuron_contrib", (PyCFunction)(void (*)(void))py_ffn_neuron_contrib,
     METH_VARARGS | METH_KEYWORDS, ffn_neuron_contrib_doc},
    {"renormalize", (PyCFunction)(void (*)(void))py_renormalize, METH_VARARGS | METH_KEYWORDS,
     renormalize_doc},
    {"prune", (PyCFunction)(void (*)(void))py_prune, METH_VARARGS | METH_KEYWORDS, prune_doc},
    {"prune_sparse", (PyCFunction)(void (*)(void))py_prune_sparse, METH_VARARGS | METH_KEYWORDS,
     prune_sparse_doc},
    {"renormalize_sparse", (PyCFunction)(void (*)(void))py_renormalize_sparse,
     METH_VARARGS | METH_KEYWORDS, renormalize_sparse_doc},
    {"probe_check", (PyCFunction)(void (*)(void))py_probe_check, METH_VARARGS | METH_KEYWORDS,
     probe_check_doc},
    {"build_info", py_build_info, METH_NOARGS, build_info_doc},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_core",
                                       "ltt's C attribution core (see ltt/_reference.py).", -1,
                                       methods};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    return PyModule_Create(&moduledef);
}
