"""Compiled (numba) loops behind hashing and batch building: one pass, no temporaries.

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

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB93FE53E4A53)
_LO32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S33 = np.uint64(33)

_jit = numba.njit(cache=True, nogil=True)
_inline = numba.njit(cache=True, nogil=True, inline="always")


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


@_jit
def salted_rows_into(fps, salt, rot, n, recip, out):  # type: ignore[no-untyped-def]
    s, t, m, q = np.uint64(salt), np.uint64(rot), np.uint64(n), np.uint64(recip)
    for i in range(fps.shape[0]):
        out[i] = reduce(salted(fps[i], s, t), m, q)
