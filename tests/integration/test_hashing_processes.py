"""Hashing is deterministic across processes, whatever PYTHONHASHSEED is."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa

from dist_train.embedding.hashing import (
    fingerprint_ints,
    fingerprint_strings,
    make_salt,
    salted_rows,
)

_CHILD = """
import sys, numpy as np, pyarrow as pa
from dist_train.embedding.hashing import (
    fingerprint_ints, fingerprint_strings, make_salt, salted_rows)
ints = salted_rows(fingerprint_ints(np.arange(-50, 1000)), make_salt("C7", 1, seed=3), 9973)
strs = salted_rows(fingerprint_strings(pa.array([f"{i:08x}" for i in range(1000)])),
                   make_salt("C1", 0, seed=3), 9973)
sys.stdout.write(",".join(map(str, np.concatenate([ints, strs]))))
"""


def _in_this_process() -> np.ndarray:
    ints = salted_rows(fingerprint_ints(np.arange(-50, 1000)), make_salt("C7", 1, seed=3), 9973)
    strs = salted_rows(
        fingerprint_strings(pa.array([f"{i:08x}" for i in range(1000)])),
        make_salt("C1", 0, seed=3),
        9973,
    )
    return np.concatenate([ints, strs])


def test_same_ids_same_rows_in_separate_processes() -> None:
    outs = []
    for hash_seed in ("0", "12345"):  # PYTHONHASHSEED must not matter
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": hash_seed},
        )
        outs.append(np.array(proc.stdout.split(","), dtype=np.int64))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], _in_this_process())
