/* The kernels of _dot_interaction.c for one instruction set, included once per set with
 * LANES (examples per tile: floats per register), RB x CB (register blocks), KC (the
 * backward's columns a vector outside the blocks), KERNEL(name) (the set's names) and the
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

/* Lanes src[0..width) into columns [0, width) of rows 0 .. m of `dst`, LANES at a time. */
static inline void KERNEL(scatter_columns)(const lanes_t *src, int64_t width, float *dst,
                                           int64_t stride, int64_t m) {
    for (int64_t c = 0; c < width; c += LANES)
        KERNEL(scatter_block)(src + c, width - c < LANES ? width - c : LANES, dst + c, stride, m);
}

/* x_tile[v d + k] = vector v's column k of examples b0 .. b0 + LANES - 1 (0 past the batch). */
static inline void KERNEL(load_tile)(const Work *w, int64_t b0, int64_t m) {
    lanes_t *x = (lanes_t *)w->x_tile;
    KERNEL(gather_columns)(w->dense, w->dense_stride, b0, m, w->d, x);
    KERNEL(gather_columns)(w->vectors, w->vectors_stride, b0, m, (w->n - 1) * w->d, x + w->d);
}

/* Pairs (i, j) of vector i with j in [jlo, jhi), i < jlo: JB at a time sharing the loads
 * of vector i. */
static inline void KERNEL(pair_row)(const lanes_t *x, int64_t n, int64_t d, int64_t i,
                                    int64_t jlo, int64_t jhi, lanes_t *pv) {
    const lanes_t *xi = x + i * d;
    const int64_t base = row_start(n, i); /* pair (i, j) is pv[base + j] */
    int64_t j = jlo;
    for (; j + JB <= jhi; j += JB) {
        lanes_t a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        const lanes_t *x0 = x + j * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
        for (int64_t k = 0; k < d; ++k) {
            const lanes_t v = xi[k];
            a0 += v * x0[k];
            a1 += v * x1[k];
            a2 += v * x2[k];
            a3 += v * x3[k];
        }
        pv[base + j] = a0;
        pv[base + j + 1] = a1;
        pv[base + j + 2] = a2;
        pv[base + j + 3] = a3;
    }
    for (; j < jhi; ++j) {
        lanes_t a = {0};
        const lanes_t *xj = x + j * d;
        for (int64_t k = 0; k < d; ++k) a += xi[k] * xj[k];
        pv[base + j] = a;
    }
}

/* Pairs (i0 + a, j0 + b), a < RB, b < CB, j0 >= i0, j0 + b > i0 + a: RB x CB sums in
 * registers, each loaded vector serving RB or CB of them (the tile outgrows L1 at the
 * default job's 40 vectors: loads, not multiply-adds, would set the pace). A block on the
 * diagonal (j0 = i0) computes the products below it too and keeps only the pairs: cheaper
 * than one chain of dependent multiply-adds per pair. */
static inline void KERNEL(pair_block)(const lanes_t *x, int64_t n, int64_t d, int64_t i0,
                                      int64_t j0, lanes_t *pv) {
    lanes_t acc[RB][CB];
    for (int a = 0; a < RB; ++a)
        for (int b = 0; b < CB; ++b) acc[a][b] = (lanes_t){0};
    for (int64_t k = 0; k < d; ++k) {
        lanes_t xj[CB];
        for (int b = 0; b < CB; ++b) xj[b] = x[(j0 + b) * d + k];
        for (int a = 0; a < RB; ++a) {
            const lanes_t xi = x[(i0 + a) * d + k];
            for (int b = 0; b < CB; ++b) acc[a][b] += xi * xj[b];
        }
    }
    for (int a = 0; a < RB; ++a) {
        const int64_t base = row_start(n, i0 + a);
        for (int b = 0; b < CB; ++b)
            if (j0 + b > i0 + a) pv[base + j0 + b] = acc[a][b];
    }
}

static void KERNEL(forward_range)(const Work *w) {
    const int64_t n = w->n, d = w->d, pairs = n * (n - 1) / 2;
    const lanes_t *x = (const lanes_t *)w->x_tile;
    lanes_t *pv = (lanes_t *)w->pair_tile;
    for (int64_t b0 = w->lo; b0 < w->hi; b0 += LANES) {
        const int64_t m = w->hi - b0 < LANES ? w->hi - b0 : LANES;
        KERNEL(load_tile)(w, b0, m);
        int64_t i0 = 0;
        for (; i0 + RB <= n; i0 += RB) {
            int64_t j0 = i0;
            for (; j0 + CB <= n; j0 += CB) KERNEL(pair_block)(x, n, d, i0, j0, pv);
            for (int64_t i = i0; i < i0 + RB; ++i) /* past the last column block */
                KERNEL(pair_row)(x, n, d, i, i + 1 > j0 ? i + 1 : j0, n, pv);
        }
        for (; i0 < n; ++i0) KERNEL(pair_row)(x, n, d, i0, i0 + 1, n, pv);
        float *out = w->out + b0 * w->out_stride;
        for (int64_t l = 0; l < m; ++l)
            memcpy(out + l * w->out_stride, w->dense + (b0 + l) * w->dense_stride,
                   (size_t)d * sizeof(float));
        for (int64_t q = 0; q < pairs; q += LANES)
            KERNEL(scatter_block)(pv + q, pairs - q < LANES ? pairs - q : LANES, out + d + q,
                          w->out_stride, m);
    }
}

/* dx[i][kc + k] = sum over j != i of g(i, j) x_j[kc + k], k < kw: one vector's columns. */
static inline void KERNEL(pair_grad_columns)(const lanes_t *x, const lanes_t *g, int64_t n,
                                             int64_t d, int64_t i, int64_t kc, int64_t kw,
                                             lanes_t *dx) {
    lanes_t *out = dx + i * d + kc;
    if (kw == KC) {
        lanes_t acc[KC] = {{0}};
        for (int64_t j = 0; j < n; ++j) {
            if (j == i) continue;
            const lanes_t gij = g[pair_index(n, i, j)];
            const lanes_t *xj = x + j * d + kc;
            for (int k = 0; k < KC; ++k) acc[k] += gij * xj[k];
        }
        memcpy(out, acc, sizeof acc);
        return;
    }
    for (int64_t k = 0; k < kw; ++k) out[k] = (lanes_t){0};
    for (int64_t j = 0; j < n; ++j) {
        if (j == i) continue;
        const lanes_t gij = g[pair_index(n, i, j)];
        const lanes_t *xj = x + j * d + kc;
        for (int64_t k = 0; k < kw; ++k) out[k] += gij * xj[k];
    }
}

/* The same for vectors i0 .. i0 + RB - 1 and columns kc .. kc + CB - 1 at once, j in the
 * same order (so the same sums): g(i, j) sits at row_start(j) + i for j < i and at
 * row_start(i) + j for j > i. */
static inline void KERNEL(pair_grad_block)(const lanes_t *x, const lanes_t *g, int64_t n,
                                           int64_t d, int64_t i0, int64_t kc, lanes_t *dx) {
    lanes_t acc[RB][CB];
    for (int a = 0; a < RB; ++a)
        for (int b = 0; b < CB; ++b) acc[a][b] = (lanes_t){0};
    int64_t j = 0;
    for (; j < i0; ++j) {
        const lanes_t *gj = g + (row_start(n, j) + i0), *xj = x + j * d + kc;
        for (int a = 0; a < RB; ++a) {
            const lanes_t gij = gj[a];
            for (int b = 0; b < CB; ++b) acc[a][b] += gij * xj[b];
        }
    }
    for (; j < i0 + RB; ++j) {
        const lanes_t *xj = x + j * d + kc;
        for (int a = 0; a < RB; ++a) {
            if (i0 + a == j) continue;
            const lanes_t gij = g[pair_index(n, i0 + a, j)];
            for (int b = 0; b < CB; ++b) acc[a][b] += gij * xj[b];
        }
    }
    for (; j < n; ++j) {
        const lanes_t *xj = x + j * d + kc;
        for (int a = 0; a < RB; ++a) {
            const lanes_t gij = g[row_start(n, i0 + a) + j];
            for (int b = 0; b < CB; ++b) acc[a][b] += gij * xj[b];
        }
    }
    for (int a = 0; a < RB; ++a)
        for (int b = 0; b < CB; ++b) dx[(i0 + a) * d + kc + b] = acc[a][b];
}

static void KERNEL(backward_range)(const Work *w) {
    const int64_t n = w->n, d = w->d, pairs = n * (n - 1) / 2;
    const lanes_t *x = (const lanes_t *)w->x_tile;
    lanes_t *g = (lanes_t *)w->pair_tile, *dx = (lanes_t *)w->dx_tile;
    for (int64_t b0 = w->lo; b0 < w->hi; b0 += LANES) {
        const int64_t m = w->hi - b0 < LANES ? w->hi - b0 : LANES;
        KERNEL(load_tile)(w, b0, m);
        KERNEL(gather_columns)(w->grad + d, w->grad_stride, b0, m, pairs, g);
        int64_t i0 = 0;
        for (; i0 + RB <= n; i0 += RB) {
            int64_t kc = 0;
            for (; kc + CB <= d; kc += CB) KERNEL(pair_grad_block)(x, g, n, d, i0, kc, dx);
            if (kc < d)
                for (int64_t i = i0; i < i0 + RB; ++i)
                    KERNEL(pair_grad_columns)(x, g, n, d, i, kc, d - kc, dx);
        }
        for (; i0 < n; ++i0)
            for (int64_t kc = 0; kc < d; kc += KC)
                KERNEL(pair_grad_columns)(x, g, n, d, i0, kc, d - kc < KC ? d - kc : KC, dx);
        /* the dense vector's gradient: its own columns plus the pairs' */
        for (int64_t kc = 0; kc < d; kc += LANES) {
            const int64_t kw = d - kc < LANES ? d - kc : LANES;
            lanes_t own[LANES];
            KERNEL(gather_block)(w->grad + b0 * w->grad_stride + kc, w->grad_stride, m, kw, own);
            for (int64_t k = 0; k < kw; ++k) dx[kc + k] += own[k];
        }
        KERNEL(scatter_columns)(dx, d, w->d_dense + b0 * w->d_dense_stride, w->d_dense_stride, m);
        KERNEL(scatter_columns)(dx + d, (n - 1) * d, w->d_vectors + b0 * w->d_vectors_stride,
                                w->d_vectors_stride, m);
    }
}

#undef MASK
#undef mask_t
#undef lanes_t
