# polyasr: `make serve` sets up and starts the service, `make test` sets up and
# runs every test. Each backend has its own virtualenv (qwen-asr pins
# transformers 4.57, mlx-audio needs transformers >= 5.14), rebuilt only when
# its requirements change.

PYTHON ?= python3
MLX_VENV := .venv-mlx
CUDA_VENV := .venv-cuda
MLX_REQS := requirements.txt requirements-common.txt pyproject.toml
CUDA_REQS := cuda/requirements.txt requirements-common.txt pyproject.toml
DEV_REQS := requirements-dev.txt client/python/pyproject.toml

# MLX on Apple Silicon; CUDA everywhere else (on the CPU when there is no GPU).
ifeq ($(shell uname -s)-$(shell uname -m),Darwin-arm64)
SERVE_BACKEND := mlx
else
SERVE_BACKEND := cuda
endif

.PHONY: serve test lint venvs bench test-system-deps

serve: $(if $(filter mlx,$(SERVE_BACKEND)),$(MLX_VENV),$(CUDA_VENV))/.installed
ifeq ($(SERVE_BACKEND),mlx)
	exec $(MLX_VENV)/bin/python server.py
else
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		exec $(CUDA_VENV)/bin/python cuda/server.py; \
	else \
		echo "polyasr: no NVIDIA GPU found; serving the CUDA backend on the CPU"; \
		POLYASR_DEVICE=$${POLYASR_DEVICE:-cpu} exec $(CUDA_VENV)/bin/python cuda/server.py; \
	fi
endif

# torch goes in first, pinned: otherwise a dependency's bare "torch" pulls a
# multi-GB CUDA build where a CPU build was meant (and vice versa). Each
# requirements file installs the service package itself (editable) by a path
# relative to its own folder, so pip runs there. `.installed` is what serves;
# `.dev-installed` adds the test tools and the Python client for `make test`.
$(MLX_VENV)/.installed: $(MLX_REQS)
	test -x $(MLX_VENV)/bin/python || $(PYTHON) -m venv $(MLX_VENV)
	$(MLX_VENV)/bin/pip install -q "$$(grep -m1 '^torch==' requirements.txt)"
	$(MLX_VENV)/bin/pip install -q -r requirements.txt
	touch $@

$(CUDA_VENV)/.installed: $(CUDA_REQS)
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q "$$(grep -m1 '^torch==' cuda/requirements.txt)"
	cd cuda && ../$(CUDA_VENV)/bin/pip install -q -r requirements.txt
	touch $@

%/.dev-installed: %/.installed $(DEV_REQS)
	$*/bin/pip install -q -r requirements-dev.txt -e client/python
	touch $@

venvs: $(MLX_VENV)/.dev-installed $(CUDA_VENV)/.dev-installed

lint: $(CUDA_VENV)/.dev-installed
	$(CUDA_VENV)/bin/ruff check .

# Debian's Chromium for tests/browser/test_browser.py, systemd-analyze for the unit
# check and bubblewrap to run the unit under its own file-system restrictions
# (tests/live/test_service_sandbox.py); installed as root where apt-get exists
# (CI), else those tests skip.
test-system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		! { command -v chromium && command -v systemd-analyze && command -v bwrap; } >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core systemd bubblewrap; \
	fi

# The two backends' suites run side by side: each spends most of its time in
# one test process waiting on its own servers, so on two cores the pair takes
# about as long as the longer suite, not their sum. Every line of output is
# prefixed with its backend; pytest's cache is off so the two never write it
# at once.
test: venvs lint test-system-deps
	@rcs=$$(mktemp -d); \
	echo "== contract suites on the CUDA engine (qwen-asr) and the MLX engine (mlx-qwen3-asr, mlx-audio), side by side"; \
	{ POLYASR_TEST_BACKEND=cuda $(CUDA_VENV)/bin/python -m pytest -p no:cacheprovider 2>&1; echo $$? >$$rcs/cuda; } | sed -u 's/^/[cuda] /' & \
	{ POLYASR_TEST_BACKEND=mlx $(MLX_VENV)/bin/python -m pytest -p no:cacheprovider 2>&1; echo $$? >$$rcs/mlx; } | sed -u 's/^/[mlx] /' & \
	wait; \
	status=0; \
	for backend in cuda mlx; do \
		echo "== $$backend suite: exit status $$(cat $$rcs/$$backend)"; \
		[ "$$(cat $$rcs/$$backend)" = 0 ] || status=1; \
	done; \
	rm -rf $$rcs; exit $$status
