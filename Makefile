# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint test-kernels

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The pinned CPU wheel first, so the package's `torch>=2.2` range installs nothing more.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/arflows demo --force   # demo-output/ is the demo's own folder

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest

# The tests that compare two computations of the same numbers (chunked and whole sweeps, block
# and dense products, resumed and uninterrupted fits, seeded repeats, one and two processes),
# run again under other CPU kernels: torch's portable ATen kernels and MKL's compatible code
# path (this torch uses MKL; an OpenBLAS build would need OPENBLAS_CORETYPE). Bits that agree
# under one kernel choice only then fail here, not on a user's CPU.
KERNELS := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPAT
KERNEL_TESTS := tests/nn/test_sweep.py tests/nn/test_blocks.py tests/test_checkpoint.py \
	tests/test_robustness.py tests/test_train.py tests/test_streaming_fit.py \
	tests/test_distributed.py
# Statistical or loosely compared tests (learning, heavy tails, the hypothesis sweeps against the
# naive inverse, the 1e-4 CLI comparison under torchrun) gain nothing from other kernels.
KERNEL_SKIP := naive or learns or heavy_tailed or torchrun

test-kernels: $(STAMP)
	@# A torch that ignored the variable would rerun the same kernels and prove nothing.
	$(KERNELS) $(PY) -c 'import torch; assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"'
	$(KERNELS) $(PY) -m pytest $(KERNEL_TESTS) -k "not ($(KERNEL_SKIP))"
