# beam_etl developer commands. Every target installs what it needs first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
BENCH_ROWS ?= 1000000 10000000
BENCH_REPEATS ?= 3
export HF_HUB_OFFLINE := 1

.PHONY: install runners run test test-unit test-integration test-runners test-kill lint bench bench-quick bench-runners \
	bench-kafka clean services-up services-down services-status

install:  ## install pinned dependencies and beam_etl itself (editable)
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps -e .
	bash scripts/install_chromium.sh  # Debian's chromium for the dashboard's browser test (apt-get, when missing)

runners: install  ## build Prism from Beam's Go module (cached in ~/.cache/beam_etl/runners)
	bash scripts/runners.sh prism

run: install  ## run the bundled quickstart on DirectRunner
	$(PYTHON) -m beam_etl.run --runner=DirectRunner

test: install runners  ## the whole test suite (CI runs this), Prism and portable runs included
	$(PYTHON) -m ruff check .
	PYTHON=$(PYTHON) bash scripts/services.sh up
	$(PYTHON) -m pytest tests/unit tests/integration tests/runners --timeout=900 -rs

test-integration: install  ## the integration tests against the real services (started first)
	PYTHON=$(PYTHON) bash scripts/services.sh up
	$(PYTHON) -m pytest tests/integration --timeout=900 -rs

test-unit: install
	$(PYTHON) -m pytest tests/unit --timeout=600

test-runners: install runners  ## the runner matrix; Flink/Spark join when their job-server jars resolve
	bash scripts/runners.sh jobservers || echo "Flink/Spark job-server jars unavailable: see docs/runners.md"
	$(PYTHON) -m pytest tests/runners --timeout=1800 -rs -v

test-kill: install runners  ## exactly-once kill tests (Kafka -> PostgreSQL, Kafka -> Kafka) at 100k messages, 3 times
	PYTHON=$(PYTHON) bash scripts/services.sh up postgres kafka
	for run in 1 2 3; do BEAM_ETL_KILL_TEST_N=100000 $(PYTHON) -m pytest tests/integration/test_kafka_exactly_once.py \
		-q -s -p no:cacheprovider --timeout=1200 || exit 1; done

lint: install
	$(PYTHON) -m ruff check .

bench: install  ## benchmarks at 1M and 10M rows; writes BENCHMARKS.md (takes long)
	$(PYTHON) benchmarks/run_benchmarks.py --rows $(BENCH_ROWS) --repeats $(BENCH_REPEATS) --naive-repeats 3 --skip-naive-above 2000000

bench-runners: install runners  ## the benchmark job at 1M rows on DirectRunner, Prism, Flink, Spark (same invocation)
	$(PYTHON) benchmarks/run_benchmarks.py --section runners --rows 1000000 --repeats $(BENCH_REPEATS) \
		--impls pyarrow beam_etl beam_etl_prism beam_etl_flink beam_etl_spark

bench-kafka: install runners  ## Kafka -> PostgreSQL: throughput and latency of the streaming template vs a plain consumer loop
	PYTHON=$(PYTHON) bash scripts/services.sh up postgres kafka
	$(PYTHON) benchmarks/bench_kafka.py --write-report

.PHONY: bench-tuner
bench-tuner: install  ## the AutoTuner's recommendation vs the defaults on the benchmark job at 1M rows; writes BENCHMARKS.md
	$(PYTHON) benchmarks/bench_tuner.py --rows 1000000 --repeats $(BENCH_REPEATS) --write-report

.PHONY: bench-observability
bench-observability: install runners  ## metrics endpoint overhead on the benchmark job (DirectRunner, Prism); writes BENCHMARKS.md
	$(PYTHON) benchmarks/bench_observability.py --write-report

.PHONY: bench-startup
bench-startup: install  ## what the CLI's start-up handling and column pruning buy at 1M rows (each switched off); writes BENCHMARKS.md
	$(PYTHON) benchmarks/bench_startup.py --write-report

bench-quick: install  ## smoke-test the benchmark harness at 100k rows
	$(PYTHON) benchmarks/run_benchmarks.py --quick

services-up: install  ## install if needed and start PostgreSQL, MariaDB, FerretDB, moto S3, Kafka on loopback (docs/services.md)
	PYTHON=$(PYTHON) bash scripts/services.sh up

services-down:  ## stop the test services (their data is kept)
	PYTHON=$(PYTHON) bash scripts/services.sh down

services-status:
	PYTHON=$(PYTHON) bash scripts/services.sh status

clean:
	rm -rf beam_etl_output build dist *.egg-info

.PHONY: test-isolation-mutants
test-isolation-mutants: install  ## disables each tenant-isolation / role check of the API in turn; the tenancy tests must fail
	$(PYTHON) scripts/check_isolation_mutants.py

.PHONY: deploy-check
deploy-check:  ## deployment code: checkov (Terraform, workflows), actionlint + shellcheck, terraform fmt/validate (docs/deploy.md)
	PYTHON=$(PYTHON) bash scripts/deploy_checks.sh check
