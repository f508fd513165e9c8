"""Zipf statistics of the ids a step looks up: the row of popularity rank r over N rows is
drawn with probability r^-s / H(N, s) (``Workload.id_skew`` = s; docs/planner.md).

Used for the UVM cache's hit rate (planners/uvm_cache.py) and for how many distinct rows a
batch asks for (row_wise_unpooled asks each row's holder once per row, planners/cost_model.py).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_EXACT_TERMS = 10_000  # summed term by term up to this many rows; beyond, integrated
_TAIL_POINTS = 4_000  # log-spaced points of the tail's integral


@lru_cache(maxsize=4096)
def generalized_harmonic(n: float, s: float) -> float:
    """H(n, s) = sum_{k=1}^{n} k^-s for integer n >= 0: exact for the first 10,000 terms, the
    rest by the midpoint rule's integral of x^-s from m + 1/2 to n + 1/2 (relative error
    below 1e-9 for n > 10,000)."""
    n = int(n)
    if n <= 0:
        return 0.0
    m = min(n, _EXACT_TERMS)
    head = float(np.sum(np.arange(1, m + 1, dtype=np.float64) ** -s))
    if n == m:
        return head
    a, b = m + 0.5, n + 0.5
    if abs(s - 1.0) < 1e-12:
        return head + math.log(b / a)
    return head + (b ** (1.0 - s) - a ** (1.0 - s)) / (1.0 - s)


@lru_cache(maxsize=4096)
def expected_distinct(draws: float, rows: int, s: float) -> float:
    """Expected number of distinct rows among ``draws`` Zipf(s) draws over ``rows`` rows:
    sum over rows of 1 - (1 - p_r)^draws (term by term for the 10,000 most popular rows, the
    rest integrated over a log-spaced grid)."""
    rows = int(rows)
    if draws <= 0 or rows <= 0:
        return 0.0
    if s == 0:
        return rows * -math.expm1(draws * math.log1p(-1.0 / rows)) if rows > 1 else 1.0
    norm = generalized_harmonic(rows, s)
    m = min(rows, _EXACT_TERMS)
    p = np.arange(1, m + 1, dtype=np.float64) ** -s / norm
    with np.errstate(divide="ignore"):  # a row of p = 1 (a 1-row table): log1p(-1) = -inf
        head = float(np.sum(-np.expm1(draws * np.log1p(-p))))
    if rows == m:
        return head
    x = np.geomspace(m + 0.5, rows + 0.5, _TAIL_POINTS)
    tail = float(np.trapezoid(-np.expm1(-draws * x**-s / norm), x))
    return min(head + tail, float(draws), float(rows))
