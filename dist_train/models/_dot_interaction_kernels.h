/* The kernels of _dot_interaction.c for one instruction set, included once per set with
 * LANES (examples per tile: floats per register), KERNEL(name) (the set's names) and the
 * set's `#pragma GCC target` in force. Tiles hold LANES examples transposed, so that one
 * register holds one value of LANES examples and a pair's dot product is LANES independent
 * sums: no Gram matrix, no gather of its upper triangle, no horizontal adds.
 */

/* LANES floats as one value (and LANES shuffle indices) */
#define lanes_t KERNEL(lanes_t)
#define mask_t KERNEL(mask_t)
typedef float lanes_t __attribute__((vector_size(LANES * sizeof(float))));
typedef int mask_t __attribute__((vector_size(LANES * sizeof(int))));
#define MASK(...) ((mask_t){__VA_ARGS__})

/* r[k][l] <- r[l][k] for a LANES x LANES block, in log2(LANES) rounds of two-register
 * shuffles: round h swaps bit h of the row index with bit h of the column index. */
#define TRANSPOSE_ROUND(h, lo, hi)                                                          \
    for (int a = 0; a < LANES; ++a) {                                                       \
        if (a & (h)) continue;                                                              \
        const lanes_t x = r[a], y = r[a | (h)];                                             \
        r[a] = __builtin_shuffle(x, y, lo);                                                 \
        r[a | (h)] = __builtin_shuffle(x, y, hi);                                           \
    }
static inline void KERNEL(transpose)(lanes_t *r) {
#if LANES == 16
    TRANSPOSE_ROUND(1, MASK(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
                    MASK(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31));
    TRANSPOSE_ROUND(2, MASK(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
                    MASK(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31));
    TRANSPOSE_ROUND(4, MASK(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                    MASK(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31));
    TRANSPOSE_ROUND(8, MASK(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                    MASK(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31));
#elif LANES == 8
    TRANSPOSE_ROUND(1, MASK(0, 8, 2, 10, 4, 12, 6, 14),
                    MASK(1, 9, 3, 11, 5, 13, 7, 15));
    TRANSPOSE_ROUND(2, MASK(0, 1, 8, 9, 4, 5, 12, 13),
                    MASK(2, 3, 10, 11, 6, 7, 14, 15));
    TRANSPOSE_ROUND(4, MASK(0, 1, 2, 3, 8, 9, 10, 11),
                    MASK(4, 5, 6, 7, 12, 13, 14, 15));
#else
#error "LANES must be 8 or 16"
#endif
}
#undef TRANSPOSE_ROUND

/* cols[k][l] = base[l stride + k] for rows l < m (0 past them) and columns k < width. */
static inline void KERNEL(gather_block)(const float *base, int64_t stride, int64_t m, int64_t width,
                                lanes_t *cols) {
    if (width == LANES) {
        lanes_t r[LANES];
        for (int64_t l = 0; l < LANES; ++l) {
            if (l < m)
                memcpy(&r[l], base + l * stride, sizeof(lanes_t));
            else
                r[l] = (lanes_t){0};
        }
        KERNEL(transpose)(r);
        memcpy(cols, r, sizeof r);
        return;
    }
    for (int64_t k = 0; k < width; ++k)
        for (int64_t l = 0; l < LANES; ++l) cols[k][l] = l < m ? base[l * stride + k] : 0.0f;
}

/* base[l stride + k] = cols[k][l] for rows l < m and columns k < width. */
static inline void KERNEL(scatter_block)(const lanes_t *cols, int64_t width, float *base, int64_t stride,
                                 int64_t m) {
    if (width == LANES) {
        lanes_t r[LANES];
        memcpy(r, cols, sizeof r);
        KERNEL(transpose)(r);
        for (int64_t l = 0; l < m; ++l) memcpy(base + l * stride, &r[l], sizeof(lanes_t));
        return;
    }
    for (int64_t l = 0; l < m; ++l)
        for (int64_t k = 0; k < width; ++k) base[l * stride + k] = cols[k][l];
}

/* Columns [0, width) of rows b0 .. b0 + m of `src`, LANES at a time, into lanes dst[0..). */
static inline void KERNEL(gather_columns)(const float *src, int64_t stride, int64_t b0, int64_t m,
                           int64_t width, lanes_t *dst) {
    for (int64_t c = 0; c < width; c += LANES)
        KERNEL(gather_block)(src + b0 * stride + c, stride, m, width - c < LANES ? width - c : LANES,
                     dst + c);
}

/* x_tile[v d + k] = vector v's column k of examples b0 .. b0 + LANES - 1 (0 past the batch). */
static inline void KERNEL(load_tile)(const Work *w, int64_t b0, int64_t m) {
    lanes_t *x = (lanes_t *)w->x_tile;
    KERNEL(gather_columns)(w->dense, w->dense_stride, b0, m, w->d, x);
    KERNEL(gather_columns)(w->vectors, w->vectors_stride, b0, m, (w->n - 1) * w->d, x + w->d);
}

static void KERNEL(forward_range)(const Work *w) {
    const int64_t n = w->n, d = w->d, pairs = n * (n - 1) / 2;
    const lanes_t *x = (const lanes_t *)w->x_tile;
    lanes_t *pv = (lanes_t *)w->pair_tile;
    for (int64_t b0 = w->lo; b0 < w->hi; b0 += LANES) {
        const int64_t m = w->hi - b0 < LANES ? w->hi - b0 : LANES;
        KERNEL(load_tile)(w, b0, m);
        int64_t p = 0;
        for (int64_t i = 0; i < n; ++i) {
            const lanes_t *xi = x + i * d;
            int64_t j = i + 1;
            for (; j + JB <= n; j += JB, p += JB) {
                lanes_t a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                const lanes_t *x0 = x + j * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
                for (int64_t k = 0; k < d; ++k) {
                    const lanes_t v = xi[k];
                    a0 += v * x0[k];
                    a1 += v * x1[k];
                    a2 += v * x2[k];
                    a3 += v * x3[k];
                }
                pv[p] = a0;
                pv[p + 1] = a1;
                pv[p + 2] = a2;
                pv[p + 3] = a3;
            }
            for (; j < n; ++j, ++p) {
                lanes_t a = {0};
                const lanes_t *xj = x + j * d;
                for (int64_t k = 0; k < d; ++k) a += xi[k] * xj[k];
                pv[p] = a;
            }
        }
        float *out = w->out + b0 * w->out_stride;
        for (int64_t l = 0; l < m; ++l)
            memcpy(out + l * w->out_stride, w->dense + (b0 + l) * w->dense_stride,
                   (size_t)d * sizeof(float));
        for (int64_t q = 0; q < pairs; q += LANES)
            KERNEL(scatter_block)(pv + q, pairs - q < LANES ? pairs - q : LANES, out + d + q,
                          w->out_stride, m);
    }
}

/* acc[k] = sum over j != i of g(i, j) x_j[kc + k], k < KC. */
static inline void KERNEL(pair_grad_block)(const lanes_t *x, const lanes_t *g, int64_t n, int64_t d,
                                   int64_t i, int64_t kc, lanes_t *out) {
    lanes_t acc[KC] = {{0}};
    for (int64_t j = 0; j < n; ++j) {
        if (j == i) continue;
        const lanes_t gij = g[pair_index(n, i, j)];
        const lanes_t *xj = x + j * d + kc;
        for (int k = 0; k < KC; ++k) acc[k] += gij * xj[k];
    }
    memcpy(out, acc, sizeof acc);
}

/* The same for the last kw < KC columns. */
static inline void KERNEL(pair_grad_rest)(const lanes_t *x, const lanes_t *g, int64_t n, int64_t d,
                                  int64_t i, int64_t kc, int64_t kw, lanes_t *out) {
    for (int64_t k = 0; k < kw; ++k) out[k] = (lanes_t){0};
    for (int64_t j = 0; j < n; ++j) {
        if (j == i) continue;
        const lanes_t gij = g[pair_index(n, i, j)];
        const lanes_t *xj = x + j * d + kc;
        for (int64_t k = 0; k < kw; ++k) out[k] += gij * xj[k];
    }
}

static void KERNEL(backward_range)(const Work *w) {
    const int64_t n = w->n, d = w->d, pairs = n * (n - 1) / 2;
    const lanes_t *x = (const lanes_t *)w->x_tile;
    lanes_t *g = (lanes_t *)w->pair_tile;
    for (int64_t b0 = w->lo; b0 < w->hi; b0 += LANES) {
        const int64_t m = w->hi - b0 < LANES ? w->hi - b0 : LANES;
        KERNEL(load_tile)(w, b0, m);
        KERNEL(gather_columns)(w->grad + d, w->grad_stride, b0, m, pairs, g);
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t kc = 0; kc < d; kc += KC) {
                const int64_t kw = d - kc < KC ? d - kc : KC;
                lanes_t acc[KC];
                if (kw == KC)
                    KERNEL(pair_grad_block)(x, g, n, d, i, kc, acc);
                else
                    KERNEL(pair_grad_rest)(x, g, n, d, i, kc, kw, acc);
                if (i == 0) { /* the dense vector's gradient: its own columns plus the pairs' */
                    lanes_t own[KC];
                    KERNEL(gather_block)(w->grad + b0 * w->grad_stride + kc, w->grad_stride, m, kw, own);
                    for (int64_t k = 0; k < kw; ++k) acc[k] += own[k];
                    KERNEL(scatter_block)(acc, kw, w->d_dense + b0 * w->d_dense_stride + kc,
                                  w->d_dense_stride, m);
                } else {
                    KERNEL(scatter_block)(acc, kw,
                                  w->d_vectors + b0 * w->d_vectors_stride + (i - 1) * d + kc,
                                  w->d_vectors_stride, m);
                }
            }
        }
    }
}

#undef MASK
#undef mask_t
#undef lanes_t
