# The C extension's functions (_table_rows.c); addresses are of int64 ids, offsets and
# tables_info ([tables][7]: weight offset, state offset, rows, dim, first feature, features,
# column), float32 rows, state, output and gradients, and the int32 slot and scratch buffers.
def pool(
    ids: int,
    offsets: int,
    tables_info: int,
    tables: int,
    features: int,
    batch: int,
    weights: int,
    out: int,
    stride: int,
    threads: int,
) -> int: ...
def update(
    ids: int,
    offsets: int,
    tables_info: int,
    tables: int,
    features: int,
    batch: int,
    grad: int,
    stride: int,
    weights: int,
    state: int,
    lr: float,
    eps: float,
    slot: int,
    slot_len: int,
    scratch: int,
    scratch_len: int,
    threads: int,
) -> None: ...
def scratch_size(ids: int, max_rows: int, threads: int, dim: int) -> int: ...

DEAL_MIN_READS: int  # tables of at least this many reads a batch are dealt (threads > 1)
