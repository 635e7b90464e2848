# dfscan: two commands on a fresh machine — `make demo` and `make test`.
# Both create the virtualenv and install the pinned working set first.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SHARED ?= $(abspath ../shared)
OUT    ?= out
MODEL  ?= artifacts/starter.pt
export DFSCAN_SHARED := $(SHARED)

.PHONY: install demo test lint bench bench-train fuzz plan clean

$(STAMP): setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e '.[s3,postgres,ray,beam,dev]'
	touch $@

install: $(STAMP)

# The starter classifier: trained here from the shared labelled crops (~5 min on 2 cores).
$(MODEL): | $(STAMP)
	$(BIN)/dfscan train --data $(SHARED)/data/faces/dfdc224 --out $(MODEL)

demo: $(STAMP) $(MODEL)
	$(BIN)/dfscan scan $(SHARED)/data/videos --out $(OUT) --model $(MODEL)
	$(BIN)/dfscan results --warehouse duckdb://$(abspath $(OUT))/scans.duckdb --limit 40

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Per-stage table of one local scan, then throughput of every runner against the floors
# (numbers also written to benchmarks/results/throughput.json, read by `dfscan plan`).
bench: $(STAMP) $(MODEL)
	$(BIN)/python benchmarks/bench_scan.py --model $(MODEL)
	$(BIN)/python benchmarks/bench_throughput.py --model $(MODEL)

bench-train: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

# Coverage-guided fuzzing of decode and shard reading; crashes land in tests/fuzz/crashes/.
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/fuzz_decode.py -max_total_time=$(or $(FUZZ_SECONDS),60)

plan: $(STAMP)
	$(BIN)/dfscan plan --videos-per-day 1000000 --mean-duration 30 --gpu-type t4 --markdown

clean:
	rm -rf $(OUT) .pytest_cache
