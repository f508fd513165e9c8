"""Compiled (numba) loops behind hashing, batch building and the bags' example-major order:
one pass, no temporaries.

All of them live in this one module on purpose: numba's on-disk cache (``cache=True``) does
not notice edits to *other* modules a kernel inlines, so kernels that share helpers must
share a file.

The same arithmetic in numpy took about 25 array passes per value (two fmix64 rounds and a
64-bit modulo); here each value is hashed and reduced in registers, about 1 ns a value on
one core. Results are bit-identical to the definitions in :mod:`dist_train.embedding.hashing`
(the tests check them against plain Python integers).

Range reduction: ``h mod n`` as ``r = h - mulhi(h, m) * n`` with ``m = floor((2**64 - 1) / n)``,
then ``r - n`` if ``r >= n``. Exact: ``2**64 - n * m <= n``, so ``h / n - h * m / 2**64 <=
h / 2**64 < 1`` and the estimated quotient is the true one or one below it. It avoids a
64-bit division per value and vectorizes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

from dist_train.private_folder import private_temp_folder

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB93FE53E4A53)
_LO32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S33 = np.uint64(33)


def _probe() -> None:
    """Nothing: decorated to ask numba whether it can cache this file's kernels."""


def _can_cache() -> bool:
    """Whether numba can cache this file's kernels on disk: in ``NUMBA_CACHE_DIR``, beside
    this file (``__pycache__``) or in the user's cache folder, else in this user's private
    temporary folder, which this points numba at while it decorates them. numba refused to
    decorate (and so this module to import) where it could write none, as a read-only
    install run by a user with no home is (a pod's ``runAsUser``). False where that folder
    is refused too: the kernels then compile in each process."""
    try:
        numba.njit(cache=True)(_probe)
        return True
    except RuntimeError:  # "no locator available"
        pass
    try:
        numba.config.CACHE_DIR = str(private_temp_folder() / "numba")  # type: ignore[attr-defined]
        numba.njit(cache=True)(_probe)
    except (OSError, RuntimeError):
        numba.config.CACHE_DIR = ""  # type: ignore[attr-defined]
        return False
    return True


_NUMBA_CACHE_DIR = numba.config.CACHE_DIR  # type: ignore[attr-defined]
_CACHE = _can_cache()
_jit = numba.njit(cache=_CACHE, nogil=True)
_inline = numba.njit(cache=_CACHE, nogil=True, inline="always")


@_inline
def fmix64(x: np.uint64) -> np.uint64:
    """MurmurHash3's 64-bit finalizer: a bijection with full avalanche."""
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    return x ^ (x >> _S33)


@_inline
def mulhi64(a: np.uint64, b: np.uint64) -> np.uint64:
    """The high 64 bits of the 128-bit product ``a * b``."""
    al, ah, bl, bh = a & _LO32, a >> _S32, b & _LO32, b >> _S32
    hl = ah * bl
    cross = ((al * bl) >> _S32) + (hl & _LO32) + al * bh
    return ah * bh + (hl >> _S32) + (cross >> _S32)


@_inline
def salted(fp: np.uint64, salt: np.uint64, rot: np.uint64) -> np.uint64:
    return fmix64(fmix64(fp ^ salt) + rot)


@_inline
def reduce(h: np.uint64, n: np.uint64, recip: np.uint64) -> np.int64:
    r = h - mulhi64(h, recip) * n
    return np.int64(r - n if r >= n else r)


@_jit
def salted_hash_into(fps, salt, rot, out):  # type: ignore[no-untyped-def]
    s, t = np.uint64(salt), np.uint64(rot)
    for i in range(fps.shape[0]):
        out[i] = salted(fps[i], s, t)


# Decoded rows (dist_train.data.rows): offsets, shuffles, per-key hashing.


@_jit
def fill_offsets(lengths, offsets):  # type: ignore[no-untyped-def]
    total = 0
    for f in range(lengths.shape[0]):
        offsets[f, 0] = total
        for i in range(lengths.shape[1]):
            total += lengths[f, i]
            offsets[f, i + 1] = total


@_jit
def int_ids_into(validity, bit_offset, values, lengths, out):  # type: ignore[no-untyped-def]
    # bag length 1 (0 at a null) and the fingerprint (the id's bits) of each non-null id
    if validity.shape[0] == 0:
        for i in range(values.shape[0]):
            lengths[i] = 1
            out[i] = np.uint64(values[i])
        return
    p = 0
    for i in range(values.shape[0]):
        b = bit_offset + i
        valid = (validity[b >> 3] >> (b & 7)) & 1
        lengths[i] = valid
        if valid:
            out[p] = np.uint64(values[i])
            p += 1


@_jit
def gather_rows(fps, offsets, indices, new_offsets, out):  # type: ignore[no-untyped-def]
    for f in range(offsets.shape[0]):
        for r in range(indices.shape[0]):
            i = indices[r]
            src, dst = offsets[f, i], new_offsets[f, r]
            for j in range(offsets[f, i + 1] - src):
                out[dst + j] = fps[src + j]


@_inline
def _key_rows(src, exact, params, dst):  # type: ignore[no-untyped-def]
    # one key's table rows: its fingerprints as they are (exact) or salted and reduced
    if exact:
        for j in range(src.shape[0]):
            dst[j] = np.int64(src[j])
    else:
        salt, rot, m, q = params[0], params[1], params[2], params[3]
        for j in range(src.shape[0]):
            dst[j] = reduce(salted(src[j], salt, rot), m, q)


@_jit
def key_values_into(fps, starts, ends, key_params, key_exact, out):  # type: ignore[no-untyped-def]
    p = 0
    for k in range(starts.shape[0]):
        src = fps[starts[k] : ends[k]]
        _key_rows(src, key_exact[k], key_params[k], out[p : p + src.shape[0]])
        p += src.shape[0]


@_jit
def kjt_into(
    fps,
    offsets,
    lengths,
    key_feature,
    key_params,
    key_exact,
    values,
    kjt_lengths,
    kjt_offsets,
    per_key,
):  # type: ignore[no-untyped-def]
    """A KJT's values, lengths, offsets and per-key counts, key-major, in one pass: key k
    reads feature ``key_feature[k]``'s bags (``lengths``/``offsets`` [F, n(+1)] into
    ``fps``, views of a row group's)."""
    n = lengths.shape[1]
    p = 0
    for k in range(key_feature.shape[0]):
        f = key_feature[k]
        start, end = offsets[f, 0], offsets[f, n]
        bag_lengths, bag_offsets = lengths[f], offsets[f]
        out_lengths, out_offsets = (
            kjt_lengths[k * n : (k + 1) * n],
            kjt_offsets[k * n : (k + 1) * n],
        )
        shift = p - start
        for i in range(n):
            out_lengths[i] = bag_lengths[i]
            out_offsets[i] = bag_offsets[i] + shift
        per_key[k] = end - start
        _key_rows(fps[start:end], key_exact[k], key_params[k], values[p : p + end - start])
        p += end - start
    kjt_offsets[key_feature.shape[0] * n] = p


# Bags put example-major (dist_train.train.bag_order).


@_jit
def example_major_into(lengths, values, cursor, out_offsets, out_values, bag_of_value):  # type: ignore[no-untyped-def]
    """False (nothing written) where ``lengths`` do not count ``values`` (a negative length,
    or a sum other than their number): a caller-built KJT may hold any, and numba does not
    check bounds."""
    features, batch = lengths.shape
    if _one_value_a_bag(lengths):  # single-valued features: a transpose, read in order
        if features * batch != values.shape[0]:
            return False
        for f in range(features):
            for b in range(batch):
                j = b * features + f
                out_values[j] = values[f * batch + b]
                bag_of_value[f * batch + b] = j
        for j in range(features * batch + 1):
            out_offsets[j] = j
        return True
    # The input is read in its own (feature-major) order and written where each example's
    # values go: one read stream and ``batch`` write cursors, where reading example by
    # example would follow ``features`` streams of lengths and values at once.
    for b in range(batch):
        cursor[b] = 0
    # each example's number of values, none past the ids' count: lengths whose sum wraps
    # (at 32 bits in the asks' scratch) would pass the count's check below
    for f in range(features):
        for b in range(batch):
            if lengths[f, b] < 0 or lengths[f, b] > values.shape[0] - cursor[b]:
                return False
            cursor[b] += lengths[f, b]
    total = 0
    for b in range(batch):  # -> each example's first value
        count = cursor[b]
        cursor[b] = total
        total += count
    if total != values.shape[0]:
        return False
    i = 0
    for f in range(features):
        for b in range(batch):
            j = b * features + f
            p, n = cursor[b], lengths[f, b]
            out_offsets[j] = p
            for k in range(n):
                out_values[p + k] = values[i + k]
                bag_of_value[i + k] = j
            cursor[b] = p + n
            i += n
    out_offsets[features * batch] = total
    return True


@_inline
def _one_value_a_bag(lengths):  # type: ignore[no-untyped-def]
    for f in range(lengths.shape[0]):
        for b in range(lengths.shape[1]):
            if lengths[f, b] != 1:
                return False
    return True


# Distinct keys by a bitmap (dist_train.train.unpooled_asks).


@intrinsic
def _popcount(typingctx, x):  # type: ignore[no-untyped-def]
    """The set bits of a uint64: one instruction (LLVM's ctpop)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])

    return sig, codegen


@_jit
def distinct_keys_into(keys, space, bits, prefix, distinct_keys, per_key, by_key, key_of_value):  # type: ignore[no-untyped-def]
    """``bits``: zeros, at least one bit per possible key (``uint64`` words); ``prefix``:
    one per word. Returns the number of distinct keys, or -1 (nothing written but ``bits``)
    if a key falls outside ``[0, space)``. A key's distinct index is the set bits below its
    own. The bitmap is an eighth of a byte a possible key, where the count a key this
    replaced read and wrote 32 or 64 times that (an int32 in the one-table call, int64
    in :func:`~dist_train.train.unpooled_asks.distinct_keys`: 1.2 or 2.4 MB against 37.5 KB
    for the default job's 300,000 rows), most of it out of cache."""
    one = np.uint64(1)
    for k in keys:
        if k < 0 or k >= space:
            return -1
        bits[k >> 6] |= one << np.uint64(k & 63)
    distinct = 0
    for w in range(bits.shape[0]):  # the distinct keys ascending; set bits before each word
        prefix[w] = distinct
        word = bits[w]
        while word:
            low = word & (~word + one)
            distinct_keys[distinct] = (w << 6) + np.int64(_popcount(low - one))
            distinct += 1
            word ^= low
    for d in range(distinct):
        per_key[d] = 0
    for i in range(keys.shape[0]):
        k = keys[i]
        w = k >> 6
        below = bits[w] & ((one << np.uint64(k & 63)) - one)
        d = prefix[w] + np.int64(_popcount(below))
        key_of_value[i] = d
        per_key[d] += 1
    start = 0
    for d in range(distinct):  # counts -> each key's first position in key order
        count = per_key[d]
        per_key[d] = start
        start += count
    for i in range(keys.shape[0]):  # stable: a key's positions in input order
        d = key_of_value[i]
        by_key[per_key[d]] = i
        per_key[d] += 1
    end = 0
    for d in range(distinct):  # ends -> counts
        start, end = end, per_key[d]
        per_key[d] = end - start
    return distinct


# A single table's unpooled requests (dist_train.train.unpooled_asks).


@_jit
def one_table_requests_into(  # type: ignore[no-untyped-def]
    ids,
    lengths,
    bounds,
    row_span,
    bits,
    prefix,
    keys,
    send_rows,
    holder_counts,
    vector_offsets,
    by_key,
    vector_of_id,
    cursor,
    bag_offsets,
    bag_vectors,
    bag_of_id,
    bag_by_vector,
):
    """The unpooled input dist's work for one row-wise table, in one call: each id's holder
    (``bounds``: the world's row boundaries) and its key ``holder x row_span + row``, the
    distinct keys (:func:`distinct_keys_into`), the rows to send and how many each holder
    gets, where each distinct key's ids start in key order, and the bags put example-major
    over the ids' distinct indices (:func:`example_major_into`) with each id's bag in key
    order. ``bits``, ``prefix``: :func:`distinct_keys_into`'s, for ``world x row_span``
    keys; ``holder_counts``: ``world`` zeros. Returns the number of distinct keys, -1 (only
    ``keys`` written) if an id falls outside the table, or -2 (no bag written) if
    ``lengths`` do not count the ids."""
    world = bounds.shape[0] - 1
    rows = bounds[world]
    for i in range(ids.shape[0]):
        x = ids[i]
        if x < 0 or x >= rows:
            return -1
        lo, hi = 0, world - 1  # the holder: the last rank whose shard starts at or below x
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if bounds[mid] <= x:
                lo = mid
            else:
                hi = mid - 1
        keys[i] = lo * row_span + (x - bounds[lo])
    distinct = distinct_keys_into(
        keys, world * row_span, bits, prefix, send_rows, vector_offsets, by_key, vector_of_id
    )
    start = 0
    for d in range(distinct):
        holder = send_rows[d] // row_span
        holder_counts[holder] += 1
        send_rows[d] -= holder * row_span
        count = vector_offsets[d]
        vector_offsets[d] = start
        start += count
    if not example_major_into(lengths, vector_of_id, cursor, bag_offsets, bag_vectors, bag_of_id):
        return -2
    for t in range(by_key.shape[0]):
        bag_by_vector[t] = bag_of_id[by_key[t]]
    return distinct


# A ReLU's gradient for the layer below it (dist_train.models.linear).


@_jit
def relu_gradient_into(grad, out, masked, masked_t):  # type: ignore[no-untyped-def]
    """ReLU's backward from its output ``out`` (``[rows, cols]``): 0 where ``out`` is at most
    0, else ``grad`` (torch's ``threshold_backward``, NaN included), into ``masked`` and its
    transpose ``masked_t`` (``[cols, rows]``), 16 rows at a time so that the transposed
    writes fill cache lines."""
    rows, cols = grad.shape
    zero = np.float32(0)
    for i0 in range(0, rows, 16):
        i1 = min(i0 + 16, rows)
        for i in range(i0, i1):
            for j in range(cols):
                masked[i, j] = zero if out[i, j] <= zero else grad[i, j]
        for j in range(cols):
            for i in range(i0, i1):
                masked_t[j, i] = masked[i, j]


# The holder's lookup input (dist_train.train.unpooled_row_wise).


@_jit
def lookup_input_into(  # type: ignore[no-untyped-def]
    rows, per_table, table_start, table_of_feature, slot_of_feature, width, values, lengths
):
    """The holder's lookup input under unpooled row-wise lookups: ``rows`` received, sorted
    by table (``table_start``, ``per_table``); a table's ``k``-th row is feature
    ``k % width`` 's bag ``k // width`` (``slot_of_feature``: a feature's place among its
    table's ``width``). Writes ``lengths`` (feature-major, ``features x bags``: 1 or 0) and
    the filled bags' rows into ``values`` in that order; returns how many."""
    features, bags = lengths.shape
    p = 0
    for f in range(features):
        t = table_of_feature[f]
        w, s, n, start = width[t], slot_of_feature[f], per_table[t], table_start[t]
        for b in range(bags):
            k = b * w + s
            if k < n:
                values[p] = rows[start + k]
                lengths[f, b] = 1
                p += 1
            else:
                lengths[f, b] = 0
    return p


def load() -> None:
    """Load the kernels' machine code from numba's cache now (compiling it on first use).

    The first call of any kernel in a process also builds numba's typing tables: about
    0.7 s of CPU before a rank's first batch. Processes that fork from one preloaded parent
    (:mod:`dist_train.launchers.rank_preload`) pay it once.
    """
    fill_offsets(np.zeros((1, 1), dtype=np.int64), np.empty((1, 2), dtype=np.int64))


# numba fixed each kernel's cache folder as it decorated it: the process's other numba
# functions keep the folder they would have had
numba.config.CACHE_DIR = _NUMBA_CACHE_DIR  # type: ignore[attr-defined]
