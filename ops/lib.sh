# shellcheck shell=bash
# Shared helpers for the ops/ scripts. Sourced, not run.
set -euo pipefail

OPS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$OPS_DIR/.." && pwd)"
# Everything the local stack writes lives here; git ignores it.
STACK_NAME="${STACK_NAME:-default}"
STACK_DIR="${STACK_DIR:-$ROOT/.stack/$STACK_NAME}"
# shellcheck disable=SC2034  # used by the scripts that source this file
VENV="$ROOT/.venv"
BUILD_CONFIG="${BUILD_CONFIG:-debug}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

port_open() {
    python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# A file's contents, or nothing when it does not exist.
read_file() { if [ -f "$1" ]; then cat "$1"; fi; }

# Waits up to 30 s for a server started in the background to be ready (COMMAND succeeds); dies with
# the end of its log if its process is gone or it never gets ready.
wait_ready() {  # wait_ready NAME PIDFILE LOGFILE COMMAND...
    local name=$1 pidfile=$2 logfile=$3
    shift 3
    for _ in $(seq 1 300); do
        "$@" && { log "$name ready"; return 0; }
        pid_alive "$(read_file "$pidfile")" || { tail -20 "$logfile" >&2; die "$name exited; log: $logfile"; }
        sleep 0.1
    done
    die "$name was not ready within 30 s; log: $logfile"
}

# Stops the process whose pid a file holds: SIGNAL (default TERM), then KILL after 10 s; removes the file.
stop_pidfile() {  # stop_pidfile PIDFILE NAME [SIGNAL]
    local pid
    pid="$(read_file "$1")"
    if pid_alive "$pid"; then
        log "stopping $2 (pid $pid, ${3:-TERM})"
        kill "-${3:-TERM}" "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do pid_alive "$pid" || break; sleep 0.1; done
        if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$1"
}

# Builds the package's products once; prints the binary folder.
build_products() {
    log "building ($BUILD_CONFIG)"
    (cd "$ROOT" && swift build -c "$BUILD_CONFIG" >&2)
    (cd "$ROOT" && swift build -c "$BUILD_CONFIG" --show-bin-path)
}

# The reference application (order service, consumers, demo) is a package of its own in
# Examples/ that depends on the product by path; it builds into Examples/.build. Prints its
# executables' folder. Extra arguments go to `swift build` (e.g. --build-tests); they are optional.
# The build plan is made anew each time: SwiftPM's cached plan does not see a file added to the
# product, which is a path dependency here.
# shellcheck disable=SC2120
build_examples() {
    log "building the examples ($BUILD_CONFIG)"
    (cd "$ROOT/Examples" && swift build -c "$BUILD_CONFIG" --disable-build-manifest-caching "$@" >&2)
    (cd "$ROOT/Examples" && swift build -c "$BUILD_CONFIG" --show-bin-path)
}

# Podman for ops/image and the deployment tests: its images and containers live under
# .stack/podman (git ignores it), apart from any other podman use on the machine; runc, not crun
# (crun refuses this machine's hybrid cgroups), and explicit ulimits (the defaults are refused).
PODMAN_DIR="${PODMAN_DIR:-$ROOT/.stack/podman}"
use_podman() {
    mkdir -p "$PODMAN_DIR/storage" "$PODMAN_DIR/run"
    cat > "$PODMAN_DIR/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
    cat > "$PODMAN_DIR/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$PODMAN_DIR/run"
CONF
    export CONTAINERS_CONF="$PODMAN_DIR/containers.conf"
    export CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf"
}
