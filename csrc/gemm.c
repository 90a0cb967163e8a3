/* gemm.c: the thread count of a call, and a row-split sgemm so OpenBLAS and OpenMP do not
 * oversubscribe the cores. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sched_getaffinity */
#endif
#include <stdatomic.h>
#include <stdlib.h>

#include "ltt_blas.h"
#include "ltt_internal.h"

#if defined(_OPENMP) && defined(__linux__)
#include <dirent.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#define LTT_LOAD 1
#endif

/* Default of ltt__threads: below this many element operations a call runs on one thread. */
#define PAR_MIN_WORK 1e8
/* The machine's load is looked at again once this many seconds have passed. */
#define LOOK_S 0.2

#ifdef LTT_LOAD
static double clock_s(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Busy seconds so far (all but idle and iowait) of the CPUs this process may run on, from
 * /proc/stat, and their number; -1 when unreadable. */
static int cpus_busy(double *busy, int *ncpu)
{
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask) != 0)
        return -1;
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -1;
    char line[512];
    unsigned long long ticks = 0;
    int n = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "cpu", 3) != 0)
            break;
        int id;
        unsigned long long v[8] = {0};
        /* user nice system idle iowait irq softirq steal (steal: taken by other machines) */
        if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &id, &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7]) >= 5 &&
            id >= 0 && id < CPU_SETSIZE && CPU_ISSET(id, &mask)) {
            ticks += v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
            n++;
        }
    }
    fclose(f);
    const long hz = sysconf(_SC_CLK_TCK);
    if (n == 0 || hz <= 0)
        return -1;
    *busy = (double)ticks / (double)hz;
    *ncpu = n;
    return 0;
}

/* Tasks running or runnable on the machine now (the fourth field of /proc/loadavg); -1 when
 * unreadable. */
static int tasks_running(void)
{
    FILE *f = fopen("/proc/loadavg", "r");
    if (f == NULL)
        return -1;
    double l1, l5, l15;
    int running = -1, total;
    if (fscanf(f, "%lf %lf %lf %d/%d", &l1, &l5, &l15, &running, &total) != 5)
        running = -1;
    fclose(f);
    return running;
}

/* Threads of this process running or runnable now (state R in /proc/self/task/<id>/stat: a
 * BLAS pool still spinning counts); -1 when unreadable. */
static int own_running(void)
{
    DIR *dir = opendir("/proc/self/task");
    if (dir == NULL)
        return -1;
    int n = 0;
    const struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        const size_t k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = '\0';
        const char *p = strrchr(buf, ')'); /* the state follows the (any) command name */
        if (p != NULL && p[1] == ' ' && p[2] == 'R')
            n++;
    }
    closedir(dir);
    return n;
}

/*
 * CPUs left free by other processes: this process's CPUs less their busy time not spent by this
 * process, averaged since the previous look (at least LOOK_S ago), or at the first look from
 * the other tasks running then; the last estimate in between; -1 when unknown.
 */
static double cpus_free(void)
{
    static double last_wall = -1.0, last_busy, last_self, estimate = -1.0;
    double r;
#pragma omp critical(ltt_load)
    {
        const double wall = clock_s(CLOCK_MONOTONIC);
        if (last_wall < 0.0 || wall - last_wall >= LOOK_S) {
            const double self = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            double busy;
            int ncpu;
            if (cpus_busy(&busy, &ncpu) == 0) {
                if (last_wall >= 0.0) {
                    const double others =
                        ((busy - last_busy) - (self - last_self)) / (wall - last_wall);
                    estimate = (double)ncpu - (others > 0.0 ? others : 0.0);
                } else {
                    /* First look: the tasks running right now, less this process's. */
                    const int running = tasks_running(), own = own_running();
                    if (running > 0) {
                        const int others = running - (own > 0 ? own : 1);
                        estimate = (double)ncpu - (others > 0 ? (double)others : 0.0);
                    }
                }
                last_wall = wall;
                last_busy = busy;
                last_self = self;
            }
        }
        r = estimate;
    }
    return r;
}
#endif

int ltt__threads(double work)
{
#ifdef _OPENMP
    /* LTT_PAR_MIN_WORK replaces the bar and skips the look at the load, read once (for tests:
     * 0 runs every call on omp_get_max_threads() threads). */
    static _Atomic double min_work = -1.0;
    static atomic_int fixed = 0;
    double m = atomic_load_explicit(&min_work, memory_order_acquire);
    if (m < 0.0) {
        const char *env = getenv("LTT_PAR_MIN_WORK");
        const double v = env != NULL ? atof(env) : -1.0;
        atomic_store_explicit(&fixed, v >= 0.0, memory_order_relaxed);
        m = v >= 0.0 ? v : PAR_MIN_WORK;
        atomic_store_explicit(&min_work, m, memory_order_release);
    }
    if (work < m || omp_in_parallel())
        return 1;
    int nt = omp_get_max_threads();
#ifdef LTT_LOAD
    /*
     * Threads beyond the free CPUs only wait: each joins the call's barrier when the scheduler
     * next gives it a slice, spinning meanwhile (with both cores busy, two threads ran a layer
     * several times slower than one). So a call takes as many threads as CPUs are free, at
     * least one, whatever OMP_WAIT_POLICY says.
     */
    if (!atomic_load_explicit(&fixed, memory_order_relaxed)) {
        const double free_cpus = cpus_free();
        if (free_cpus >= 0.0) {
            const int can = (int)(free_cpus + 0.5);
            nt = can < 1 ? 1 : (can < nt ? can : nt);
        }
    }
#endif
    return nt;
#else
    (void)work;
    return 1;
#endif
}

void ltt__sgemm(int threads, int trans_b, int64_t M, int64_t N, int64_t K, const float *A,
                int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0)
        return;
#if defined(_OPENMP) && defined(LTT_BLAS_SET_THREADS)
    /* OpenBLAS's own pthread pool spins after each call and starves our OpenMP threads (the
     * usual OpenBLAS-pthreads + OpenMP oversubscription). This OpenBLAS (its own copy, not
     * NumPy's) is set single-threaded once, before any call, and the rows of C are split
     * across OpenMP threads instead. */
    static atomic_int single = 0;
    if (!atomic_load_explicit(&single, memory_order_acquire)) {
        LTT_BLAS_SET_THREADS(1);
        atomic_store_explicit(&single, 1, memory_order_release);
    }
    int nt = threads;
    if (nt > M)
        nt = (int)M;
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        {
            const int id = omp_get_thread_num(), n = omp_get_num_threads();
            const int64_t r0 = M * id / n, r1 = M * (id + 1) / n;
            if (r1 > r0)
                LTT_SGEMM(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                          (int)(r1 - r0), (int)N, (int)K, 1.0f, A + r0 * lda, (int)lda, B, (int)ldb,
                          0.0f, C + r0 * ldc, (int)ldc);
        }
        return;
    }
#else
    (void)threads;
#endif
    LTT_SGEMM(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N,
              (int)K, 1.0f, A, (int)lda, B, (int)ldb, 0.0f, C, (int)ldc);
}
