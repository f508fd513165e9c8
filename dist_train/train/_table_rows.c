/* One embedding table's sum-pooled lookup on CPU, and its backward fused with the row-wise
 * Adagrad update, in place (dist_train/train/table_rows.py).
 *
 * Float32 rows [rows][dim] and row-wise Adagrad's state [rows]; the bags of `features`
 * features over a batch of `batch` examples, feature-major as a KeyedJaggedTensor holds them:
 * bag i = f batch + b reads ids[offsets[i] .. offsets[i + 1]). Its pooled vector is row
 * b features + f of the output (and of the gradient): [batch][features dim], as the model
 * reads it, with no pass to put the bags example-major first. The update is FBGEMM's exact
 * row-wise Adagrad (no weight decay, no clipping): per distinct row r of the batch, g = the
 * sum of the gradients of the bags that read it (once per read), state[r] += mean(g^2),
 * w[r] -= lr g / (sqrt(state[r]) + eps).
 *
 * Why not FBGEMM's CPU backward: it sorts the batch's ids (csr2csc) before its update, and
 * each read of a pooled gradient and of a row then waits on memory. Here each thread owns a
 * range of rows and finds its distinct rows in one pass over the ids with a slot per row (a
 * buffer of -1s the caller keeps, left as found), then reads gradients and rows with
 * prefetches ahead. A row's gradients add up in bag order, whatever the thread count: the
 * result does not depend on it.
 *
 * The work runs on torch's OpenMP threads, as _dot_interaction.c's does, with the GIL
 * released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define AHEAD 16 /* reads prefetched this many ids (or gradients) ahead */
#define MAX_THREADS 256
#define MAX_DIM 1024 /* the update keeps a row's gradient on the stack */
/* the row loops vectorized for the widest instruction set the CPU has, picked at load */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTORIZED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTORIZED
#endif
#define BLOCK 64 /* examples pooled together: their rows of out, 64 x features x dim floats */

/* The ids outside [0, rows) among ids[lo .. hi). */
static int64_t count_outside(const int64_t *ids, int64_t lo, int64_t hi, int64_t rows) {
    int64_t outside = 0;
    for (int64_t p = lo; p < hi; ++p) outside += (uint64_t)ids[p] >= (uint64_t)rows;
    return outside;
}

/* Pooled vectors of examples [lo, hi): out[b features + f] = the sum of bag f batch + b's
 * rows. A block of examples at a time, feature by feature: the block's rows of out stay in
 * cache while every feature writes its column (feature-major bags written straight into the
 * example-major out would miss the cache on every bag). */
VECTORIZED static void pool_examples(const int64_t *ids, const int64_t *offsets, int64_t features,
                          int64_t batch, int64_t lo, int64_t hi, const float *w, int64_t dim,
                          float *out) {
    for (int64_t b0 = lo; b0 < hi; b0 += BLOCK) {
        const int64_t b1 = b0 + BLOCK < hi ? b0 + BLOCK : hi;
        for (int64_t f = 0; f < features; ++f) {
            const int64_t *bag = offsets + f * batch;
            const int64_t last = bag[b1];
            for (int64_t b = b0; b < b1; ++b) {
                float *o = out + (b * features + f) * dim;
                memset(o, 0, (size_t)dim * sizeof(float));
                for (int64_t p = bag[b]; p < bag[b + 1]; ++p) {
                    if (p + AHEAD < last) __builtin_prefetch(w + ids[p + AHEAD] * dim);
                    const float *row = w + ids[p] * dim;
                    for (int64_t d = 0; d < dim; ++d) o[d] += row[d];
                }
            }
        }
    }
}

/* The update's scratch, int32 ids: five arrays of n + 2 per thread. */
#define SCRATCH_ARRAYS 5
static int64_t scratch_size(int64_t n, int64_t threads) {
    return threads * SCRATCH_ARRAYS * (n + 2);
}

typedef struct {
    int32_t *distinct; /* the thread's distinct rows, in order of first read */
    int32_t *start;    /* distinct row s's bags: bags[start[s] .. start[s + 1]) */
    int32_t *bags;
    int32_t *read_slot; /* per read the thread owns: its distinct row */
    int32_t *read_bag;  /* ... and its bag */
} Scratch;

/* Thread t's share of the update: the rows it owns. */
VECTORIZED static void update_owned(const int64_t *ids, const int64_t *offsets,
                                    int64_t features, int64_t batch, const float *grad,
                                    float *w, float *state, int64_t rows, int64_t dim, float lr,
                                    float eps, int32_t *slot, int t, int threads, Scratch *s) {
    const int64_t n = offsets[features * batch];
    /* the rows this thread owns: one contiguous range per thread */
    const int64_t own_lo = rows * t / threads, own_hi = rows * (t + 1) / threads;
    int64_t distinct = 0, reads = 0;
    /* the distinct rows this thread owns, each read's row and bag (its row of grad), and
       reads per row */
    for (int64_t i = 0, f = 0, b = 0; i < features * batch; ++i) {
        const int32_t bag = (int32_t)(b * features + f);
        if (++b == batch) b = 0, ++f;
        for (int64_t p = offsets[i]; p < offsets[i + 1]; ++p) {
            if (p + AHEAD < n) __builtin_prefetch(slot + ids[p + AHEAD]);
            const int64_t r = ids[p];
            if (r < own_lo || r >= own_hi) continue;
            int32_t k = slot[r];
            if (k < 0) {
                k = (int32_t)distinct++;
                slot[r] = k;
                s->distinct[k] = (int32_t)r;
                s->start[k + 1] = 0;
            }
            s->start[k + 1]++;
            s->read_slot[reads] = k;
            s->read_bag[reads++] = bag;
        }
    }
    s->start[0] = 0;
    for (int64_t k = 0; k < distinct; ++k) {
        s->start[k + 1] += s->start[k];
        slot[s->distinct[k]] = -1; /* as found, for the next call */
    }
    /* each row's bags, in bag order (start[k] is row k's cursor, then its end) */
    for (int64_t q = 0; q < reads; ++q) s->bags[s->start[s->read_slot[q]]++] = s->read_bag[q];
    for (int64_t k = distinct; k > 0; --k) s->start[k] = s->start[k - 1];
    s->start[0] = 0;
    float g[dim];
    for (int64_t k = 0; k < distinct; ++k) {
        if (k + AHEAD / 4 < distinct) {
            const int64_t ahead = s->distinct[k + AHEAD / 4];
            __builtin_prefetch(w + ahead * dim, 1);
            __builtin_prefetch(state + ahead, 1);
        }
        memset(g, 0, sizeof g);
        for (int64_t q = s->start[k]; q < s->start[k + 1]; ++q) {
            if (q + AHEAD < reads) __builtin_prefetch(grad + (int64_t)s->bags[q + AHEAD] * dim);
            const float *gb = grad + (int64_t)s->bags[q] * dim;
            for (int64_t d = 0; d < dim; ++d) g[d] += gb[d];
        }
        float squares = 0.0f;
        for (int64_t d = 0; d < dim; ++d) squares += g[d] * g[d];
        const int64_t r = s->distinct[k];
        const float h = state[r] + squares / (float)dim;
        state[r] = h;
        const float step = lr / (sqrtf(h) + eps);
        float *row = w + r * dim;
        for (int64_t d = 0; d < dim; ++d) row[d] -= step * g[d];
    }
}

static PyObject *py_pool(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ids_addr, offsets_addr, w_addr, out_addr;
    long long features, batch, rows, dim, threads;
    if (!PyArg_ParseTuple(args, "KKLLKLLKL", &ids_addr, &offsets_addr, &features, &batch,
                          &w_addr, &rows, &dim, &out_addr, &threads))
        return NULL;
    if (features < 1 || batch < 0 || rows < 1 || dim < 1 || threads < 1) {
        PyErr_Format(PyExc_ValueError,
                     "_table_rows.pool: need features >= 1, batch >= 0, rows, dim and threads "
                     ">= 1; got %lld, %lld, %lld, %lld, %lld",
                     features, batch, rows, dim, threads);
        return NULL;
    }
    const long long bags = features * batch;
    const int64_t *ids = (const int64_t *)(uintptr_t)ids_addr;
    const int64_t *offsets = (const int64_t *)(uintptr_t)offsets_addr;
    const float *w = (const float *)(uintptr_t)w_addr;
    float *out = (float *)(uintptr_t)out_addr;
    if (threads > batch) threads = batch > 0 ? batch : 1;
    int64_t outside = 0;
    Py_BEGIN_ALLOW_THREADS
    /* checked before any read: a bad id must not read outside the table */
    outside = count_outside(ids, offsets[0], offsets[bags], rows);
    if (outside == 0 && bags > 0) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
        for (long long t = 0; t < threads; ++t)
            pool_examples(ids, offsets, features, batch, batch * t / threads,
                          batch * (t + 1) / threads, w, dim, out);
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(outside);
}

/* Thread t's scratch within `scratch`: five arrays of n + 2 ids. */
static Scratch carve(int32_t *scratch, int64_t n, int t) {
    int32_t *base = scratch + (int64_t)t * SCRATCH_ARRAYS * (n + 2);
    const int64_t w = n + 2;
    return (Scratch){base, base + w, base + 2 * w, base + 3 * w, base + 4 * w};
}

static PyObject *py_update(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ids_addr, offsets_addr, grad_addr, w_addr, state_addr, slot_addr;
    unsigned long long scratch_addr;
    long long features, batch, rows, dim, threads, scratch_len;
    float lr, eps;
    if (!PyArg_ParseTuple(args, "KKLLKKKLLffKKLL", &ids_addr, &offsets_addr, &features, &batch,
                          &grad_addr, &w_addr, &state_addr, &rows, &dim, &lr, &eps, &slot_addr,
                          &scratch_addr, &scratch_len, &threads))
        return NULL;
    if (features < 1 || batch < 0 || rows < 1 || rows > INT32_MAX || dim < 1 ||
        dim > MAX_DIM || threads < 1) {
        PyErr_Format(PyExc_ValueError,
                     "_table_rows.update: need features >= 1, batch >= 0, 1 <= rows < 2^31, "
                     "1 <= dim <= %d and threads >= 1; got %lld, %lld, %lld, %lld, %lld",
                     MAX_DIM, features, batch, rows, dim, threads);
        return NULL;
    }
    const int64_t *ids = (const int64_t *)(uintptr_t)ids_addr;
    const int64_t *offsets = (const int64_t *)(uintptr_t)offsets_addr;
    if (offsets[features * batch] > INT32_MAX || features * batch > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "_table_rows.update: 2^31 ids or bags or more");
        return NULL;
    }
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > rows) threads = rows;
    const int64_t n = offsets[features * batch];
    if (scratch_len < scratch_size(n, threads)) {
        PyErr_Format(PyExc_ValueError,
                     "_table_rows.update: scratch of %lld ids, %lld needed (scratch_size)",
                     scratch_len, (long long)scratch_size(n, threads));
        return NULL;
    }
    int32_t *scratch = (int32_t *)(uintptr_t)scratch_addr;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (long long t = 0; t < threads; ++t) {
        Scratch own = carve(scratch, n, (int)t);
        update_owned(ids, offsets, features, batch, (const float *)(uintptr_t)grad_addr,
                     (float *)(uintptr_t)w_addr, (float *)(uintptr_t)state_addr, rows, dim, lr,
                     eps, (int32_t *)(uintptr_t)slot_addr, (int)t, (int)threads, &own);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_scratch_size(PyObject *self, PyObject *args) {
    (void)self;
    long long n, threads;
    if (!PyArg_ParseTuple(args, "LL", &n, &threads)) return NULL;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    return PyLong_FromLongLong(scratch_size(n, threads < 1 ? 1 : threads));
}

static PyMethodDef methods[] = {
    {"pool", py_pool, METH_VARARGS,
     "pool(ids, offsets, features, batch, weights, rows, dim, out, threads) -> the ids "
     "outside [0, rows) (then nothing is read or written); else writes out[batch][features "
     "dim], each bag's sum of rows. Addresses of int64 ids and offsets (feature-major bags), "
     "float32 weights and out."},
    {"update", py_update, METH_VARARGS,
     "update(ids, offsets, features, batch, grad, weights, state, rows, dim, lr, eps, slot, "
     "scratch, scratch_len, threads): row-wise Adagrad on the rows the bags read, from the "
     "gradient of pool's out, grad[batch][features dim]. slot: int32[rows], all -1 (left "
     "so); scratch: int32[scratch_len], at least scratch_size(ids, threads). The ids must be "
     "in [0, rows) (pool checked them)."},
    {"scratch_size", py_scratch_size, METH_VARARGS,
     "scratch_size(ids, threads) -> the int32 scratch update needs for a batch of `ids` ids."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_table_rows",
    "One table's sum-pooled lookup and fused row-wise Adagrad update on CPU.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__table_rows(void) { return PyModule_Create(&module); }
