/* Sum-pooled lookups of an embedding kernel's tables on CPU, and their backward fused with the
 * row-wise Adagrad update, in place (dist_train/train/table_rows.py).
 *
 * Float32 rows and row-wise Adagrad's state, every table's in one buffer each (at the
 * table's offsets, as FBGEMM's kernel keeps them); the bags of `features` features over a
 * batch of `batch` examples, feature-major as a KeyedJaggedTensor holds them: bag i = f batch
 * + b reads ids[offsets[i] .. offsets[i + 1]) of its feature's table. Each table is read by a
 * run of consecutive features: one (a table per feature) or many (a table the features
 * share). Its pooled vector lands in row b of the output (and is read from the gradient's)
 * at the feature's column, as the model reads it, with no pass to put the bags
 * example-major first. The update is FBGEMM's exact row-wise Adagrad (no weight decay, no
 * clipping): per distinct row r of the batch, g = the sum of the gradients of the bags that
 * read it (once per read), state[r] += mean(g^2), w[r] -= lr g / (sqrt(state[r]) + eps).
 *
 * Why not FBGEMM's CPU backward: it sorts the batch's ids (csr2csc) before its update, and
 * each read of a pooled gradient and of a row then waits on memory. Here the update passes
 * over the bags in order, the gradients read as they lie, adding each read's gradient to its
 * row's sum (a slot per row, a buffer of -1s the caller keeps, left as found, says where the
 * sum is); then it updates each row once, prefetching rows ahead. With several threads each
 * owns a range of rows, and the reads are first dealt to their rows' owners, each thread
 * dealing a run of the bags. A row's gradients add up in bag order, whatever the thread
 * count: the result does not depend on it.
 *
 * The work runs on torch's OpenMP threads, as _dot_interaction.c's does, with the GIL
 * released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define AHEAD 16      /* reads prefetched this many ids ahead */
#define GRAD_AHEAD 8  /* the update: gradients prefetched this many examples ahead */
#define ROWS_AHEAD 8  /* ... and rows this many rows ahead */
#define MAX_THREADS 256
/* tables of fewer reads a batch keep update_owned's one pass: dealing costs two more passes
 * and barriers (measured: the step of the default job's hashing_trick tables, 2,048 to
 * 9,000-odd reads each, was 4% slower dealt on one rank of two threads) */
#define DEAL_MIN_READS 16384
#define MAX_DIM 1024 /* the lookup keeps a bag's sum on the stack */
/* the row loops vectorized for the widest instruction set the CPU has, picked at load */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTORIZED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTORIZED
#endif
#define BLOCK 64 /* examples pooled together: their rows of out, 64 x stride floats */

/* A kernel's tables, each read by a run of consecutive features (the bags of feature f are
 * f batch .. (f + 1) batch - 1): where its rows and state start in the kernel's weights and
 * state, its rows and dim, its first feature and number of features, and the column of the
 * output (and gradient) row its first feature's vector starts at (the next feature's follows
 * it, dim floats on). One int64[TABLE_FIELDS] per table. */
#define TABLE_FIELDS 7
typedef struct {
    int64_t weight_offset, state_offset, rows, dim, first_feature, features, column;
} Table;

static Table table_at(const int64_t *info, int64_t t) {
    const int64_t *f = info + t * TABLE_FIELDS;
    return (Table){f[0], f[1], f[2], f[3], f[4], f[5], f[6]};
}

/* The ids outside [0, rows) among ids[lo .. hi). */
static int64_t count_outside(const int64_t *ids, int64_t lo, int64_t hi, int64_t rows) {
    int64_t outside = 0;
    for (int64_t p = lo; p < hi; ++p) outside += (uint64_t)ids[p] >= (uint64_t)rows;
    return outside;
}

/* Bag b of `bag`'s sum of rows into o. Inlined with dim a constant where it is a common
 * width (the loops then unroll into whole registers). */
static inline __attribute__((always_inline)) void pool_bag(const int64_t *ids,
                                                           const int64_t *bag, int64_t b,
                                                           int64_t last, const float *w,
                                                           const int64_t dim, float *o) {
    float acc[dim];
    memset(acc, 0, sizeof acc);
    for (int64_t p = bag[b]; p < bag[b + 1]; ++p) {
        if (p + AHEAD < last) __builtin_prefetch(w + ids[p + AHEAD] * dim);
        const float *row = w + ids[p] * dim;
        for (int64_t d = 0; d < dim; ++d) acc[d] += row[d];
    }
    memcpy(o, acc, sizeof acc);
}

/* Pooled vectors of examples [lo, hi): row b of out (stride floats apart) holds, for each
 * table's k-th feature f, the sum of bag f batch + b's rows at column + k dim. A block of
 * examples at a time, feature by feature: the block's rows of out stay in cache while every
 * feature writes its columns (feature-major bags written straight into the example-major
 * out would miss the cache on every bag). */
VECTORIZED static void pool_examples(const int64_t *ids, const int64_t *offsets,
                                     const int64_t *info, int64_t tables, int64_t batch,
                                     int64_t lo, int64_t hi, const float *weights, float *out,
                                     int64_t stride) {
    for (int64_t b0 = lo; b0 < hi; b0 += BLOCK) {
        const int64_t b1 = b0 + BLOCK < hi ? b0 + BLOCK : hi;
        for (int64_t t = 0; t < tables; ++t) {
            const Table tb = table_at(info, t);
            const float *w = weights + tb.weight_offset;
            const int64_t dim = tb.dim;
            for (int64_t k = 0; k < tb.features; ++k) {
                const int64_t *bag = offsets + (tb.first_feature + k) * batch;
                const int64_t last = bag[b1];
                float *o = out + tb.column + k * dim;
                for (int64_t b = b0; b < b1; ++b) {
                    switch (dim) {
                        case 16: pool_bag(ids, bag, b, last, w, 16, o + b * stride); break;
                        case 32: pool_bag(ids, bag, b, last, w, 32, o + b * stride); break;
                        case 64: pool_bag(ids, bag, b, last, w, 64, o + b * stride); break;
                        default: pool_bag(ids, bag, b, last, w, dim, o + b * stride);
                    }
                }
            }
        }
    }
}

/* The update's scratch, in 4-byte words, per thread: room for n distinct rows and a gradient
 * sum of up to dim floats for each (n (1 + dim)). */
static int64_t thread_scratch(int64_t n, int64_t dim) { return n * (1 + dim); }

/* ... and, with more than one thread, shared by them: each of `ids` reads' row and bag, dealt
 * to the thread owning the row (2 ids), and how many each thread's share of the bags deals
 * to each owner (threads^2). */
static int64_t dealt_scratch(int64_t ids, int64_t threads) {
    return threads > 1 ? 2 * ids + threads * threads : 0;
}

/* Thread t of `threads` owns a table's rows [first_owned(rows, t, threads),
 * first_owned(rows, t + 1, threads)): runs of equal length, to one row. */
static inline int64_t first_owned(int64_t rows, int64_t t, int64_t threads) {
    return rows * t / threads;
}

/* A thread's distinct rows of a table, at most: the fewer of the batch's `ids` and the rows a
 * thread owns of the largest table (`max_rows` / threads, rounded up). */
static int64_t distinct_bound(int64_t ids, int64_t max_rows, int64_t threads) {
    const int64_t owned = (max_rows + threads - 1) / threads;
    return ids < owned ? ids : owned;
}

/* The update's scratch in words for a batch of `ids` ids, at most `distinct` rows a thread
 * (distinct_bound) of at most `dim` floats: the threads' own (into *per_thread, where the
 * dealt reads' part starts), then the dealt reads'. */
static int64_t update_scratch(int64_t ids, int64_t distinct, int64_t threads, int64_t dim,
                              int64_t *per_thread) {
    *per_thread = threads * thread_scratch(distinct, dim);
    return *per_thread + dealt_scratch(ids, threads);
}

typedef struct {
    int32_t *distinct; /* the thread's distinct rows, in order of first read */
    float *sums;       /* distinct row q's summed gradient: sums[q dim .. (q + 1) dim) */
} Scratch;

/* Row-wise Adagrad on row r of w (dim floats) and state from its summed gradient g. */
static inline void adagrad_row(float *w, float *state, int64_t r, const float *g, float lr,
                               float eps, int64_t dim) {
    float squares = 0.0f;
    for (int64_t d = 0; d < dim; ++d) squares += g[d] * g[d];
    const float h = state[r] + squares / (float)dim;
    state[r] = h;
    const float step = lr / (sqrtf(h) + eps);
    float *row = w + r * dim;
    for (int64_t d = 0; d < dim; ++d) row[d] -= step * g[d];
}

/* One read of row r: its gradient gb added to the row's sum in s (a new distinct row's sum
 * starts at zero; slot[r] says where it is). */
static inline void add_read(int64_t r, const float *gb, int32_t *slot, Scratch *s,
                            int64_t *distinct, int64_t dim) {
    int32_t q = slot[r];
    if (q < 0) {
        q = (int32_t)(*distinct)++;
        slot[r] = q;
        s->distinct[q] = (int32_t)r;
        memset(s->sums + q * dim, 0, (size_t)dim * sizeof(float));
    }
    float *g = s->sums + q * dim;
    for (int64_t d = 0; d < dim; ++d) g[d] += gb[d];
}

/* Row-wise Adagrad on each of s's distinct rows from its sum, the slots put back to -1. */
static inline void update_rows(const Scratch *s, int64_t distinct, float *w, float *state,
                               int32_t *slot, float lr, float eps, int64_t dim) {
    for (int64_t q = 0; q < distinct; ++q) {
        if (q + ROWS_AHEAD < distinct) {
            const int64_t ahead = s->distinct[q + ROWS_AHEAD];
            __builtin_prefetch(w + ahead * dim, 1);
            __builtin_prefetch(state + ahead, 1);
        }
        const int64_t r = s->distinct[q];
        slot[r] = -1; /* as found, for the next table or call */
        adagrad_row(w, state, r, s->sums + q * dim, lr, eps, dim);
    }
}

/* Thread t's share of one table's update: the rows it owns (one contiguous range per
 * thread). The bags in order, each read's gradient added to its row's sum (the gradients
 * read as they lie, each row's summed in bag order), then row-wise Adagrad on each row.
 * Unlike the lookup's, this pass ran slower with dim a compile-time constant
 * (docs/performance_log.md, "A rank's per-feature tables in C"). */
VECTORIZED static void update_owned(const int64_t *ids, const int64_t *offsets, Table tb,
                                    int64_t batch, const float *grad, int64_t stride,
                                    float *w, float *state, float lr, float eps, int32_t *slot,
                                    int64_t t, int64_t threads, Scratch *s) {
    const int64_t dim = tb.dim;
    const int64_t *bags = offsets + tb.first_feature * batch;
    const int64_t n = bags[tb.features * batch];
    const int64_t own_lo = first_owned(tb.rows, t, threads);
    const int64_t own_hi = first_owned(tb.rows, t + 1, threads);
    int64_t distinct = 0;
    for (int64_t i = 0, k = 0, b = 0; i < tb.features * batch; ++i) {
        const float *gb = grad + b * stride + tb.column + k * dim;
        if (b + GRAD_AHEAD < batch) { /* the gradient rows lie a stride apart: few a page */
            __builtin_prefetch(gb + GRAD_AHEAD * stride);
            if (dim > 16) __builtin_prefetch(gb + GRAD_AHEAD * stride + 16);
        }
        if (++b == batch) b = 0, ++k;
        for (int64_t p = bags[i]; p < bags[i + 1]; ++p) {
            if (p + AHEAD < n) __builtin_prefetch(slot + ids[p + AHEAD]);
            const int64_t r = ids[p];
            if (r >= own_lo && r < own_hi) add_read(r, gb, slot, s, &distinct, dim);
        }
    }
    update_rows(s, distinct, w, state, slot, lr, eps, dim);
}

/* A table of many reads (DEAL_MIN_READS): each thread deals the reads of a run of the bags
 * (split by ids) to their rows' owners, then updates the rows it owns from the reads dealt
 * to it, the runs in order, so each row's gradients still add up in bag order: the rows
 * come out as update_owned's, to the bit. Each read is scanned once, where update_owned's
 * threads each scan them all: at two threads that was slower than one thread alone on the
 * default job's unified table (docs/performance_log.md, "The update's reads dealt to their rows'
 * owners"). */
typedef struct {
    int64_t threads;
    int64_t bound[MAX_THREADS + 1]; /* owner t's rows: [bound[t], bound[t + 1]) */
    int64_t first[MAX_THREADS + 1]; /* thread t scans bags [first[t], first[t + 1]) */
    int32_t *rows, *bags;           /* the dealt reads: row and bag index */
    int32_t *counts;                /* [scanner][owner]: reads dealt, then where they start */
} Deal;

/* The thread owning row r: branch-free, since the rows come in no order (a binary search's
 * branch mispredicted about every other read, 4 ns a read against 1 at two threads). */
static inline int64_t owner_of(const int64_t *bound, int64_t threads, int64_t r) {
    int64_t owner = 0;
    for (int64_t t = 1; t < threads; ++t) owner += bound[t] <= r;
    return owner;
}

/* Scanner t's count of its reads per owner, into counts[t][..]. */
static void count_reads(const int64_t *ids, const int64_t *bags, Deal *deal, int64_t t) {
    /* counted here and copied out: the scanners' counts share cache lines */
    int32_t at[MAX_THREADS] = {0};
    const int64_t threads = deal->threads, end = bags[deal->first[t + 1]];
    for (int64_t p = bags[deal->first[t]]; p < end; ++p)
        ++at[owner_of(deal->bound, threads, ids[p])];
    memcpy(deal->counts + t * threads, at, (size_t)threads * sizeof(int32_t));
}

/* Scanner t's reads, each's row and bag written at its owner's next place (counts[t][..]:
 * where they start, left where they end). */
static void deal_reads(const int64_t *ids, const int64_t *bags, Deal *deal, int64_t t) {
    int32_t at[MAX_THREADS];
    const int64_t threads = deal->threads;
    int32_t *out = deal->counts + t * threads;
    memcpy(at, out, (size_t)threads * sizeof(int32_t));
    for (int64_t i = deal->first[t]; i < deal->first[t + 1]; ++i)
        for (int64_t p = bags[i]; p < bags[i + 1]; ++p) {
            const int64_t o = owner_of(deal->bound, threads, ids[p]);
            deal->rows[at[o]] = (int32_t)ids[p];
            deal->bags[at[o]++] = (int32_t)i;
        }
    memcpy(out, at, (size_t)threads * sizeof(int32_t));
}

/* counts[scanner][owner] from how many to where they start: owner by owner, the scanners in
 * order, so that an owner's reads lie in bag order. */
static void deal_starts(Deal *deal) {
    int32_t next = 0;
    for (int64_t o = 0; o < deal->threads; ++o)
        for (int64_t t = 0; t < deal->threads; ++t) {
            int32_t *c = deal->counts + t * deal->threads + o;
            const int32_t count = *c;
            *c = next;
            next += count;
        }
}

/* The owners' rows (equal runs) and the scanners' bags (runs of about equal ids) of a table of
 * `rows` rows read by bags[0 .. nbags). */
static void deal_plan(Deal *deal, const int64_t *bags, int64_t nbags, int64_t rows) {
    const int64_t threads = deal->threads, reads = bags[nbags] - bags[0];
    for (int64_t t = 0; t <= threads; ++t) deal->bound[t] = first_owned(rows, t, threads);
    deal->first[0] = 0;
    for (int64_t t = 1; t < threads; ++t) { /* the first bag from this scanner's first read */
        const int64_t target = bags[0] + reads * t / threads;
        int64_t lo = deal->first[t - 1], hi = nbags;
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (bags[mid] < target) lo = mid + 1; else hi = mid;
        }
        deal->first[t] = lo;
    }
    deal->first[threads] = nbags;
}

VECTORIZED static void update_dealt(const Deal *deal, int64_t o, Table tb, int64_t batch,
                                    const float *grad, int64_t stride, float *w, float *state,
                                    float lr, float eps, int32_t *slot, Scratch *s) {
    const int64_t dim = tb.dim, threads = deal->threads;
    /* after deal_reads, counts[t][o] is where scanner t's reads for owner o end: for the
       last scanner, where owner o's reads end and owner o + 1's start */
    const int64_t lo = o == 0 ? 0 : deal->counts[(threads - 1) * threads + o - 1];
    const int64_t hi = deal->counts[(threads - 1) * threads + o];
    const int32_t *rows = deal->rows, *bag = deal->bags;
    int64_t distinct = 0, k = 0, k_first = 0; /* bag i is example i - k_first of feature k */
    for (int64_t e = lo; e < hi; ++e) {
        if (e + AHEAD < hi) __builtin_prefetch(slot + rows[e + AHEAD]);
        if (e + GRAD_AHEAD < hi && bag[e + GRAD_AHEAD] < k_first + batch)
            __builtin_prefetch(grad + (bag[e + GRAD_AHEAD] - k_first) * stride + tb.column +
                               k * dim);
        while (bag[e] >= k_first + batch) ++k, k_first += batch;
        add_read(rows[e], grad + (bag[e] - k_first) * stride + tb.column + k * dim, slot, s,
                 &distinct, dim);
    }
    update_rows(s, distinct, w, state, slot, lr, eps, dim);
}

/* NULL, or a ValueError's message if the tables' fields cannot be what the kernels index by:
 * the caller vouches for the buffers behind them. */
static const char *bad_tables(const int64_t *info, int64_t tables, int64_t features,
                              int64_t stride, int64_t max_rows) {
    int64_t next_feature = 0;
    for (int64_t t = 0; t < tables; ++t) {
        const Table tb = table_at(info, t);
        if (tb.rows < 1 || tb.rows > max_rows || tb.dim < 1 || tb.dim > MAX_DIM)
            return "a table's rows or dim out of range";
        if (tb.first_feature != next_feature || tb.features < 1)
            return "tables must be read by consecutive runs of features, in order";
        if (tb.weight_offset < 0 || tb.state_offset < 0 || tb.column < 0 ||
            tb.column + tb.features * tb.dim > stride)
            return "a table's offsets or columns out of range";
        next_feature += tb.features;
    }
    return next_feature == features ? NULL : "the tables' features do not add up";
}

/* NULL if the bags' offsets[0 .. bags] start at 0, never fall and end at `ids` (the ids'
 * count), so that every bag's ids lie inside them; else what is wrong. A caller-built
 * KeyedJaggedTensor may hold any offsets: this keeps them from reading past the ids. */
static const char *bad_offsets(const int64_t *offsets, int64_t bags, int64_t ids) {
    if (offsets[0] != 0) return "the bags' offsets do not start at 0";
    for (int64_t b = 0; b < bags; ++b)
        if (offsets[b + 1] < offsets[b]) return "the bags' offsets fall";
    return offsets[bags] == ids ? NULL : "the bags' offsets do not end at the ids' count";
}

static PyObject *py_pool(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ids_addr, offsets_addr, info_addr, w_addr, out_addr;
    long long ids_len, tables, features, batch, stride, threads;
    if (!PyArg_ParseTuple(args, "KLKKLLLKKLL", &ids_addr, &ids_len, &offsets_addr, &info_addr,
                          &tables, &features, &batch, &w_addr, &out_addr, &stride, &threads))
        return NULL;
    const int64_t *info = (const int64_t *)(uintptr_t)info_addr;
    const int64_t *ids = (const int64_t *)(uintptr_t)ids_addr;
    const int64_t *offsets = (const int64_t *)(uintptr_t)offsets_addr;
    const char *bad = tables < 1 || batch < 0 || threads < 1
                          ? "need tables >= 1, batch >= 0 and threads >= 1"
                          : bad_tables(info, tables, features, stride, INT64_MAX);
    if (bad == NULL) bad = bad_offsets(offsets, features * batch, ids_len);
    if (bad != NULL) {
        PyErr_Format(PyExc_ValueError, "_table_rows.pool: %s", bad);
        return NULL;
    }
    const float *w = (const float *)(uintptr_t)w_addr;
    float *out = (float *)(uintptr_t)out_addr;
    if (threads > batch) threads = batch > 0 ? batch : 1;
    int64_t outside = 0;
    Py_BEGIN_ALLOW_THREADS
    /* checked before any read: a bad id must not read outside its table */
    for (int64_t t = 0; t < tables; ++t) {
        const Table tb = table_at(info, t);
        const int64_t *bags = offsets + tb.first_feature * batch;
        outside += count_outside(ids, bags[0], bags[tb.features * batch], tb.rows);
    }
    if (outside == 0 && batch > 0) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
        for (long long t = 0; t < threads; ++t)
            pool_examples(ids, offsets, info, tables, batch, batch * t / threads,
                          batch * (t + 1) / threads, w, out, stride);
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(outside);
}

/* Thread t's scratch within `scratch`, for n distinct rows of up to dim floats. */
static Scratch carve(int32_t *scratch, int64_t n, int64_t dim, int t) {
    int32_t *base = scratch + (int64_t)t * thread_scratch(n, dim);
    return (Scratch){base, (float *)(base + n)};
}

static PyObject *py_update(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ids_addr, offsets_addr, info_addr, grad_addr, w_addr, state_addr;
    unsigned long long slot_addr, scratch_addr;
    long long ids_len, tables, features, batch, stride, slot_len, threads, scratch_len;
    float lr, eps;
    if (!PyArg_ParseTuple(args, "KLKKLLLKLKKffKLKLL", &ids_addr, &ids_len, &offsets_addr,
                          &info_addr, &tables, &features, &batch, &grad_addr, &stride, &w_addr,
                          &state_addr, &lr, &eps, &slot_addr, &slot_len, &scratch_addr,
                          &scratch_len, &threads))
        return NULL;
    const int64_t *info = (const int64_t *)(uintptr_t)info_addr;
    const int64_t *ids = (const int64_t *)(uintptr_t)ids_addr;
    const int64_t *offsets = (const int64_t *)(uintptr_t)offsets_addr;
    const char *bad = tables < 1 || batch < 0 || threads < 1
                          ? "need tables >= 1, batch >= 0 and threads >= 1"
                          : bad_tables(info, tables, features, stride, slot_len);
    if (bad == NULL) bad = bad_offsets(offsets, features * batch, ids_len);
    if (bad != NULL) {
        PyErr_Format(PyExc_ValueError, "_table_rows.update: %s (slot: %lld rows)", bad,
                     slot_len);
        return NULL;
    }
    const int64_t n = offsets[features * batch] - offsets[0];
    if (offsets[features * batch] > INT32_MAX || slot_len > INT32_MAX ||
        features * batch > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "_table_rows.update: 2^31 ids, rows or bags or more");
        return NULL;
    }
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    int64_t max_dim = 1, max_rows = 1;
    for (int64_t t = 0; t < tables; ++t) {
        const Table tb = table_at(info, t);
        if (tb.dim > max_dim) max_dim = tb.dim;
        if (tb.rows > max_rows) max_rows = tb.rows;
    }
    const int64_t distinct_max = distinct_bound(n, max_rows, threads);
    int64_t per_thread;
    const int64_t needed = update_scratch(n, distinct_max, threads, max_dim, &per_thread);
    if (scratch_len < needed) {
        PyErr_Format(PyExc_ValueError,
                     "_table_rows.update: scratch of %lld words, %lld needed (scratch_size)",
                     scratch_len, (long long)needed);
        return NULL;
    }
    int32_t *scratch = (int32_t *)(uintptr_t)scratch_addr;
    const float *grad = (const float *)(uintptr_t)grad_addr;
    float *weights = (float *)(uintptr_t)w_addr, *state = (float *)(uintptr_t)state_addr;
    int32_t *slot = (int32_t *)(uintptr_t)slot_addr;
    int32_t *dealt = scratch + per_thread;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < tables; ++i) {
        const Table tb = table_at(info, i);
        const int64_t used = threads > tb.rows ? tb.rows : threads;
        float *w = weights + tb.weight_offset, *st = state + tb.state_offset;
        const int64_t *bags = offsets + tb.first_feature * batch;
        if (used == 1 || bags[tb.features * batch] - bags[0] < DEAL_MIN_READS) {
#pragma omp parallel for num_threads(used) schedule(static, 1)
            for (long long t = 0; t < used; ++t) {
                Scratch own = carve(scratch, distinct_max, max_dim, (int)t);
                update_owned(ids, offsets, tb, batch, grad, stride, w, st, lr, eps, slot, t,
                             used, &own);
            }
            continue;
        }
        Deal deal = {.threads = used, .rows = dealt, .bags = dealt + n, .counts = dealt + 2 * n};
        deal_plan(&deal, bags, tb.features * batch, tb.rows);
#pragma omp parallel num_threads(used)
        {
#pragma omp for schedule(static, 1)
            for (long long t = 0; t < used; ++t) count_reads(ids, bags, &deal, t);
#pragma omp single
            deal_starts(&deal);
#pragma omp for schedule(static, 1)
            for (long long t = 0; t < used; ++t) deal_reads(ids, bags, &deal, t);
#pragma omp for schedule(static, 1)
            for (long long t = 0; t < used; ++t) {
                Scratch own = carve(scratch, distinct_max, max_dim, (int)t);
                update_dealt(&deal, t, tb, batch, grad, stride, w, st, lr, eps, slot, &own);
            }
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_scratch_size(PyObject *self, PyObject *args) {
    (void)self;
    long long ids, max_rows, threads, dim;
    if (!PyArg_ParseTuple(args, "LLLL", &ids, &max_rows, &threads, &dim)) return NULL;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    const int64_t distinct = distinct_bound(ids, max_rows < 1 ? 1 : max_rows, threads);
    int64_t per_thread;
    return PyLong_FromLongLong(
        update_scratch(ids, distinct, threads, dim < 1 ? 1 : dim, &per_thread));
}

static PyMethodDef methods[] = {
    {"pool", py_pool, METH_VARARGS,
     "pool(ids, offsets, tables_info, tables, features, batch, weights, out, stride, threads) "
     "-> the ids outside their table's rows (then nothing is read or written); else writes "
     "each bag's sum of rows into out[batch][stride] at its table's column. Addresses of "
     "int64 ids and offsets (feature-major bags), int64 tables_info[tables][7] (weight "
     "offset, state offset, rows, dim, first feature, features, column), float32 weights and "
     "out."},
    {"update", py_update, METH_VARARGS,
     "update(ids, offsets, tables_info, tables, features, batch, grad, stride, weights, state, "
     "lr, eps, slot, slot_len, scratch, scratch_len, threads): row-wise Adagrad on the rows "
     "the bags read, from the gradient of pool's out, grad[batch][stride]. slot: "
     "int32[slot_len], at least every table's rows, all -1 (left so); scratch: "
     "int32[scratch_len], at least scratch_size(ids, largest table's rows, threads, widest "
     "dim). The ids must be in their tables' rows (pool checked them)."},
    {"scratch_size", py_scratch_size, METH_VARARGS,
     "scratch_size(ids, max_rows, threads, dim) -> the 4-byte words of scratch update needs "
     "for a batch of `ids` ids over tables of at most `max_rows` rows of at most `dim` "
     "floats."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_table_rows",
    "Sum-pooled lookups of a kernel's tables and their fused row-wise Adagrad update on CPU.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__table_rows(void) {
    PyObject *m = PyModule_Create(&module);
    /* for tests that mean to take the dealt path */
    if (m != NULL && PyModule_AddIntConstant(m, "DEAL_MIN_READS", DEAL_MIN_READS) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
