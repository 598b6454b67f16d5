# beam_etl developer commands. Every target installs what it needs first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
BENCH_ROWS ?= 1000000 10000000
BENCH_REPEATS ?= 3
export HF_HUB_OFFLINE := 1

.PHONY: install run test test-unit test-integration lint bench bench-quick clean

install:  ## install pinned dependencies and beam_etl itself (editable)
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps -e .

run: install  ## run the bundled quickstart on DirectRunner
	$(PYTHON) -m beam_etl.run --runner=DirectRunner

test: install  ## the whole test suite (CI runs this)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest tests/unit tests/integration --timeout=900

test-unit: install
	$(PYTHON) -m pytest tests/unit --timeout=600

lint: install
	$(PYTHON) -m ruff check .

bench: install  ## benchmarks at 1M and 10M rows; writes BENCHMARKS.md (takes long)
	$(PYTHON) benchmarks/run_benchmarks.py --rows $(BENCH_ROWS) --repeats $(BENCH_REPEATS) --naive-repeats 3 --skip-naive-above 2000000

bench-quick: install  ## smoke-test the benchmark harness at 100k rows
	$(PYTHON) benchmarks/run_benchmarks.py --quick

clean:
	rm -rf beam_etl_output build dist *.egg-info
