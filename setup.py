"""The C extensions: DLRM's fused dot interaction (dist_train/models/_dot_interaction.c) and
one table's pooled lookup with its fused row-wise Adagrad update
(dist_train/train/_table_rows.c).

Optional: where no C compiler is at hand the install goes on without them, and the model
uses torch's interaction (dist_train/models/dot_interaction.py says which one runs) and
FBGEMM's lookup (dist_train/train/table_rows.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dist_train.models._dot_interaction",
            sources=["dist_train/models/_dot_interaction.c"],
            depends=["dist_train/models/_dot_interaction_kernels.h"],
            # -fopenmp: the batch split runs on torch's OpenMP threads (_dot_interaction.c)
            extra_compile_args=["-O3", "-pthread", "-fopenmp", "-Wall"],
            extra_link_args=["-pthread", "-fopenmp"],
            optional=True,
        ),
        Extension(
            "dist_train.train._table_rows",
            sources=["dist_train/train/_table_rows.c"],
            # -fopenmp: the work runs on torch's OpenMP threads, as the interaction's does
            extra_compile_args=["-O3", "-fopenmp", "-Wall"],
            extra_link_args=["-fopenmp"],
            optional=True,
        ),
    ]
)
