# The C extension's functions (_table_rows.c); addresses are of int64 ids and offsets,
# float32 rows, state and gradients, and the int32 slot buffer.
def pool(
    ids: int,
    offsets: int,
    features: int,
    batch: int,
    weights: int,
    rows: int,
    dim: int,
    out: int,
    threads: int,
) -> int: ...
def update(
    ids: int,
    offsets: int,
    features: int,
    batch: int,
    grad: int,
    weights: int,
    state: int,
    rows: int,
    dim: int,
    lr: float,
    eps: float,
    slot: int,
    scratch: int,
    scratch_len: int,
    threads: int,
) -> None: ...
def scratch_size(ids: int, threads: int) -> int: ...
