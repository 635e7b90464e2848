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

.PHONY: install demo test lint bench bench-peer bench-train bench-load fuzz plan clean

$(STAMP): setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e '.[s3,postgres,bigquery,ray,beam,dev]'
	touch $@

install: $(STAMP)

# The starter classifier: trained here from the shared labelled crops (at most 5 min by
# default; TRAIN_ARGS="--max-minutes 30" lets a slow machine finish all 12 epochs).
TRAIN_ARGS ?=
$(MODEL): | $(STAMP)
	$(BIN)/dfscan train --data $(SHARED)/data/faces/dfdc224 --out $(MODEL) $(TRAIN_ARGS)

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
# (numbers also written to benchmarks/results/throughput.json, read by `dfscan plan`),
# then the scoring backends: speed and AUC against eager torch (results/scoring.json),
# then uniform:32 decode CPU against ffmpeg's full decode, lever by lever (results/decode.json).
bench: $(STAMP) $(MODEL)
	$(BIN)/python benchmarks/bench_scan.py --model $(MODEL)
	$(BIN)/python benchmarks/bench_throughput.py --model $(MODEL)
	$(BIN)/python benchmarks/bench_scoring.py --model $(MODEL)
	$(BIN)/python benchmarks/bench_detect.py
	$(BIN)/python benchmarks/bench_decode.py

# dfscan's decode+detect against the icpr2020dfdc extraction path (results/peer.json).
# Its BlazeFace stand-in is the model inside mediapipe 0.10.21's wheel, the last release
# that ships it; that release needs numpy<2 and protobuf<5, so it gets its own venv,
# kept with the benchmark cache (~1 GB: mediapipe pulls jax and OpenCV contrib).
PEER_VENV := benchmarks/.corpus/peer-venv
$(PEER_VENV)/.installed-stamp:
	$(PY) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet mediapipe==0.10.21
	touch $@

bench-peer: $(STAMP) $(PEER_VENV)/.installed-stamp
	$(BIN)/python benchmarks/bench_peer.py --peer-python $(PEER_VENV)/bin/python

bench-train: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

# One scan per size over generated 160 px clips: throughput, peak RSS of the process
# tree, open fds and leftover temp files (results/load.json). 10,000 clips take ~10 min
# on 2 idle cores; LOAD_SIZES=100,1000 for a quick look.
LOAD_SIZES ?= 100,1000,10000
bench-load: $(STAMP) $(MODEL)
	$(BIN)/python benchmarks/bench_load.py --model $(MODEL) --sizes $(LOAD_SIZES)

# Coverage-guided fuzzing of decode and shard reading; crashes land in tests/fuzz/crashes/.
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/fuzz_decode.py -max_total_time=$(or $(FUZZ_SECONDS),60)

plan: $(STAMP)
	$(BIN)/dfscan plan --videos-per-day 1000000 --mean-duration 30 --gpu-type t4 --markdown

clean:
	rm -rf $(OUT) .pytest_cache
