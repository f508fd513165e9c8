"""The one C extension, DLRM's fused dot interaction (dist_train/models/_dot_interaction.c).

Optional: where no C compiler is at hand the install goes on without it, and the model uses
torch's implementation (dist_train/models/dot_interaction.py says which one runs).
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
        )
    ]
)
