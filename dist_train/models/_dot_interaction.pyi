# The C extension's functions (_dot_interaction.c); addresses are of float32 rows.
def variant() -> str | None: ...
def select(name: str) -> bool: ...
def forward(
    dense: int,
    dense_stride: int,
    vectors: int,
    vectors_stride: int,
    out: int,
    out_stride: int,
    batch: int,
    n: int,
    d: int,
    threads: int,
) -> None: ...
def backward(
    dense: int,
    dense_stride: int,
    vectors: int,
    vectors_stride: int,
    grad: int,
    grad_stride: int,
    d_dense: int,
    d_dense_stride: int,
    d_vectors: int,
    d_vectors_stride: int,
    batch: int,
    n: int,
    d: int,
    threads: int,
) -> None: ...
