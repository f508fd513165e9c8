/* DLRM's dot interaction on CPU, fused: the dense vector and the pairwise dot products of
 * every pair of vectors in one pass, forward and backward.
 *
 * Row-major float32 inputs as the model holds them: dense [B][d] and vectors [B][(n - 1) d]
 * (vector 0 is the dense one). forward writes out [B][d + n (n - 1) / 2]: the dense vector,
 * then the pairs (i, j), i < j, in row-major upper-triangle order. backward takes that
 * output's gradient and writes d_dense [B][d] and d_vectors [B][(n - 1) d].
 *
 * The kernels (_dot_interaction_kernels.h) are compiled for AVX-512 and for AVX2 + FMA; the
 * widest set the CPU has is picked at import. On other CPUs `variant()` is None and the
 * model keeps torch's path (dist_train/models/dot_interaction.py). Each call splits the batch
 * over `threads` POSIX threads (the calling one included), with the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const float *dense, *vectors, *grad;
    float *out, *d_dense, *d_vectors;
    int64_t dense_stride, vectors_stride, grad_stride, out_stride, d_dense_stride,
        d_vectors_stride;
    int64_t n, d, lo, hi;
    /* this thread's scratch: n d, n (n - 1) / 2 and (backward) n d registers */
    float *x_tile, *pair_tile, *dx_tile;
} Work;

typedef void (*RangeFn)(const Work *);

typedef struct {
    const char *name;
    int64_t lanes; /* examples per tile */
    RangeFn forward, backward;
} Variant;

static inline int64_t pair_index(int64_t n, int64_t i, int64_t j) {
    int64_t lo = i < j ? i : j, hi = i < j ? j : i;
    return lo * n - lo * (lo + 1) / 2 + (hi - lo - 1);
}

/* pair (i, j), i < j, is pair row_start(n, i) + j */
static inline int64_t row_start(int64_t n, int64_t i) { return i * n - i * (i + 1) / 2 - i - 1; }

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define JB 4 /* forward: pairs (i, j .. j + 3) sharing the loads of vector i */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HAVE_VARIANTS 1

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define LANES 16
#define KC 16 /* backward: columns of a vector kept in registers at once */
#define RB 4  /* register blocks: RB vectors x CB vectors (forward) or CB columns (backward) */
#define CB 4
#define KERNEL(name) CAT(name, avx512)
#include "_dot_interaction_kernels.h"
#undef KERNEL
#undef CB
#undef RB
#undef KC
#undef LANES
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define LANES 8
#define KC 8 /* AVX2 has 16 registers: 8 accumulators leave room for the operands */
#define RB 2
#define CB 4
#define KERNEL(name) CAT(name, avx2)
#include "_dot_interaction_kernels.h"
#undef KERNEL
#undef CB
#undef RB
#undef KC
#undef LANES
#pragma GCC pop_options

static const Variant AVX512 = {"avx512", 16, forward_range_avx512, backward_range_avx512};
static const Variant AVX2 = {"avx2", 8, forward_range_avx2, backward_range_avx2};

static const Variant *pick_variant(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return &AVX512;
    if (__builtin_cpu_supports("x86-64-v3")) return &AVX2;
    return NULL;
}
#else
static const Variant *pick_variant(void) { return NULL; }
#endif

static const Variant *variant = NULL;

typedef struct {
    RangeFn fn;
    Work work;
} Task;

static void *run_task(void *arg) {
    Task *t = (Task *)arg;
    t->fn(&t->work);
    return NULL;
}

/* Split [0, batch) into `threads` runs of whole tiles and run fn over each (`backward`:
 * with the dx scratch tile too). 0, or -1 with no memory for the scratch tiles. */
static int run_split(RangeFn fn, int64_t lanes, const Work *proto, int64_t batch,
                     int64_t threads, int backward) {
    const int64_t tiles = (batch + lanes - 1) / lanes;
    if (threads > tiles) threads = tiles;
    if (threads < 1) threads = 1;
    const int64_t pairs = proto->n * (proto->n - 1) / 2;
    const size_t x_bytes = (size_t)(proto->n * proto->d * lanes) * sizeof(float);
    const size_t p_bytes = (size_t)(pairs * lanes) * sizeof(float);
    Task *tasks = calloc((size_t)threads, sizeof(Task));
    pthread_t *ids = calloc((size_t)threads, sizeof(pthread_t));
    int failed = tasks == NULL || ids == NULL;
    for (int64_t t = 0; t < threads && !failed; ++t) {
        tasks[t].fn = fn;
        tasks[t].work = *proto;
        tasks[t].work.lo = (tiles * t / threads) * lanes;
        tasks[t].work.hi = (tiles * (t + 1) / threads) * lanes;
        if (tasks[t].work.hi > batch) tasks[t].work.hi = batch;
        tasks[t].work.x_tile = aligned_alloc(64, (x_bytes + 63) / 64 * 64);
        tasks[t].work.pair_tile = aligned_alloc(64, (p_bytes + 63) / 64 * 64);
        tasks[t].work.dx_tile = backward ? aligned_alloc(64, (x_bytes + 63) / 64 * 64) : NULL;
        failed = tasks[t].work.x_tile == NULL || tasks[t].work.pair_tile == NULL ||
                 (backward && tasks[t].work.dx_tile == NULL);
    }
    if (!failed) {
#ifdef _OPENMP
        /* torch's own OpenMP threads: its runtime is the one loaded (libgomp.so.1, torch/lib).
           Threads of our own would compete with that pool's, which spin-wait on the other
           cores after each of torch's parallel ops: in the training step they gained
           nothing over one thread. */
#pragma omp parallel for num_threads(threads) schedule(static, 1)
        for (int64_t t = 0; t < threads; ++t) run_task(&tasks[t]);
#else
        int64_t started = 1;
        for (; started < threads; ++started)
            if (pthread_create(&ids[started], NULL, run_task, &tasks[started]) != 0) break;
        /* a thread that could not start has its share run here, after this thread's own */
        run_task(&tasks[0]);
        for (int64_t t = started; t < threads; ++t) run_task(&tasks[t]);
        for (int64_t t = 1; t < started; ++t) pthread_join(ids[t], NULL);
#endif
    }
    for (int64_t t = 0; tasks != NULL && t < threads; ++t) {
        free(tasks[t].work.x_tile);
        free(tasks[t].work.pair_tile);
        free(tasks[t].work.dx_tile);
    }
    free(tasks);
    free(ids);
    return failed ? -1 : 0;
}

static int check_variant(void) {
    if (variant != NULL) return 0;
    PyErr_SetString(PyExc_RuntimeError,
                    "_dot_interaction: this CPU has neither AVX-512 nor AVX2 + FMA");
    return -1;
}

/* The shapes the kernels index by; the caller vouches for the buffers behind them. */
static int check_shape(long long batch, long long n, long long d, long long threads) {
    if (batch >= 0 && n >= 2 && d >= 1 && threads >= 1) return 0;
    PyErr_Format(PyExc_ValueError,
                 "_dot_interaction: need batch >= 0, n >= 2 vectors, d >= 1 and threads >= 1; "
                 "got batch %lld, n %lld, d %lld, threads %lld",
                 batch, n, d, threads);
    return -1;
}

static PyObject *py_variant(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    if (variant == NULL) Py_RETURN_NONE;
    return PyUnicode_FromString(variant->name);
}

static PyObject *py_select(PyObject *self, PyObject *args) {
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    const Variant *best = pick_variant();
#ifdef HAVE_VARIANTS
    /* a narrower set than the best one the CPU has, for tests and comparisons */
    const Variant *wanted = strcmp(name, "avx512") == 0 ? &AVX512
                            : strcmp(name, "avx2") == 0 ? &AVX2
                                                        : NULL;
    if (wanted != NULL && best != NULL && wanted->lanes <= best->lanes) {
        variant = wanted;
        Py_RETURN_TRUE;
    }
#endif
    (void)best;
    Py_RETURN_FALSE;
}

/* Both entry points' common end: check the shapes, run the forward or backward kernel of
 * the selected variant with the GIL released. None, or NULL with the error set. */
static PyObject *run_checked(const Work *w, int backward, long long batch, long long threads) {
    if (check_shape(batch, w->n, w->d, threads) != 0) return NULL;
    /* read once, under the GIL: a select() from another thread must not pair one variant's
       kernel with another's tile size */
    const Variant *v = variant;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc =
        run_split(backward ? v->backward : v->forward, v->lanes, w, batch, threads, backward);
    Py_END_ALLOW_THREADS if (rc != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_forward(PyObject *self, PyObject *args) {
    (void)self;
    if (check_variant() != 0) return NULL;
    unsigned long long dense, vectors, out;
    long long dense_stride, vectors_stride, out_stride, batch, n, d, threads;
    if (!PyArg_ParseTuple(args, "KLKLKLLLLL", &dense, &dense_stride, &vectors, &vectors_stride,
                          &out, &out_stride, &batch, &n, &d, &threads))
        return NULL;
    Work w = {0};
    w.dense = (const float *)(uintptr_t)dense;
    w.vectors = (const float *)(uintptr_t)vectors;
    w.out = (float *)(uintptr_t)out;
    w.dense_stride = dense_stride;
    w.vectors_stride = vectors_stride;
    w.out_stride = out_stride;
    w.n = n;
    w.d = d;
    return run_checked(&w, 0, batch, threads);
}

static PyObject *py_backward(PyObject *self, PyObject *args) {
    (void)self;
    if (check_variant() != 0) return NULL;
    unsigned long long dense, vectors, grad, d_dense, d_vectors;
    long long dense_stride, vectors_stride, grad_stride, d_dense_stride, d_vectors_stride;
    long long batch, n, d, threads;
    if (!PyArg_ParseTuple(args, "KLKLKLKLKLLLLL", &dense, &dense_stride, &vectors,
                          &vectors_stride, &grad, &grad_stride, &d_dense, &d_dense_stride,
                          &d_vectors, &d_vectors_stride, &batch, &n, &d, &threads))
        return NULL;
    Work w = {0};
    w.dense = (const float *)(uintptr_t)dense;
    w.vectors = (const float *)(uintptr_t)vectors;
    w.grad = (const float *)(uintptr_t)grad;
    w.d_dense = (float *)(uintptr_t)d_dense;
    w.d_vectors = (float *)(uintptr_t)d_vectors;
    w.dense_stride = dense_stride;
    w.vectors_stride = vectors_stride;
    w.grad_stride = grad_stride;
    w.d_dense_stride = d_dense_stride;
    w.d_vectors_stride = d_vectors_stride;
    w.n = n;
    w.d = d;
    return run_checked(&w, 1, batch, threads);
}

static PyMethodDef methods[] = {
    {"variant", py_variant, METH_NOARGS,
     "variant() -> 'avx512', 'avx2', or None where the CPU has neither."},
    {"select", py_select, METH_VARARGS,
     "select(name) -> whether the kernels now run as `name` ('avx512' or 'avx2'), which "
     "this CPU must support."},
    {"forward", py_forward, METH_VARARGS,
     "forward(dense, dense_stride, vectors, vectors_stride, out, out_stride, batch, n, d, "
     "threads): addresses of float32 rows; writes out."},
    {"backward", py_backward, METH_VARARGS,
     "backward(dense, dense_stride, vectors, vectors_stride, grad, grad_stride, d_dense, "
     "d_dense_stride, d_vectors, d_vectors_stride, batch, n, d, threads): writes d_dense "
     "and d_vectors."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_dot_interaction", "DLRM's dot interaction on CPU, fused.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dot_interaction(void) {
    variant = pick_variant();
    return PyModule_Create(&module);
}
