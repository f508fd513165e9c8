"""Check that an image holds the torch / fbgemm-gpu / torchrec build it promises.

    python docker/check_stack.py cpu    # torch CPU build + fbgemm-gpu-cpu
    python docker/check_stack.py cuda   # torch CUDA build + the CUDA fbgemm-gpu, one CUDA major

The Dockerfiles run it right after ``make setup``, so a wrong wheel (the CPU fbgemm in the
CUDA image, a CPU torch, torch and fbgemm-gpu built for different CUDA majors) fails the
build instead of the first GPU job. Needs no GPU: it looks at the builds, not at devices.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path


def _loaded_cudart_majors() -> set[str]:
    """CUDA runtime majors mapped into this process (Linux): two means a mixed stack."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return set()
    return set(re.findall(r"libcudart\.so\.(\d+)", maps.read_text()))


def problems(variant: str) -> list[str]:
    """What is wrong with the installed stack for ``variant`` ('cpu' or 'cuda')."""
    if variant not in ("cpu", "cuda"):
        return [f"unknown variant {variant!r}; use cpu or cuda"]
    import fbgemm_gpu
    import torch  # the imports load the native libraries: an ABI mismatch fails here
    import torchrec  # noqa: F401  (must import beside this fbgemm build)

    found: list[str] = []
    # the C extensions (setup.py) build only where a compiler was at hand; without them CPU
    # ranks run torch's interaction and FBGEMM's shared-table kernels, slower
    if importlib.util.find_spec("dist_train.models._dot_interaction") is None:
        found.append("dist_train's C dot interaction was not built (gcc and Python headers?)")
    if importlib.util.find_spec("dist_train.train._table_rows") is None:
        found.append("dist_train's C table lookup was not built (gcc and Python headers?)")
    torch_cuda = torch.version.cuda
    fbgemm_variant = getattr(fbgemm_gpu, "__variant__", "unknown")
    if variant == "cpu":
        if torch_cuda is not None:
            found.append(f"torch {torch.__version__} is a CUDA {torch_cuda} build, not CPU")
        if fbgemm_variant != "cpu":
            found.append(f"fbgemm_gpu is the {fbgemm_variant!r} build, not fbgemm-gpu-cpu")
        return found
    if torch_cuda is None:
        found.append(f"torch {torch.__version__} is a CPU build, not CUDA")
    if fbgemm_variant != "cuda":
        found.append(f"fbgemm_gpu is the {fbgemm_variant!r} build, not the CUDA fbgemm-gpu")
    majors = _loaded_cudart_majors()
    if torch_cuda is not None and majors - {torch_cuda.split(".")[0]}:
        found.append(
            f"CUDA runtimes {sorted(majors)} are loaded, but torch is built for CUDA "
            f"{torch_cuda}: fbgemm-gpu comes from another CUDA index than torch"
        )
    return found


def main(argv: list[str]) -> int:
    variant = argv[0] if argv else "cuda"
    found = problems(variant)
    for line in found:
        print(f"check_stack: {line}", file=sys.stderr)
    if found:
        return 1
    import fbgemm_gpu
    import torch
    import torchrec

    print(
        f"check_stack: {variant} stack ok: torch {torch.__version__} (CUDA "
        f"{torch.version.cuda}), fbgemm_gpu {fbgemm_gpu.__version__} "
        f"({fbgemm_gpu.__variant__}), torchrec {torchrec.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
