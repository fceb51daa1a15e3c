# The project's commands. `make run` serves the app; `make test` runs every test.
.PHONY: run test test-cluster test-containers test-k8s test-monitoring test-pipeline test-tls coverage bench chaos openapi lint fmt clean

run: ## Build and serve the API and web page on http://127.0.0.1:8080 (SQLite)
	scripts/run

test: ## Lint, then run every test against real SQLite and MariaDB
	scripts/test

test-cluster: ## Only the cluster tests: three Galera nodes behind HAProxy, two API replicas, contract, stream, failover
	scripts/test-cluster

test-containers: ## Only the container tests: the three images, both compose stacks, blue/green deploys, on a real Docker Engine
	scripts/test-containers

test-k8s: ## Only the Kubernetes manifests' tests: kubectl kustomize | kubernetes-validate --strict per supported version, agreement with compose
	scripts/test-k8s

test-monitoring: ## Only the monitoring tests: promtool, amtool, alert unit tests, alerts firing in a real Prometheus (builds the API first)
	scripts/build
	scripts/test-monitoring

test-tls: ## Only the HTTPS tests: Pebble issues and renews through HTTP-01 to certbot, nginx with TLS on, testssl.sh, Chromium over HTTPS (builds the API first)
	scripts/build
	scripts/test-tls

test-pipeline: ## Only the pipeline gates' and the EC2 host's tests: dependency policy, Trivy gates, cfn-lint, prepare-host in a Debian root
	scripts/test-pipeline

coverage: ## Line coverage of the Rust tests with cargo-tarpaulin; report in target/reports/coverage/
	scripts/coverage

bench: ## Benchmark: release API, nginx and MariaDB with 1,000,000 rows, then 10,000 live streams, then list and create on a three-node Galera cluster; reports in bench/results/
	scripts/bench
	scripts/bench-cluster

chaos: ## Only the fault tests (database outage, crash, graceful stop), against a throwaway MariaDB
	scripts/chaos

openapi: ## Regenerate the committed OpenAPI document from the code
	scripts/build --quiet
	target/debug/messages-api openapi > openapi/openapi.json

lint: ## The pre-commit hooks on every file: fmt, clippy, shellcheck, hadolint, YAML/JSON, whitespace, OpenAPI drift, secrets
	scripts/lint

fmt: ## Format the code
	cargo fmt --all

clean:
	cargo clean
