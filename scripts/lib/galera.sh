# shellcheck shell=bash
# A throwaway three-node MariaDB Galera cluster on loopback with HAProxy in front, for the
# cluster tests and the cluster benchmark. Everything lives in one temporary folder: each
# node's data, socket, config and logs, and HAProxy's config, runtime socket, log and exit
# status (kept after a failure: galera_keep_logs). Each node and HAProxy run in sessions of
# their own, so a signal to the process group of a test or a node reaches no other. It
# never touches a system server or its data. Source scripts/lib/common.sh first.
#
#   galera_start   starts the cluster and HAProxy; exports GALERA_DIR, GALERA_NODE_PORTS,
#                  HAPROXY_PORT, HAPROXY_SOCKET and TEST_MYSQL_URL (through HAProxy)
#   galera_stop    kills everything started and removes the folder (use it in traps)
#   galera_keep_logs DIR   copies the nodes' and HAProxy's logs (and HAProxy's exit status)
#                  to DIR first, after a failure
#
# Node N (1-3) is started from its own option file, $GALERA_DIR/nodeN/my.cnf, so that a
# test can kill a node and start it again exactly as here (galera_node_start N).

GALERA_PACKAGES=(galera-4 mariadb-server mariadb-client rsync haproxy)
GALERA_NODES=3
# The user HAProxy's health check logs in as; it needs no privilege (scripts/lib/galera-check).
GALERA_CHECK_USER=haproxy_check
GALERA_CHECK_SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/galera-check"
# The Galera and InnoDB settings shipped for production; every node here includes them.
GALERA_CNF="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/galera/messages-galera.cnf"

# galera_node_start N [--wsrep-new-cluster]: starts node N in the background.
galera_node_start() {
    local n=$1
    shift
    # A session of its own (setsid), as HAProxy has: a signal to the process group of the
    # tests, or of another node, never reaches it.
    setsid "$(PATH="$PATH:/usr/sbin" command -v mariadbd)" --defaults-file="$GALERA_DIR/node$n/my.cnf" "$@" \
        </dev/null >/dev/null 2>&1 &
    # Stopped through its pid file, by galera_stop or a test; no job notice when killed.
    disown
}

# galera_node_sql N SQL: runs SQL as root on node N through its socket.
galera_node_sql() {
    mariadb --no-defaults --socket="$GALERA_DIR/node$1/mariadb.sock" -uroot -N -B -e "$2"
}

# galera_node_synced N: whether node N is a synced member of a three-node cluster.
galera_node_synced() {
    local status
    status=$(galera_node_sql "$1" "SHOW GLOBAL STATUS WHERE Variable_name IN
        ('wsrep_cluster_size', 'wsrep_local_state_comment', 'wsrep_ready')" 2>/dev/null) || return 1
    grep -qx $'wsrep_cluster_size\t'"$GALERA_NODES" <<<"$status" &&
        grep -qx $'wsrep_local_state_comment\tSynced' <<<"$status" &&
        grep -qx $'wsrep_ready\tON' <<<"$status"
}

# galera_wait_synced N: waits until node N is synced, or fails with its log.
galera_wait_synced() {
    if ! wait_for 120 galera_node_synced "$1"; then
        echo "node $1 did not reach Synced; its log ($GALERA_DIR/node$1/error.log):" >&2
        tail -n 40 "$GALERA_DIR/node$1/error.log" >&2
        return 1
    fi
}

# Node N's option file: the shipped Galera settings (galera/messages-galera.cnf), then what
# differs per node: paths, ports, addresses, and the test machine's sizes. Ports: client P,
# group communication G, IST I, SST S.
_galera_node_config() {
    local n=$1 port=$2 gcomm=$3 ist=$4 sst=$5 cluster=$6 dir="$GALERA_DIR/node$1" options
    options=$(_galera_shipped_provider_options)
    mkdir -p "$dir/data"
    local user=""
    [ "$(id -u)" -eq 0 ] && user="user=mysql"
    cat >"$dir/my.cnf" <<EOF
[mariadbd]
$user
datadir=$dir/data
socket=$dir/mariadb.sock
port=$port
bind-address=127.0.0.1
skip-name-resolve
pid-file=$dir/mariadb.pid
log-error=$dir/error.log
# Three nodes and the tests share one machine.
max-connections=500
innodb_buffer_pool_size=64M
wsrep_slave_threads=2

!include $GALERA_CNF

[galera]
wsrep_cluster_address=gcomm://$cluster
wsrep_node_name=node$n
wsrep_node_address=127.0.0.1
# One variable: this node's group and IST ports (IST's default, the group port + 1, would
# be the next node's group port on one host), then the shipped options.
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:$gcomm;ist.recv_addr=127.0.0.1:$ist;$options"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:$sst
EOF
}

# The shipped file's wsrep_provider_options: each node adds its own ones to them.
_galera_shipped_provider_options() {
    local options
    options=$(sed -n 's/^wsrep_provider_options="\(.*\)"$/\1/p' "$GALERA_CNF")
    if [ -z "$options" ] || [ "$(wc -l <<<"$options")" -ne 1 ]; then
        echo "$GALERA_CNF must set wsrep_provider_options=\"...\" on exactly one line" >&2
        return 1
    fi
    echo "$options"
}

# Writes HAProxy's config: one node at a time (the others are backups), checked for Synced.
_haproxy_config() {
    local dir="$GALERA_DIR/haproxy" n
    mkdir -p "$dir"
    {
        cat <<EOF
global
    maxconn 4000
    # One thread. With several, HAProxy 2.6 crashes (BUG_ON in task_queue, from
    # back_handle_st_cer) when live traffic marks a node down (observe layer4) while that
    # node's external check, which pins its task to the thread that forked it, is running
    # on another thread: 2 of 16 kill -9 runs on two cores crashed it, none of 15 with one
    # thread. One thread carries far more than the pooled connections of the API replicas.
    nbthread 1
    # To stderr, which the runner keeps (_haproxy_start): server state changes and
    # abnormal sessions.
    log stderr format raw local0 info
    # The runtime API, for planned maintenance (set server mysql/node1 state drain).
    stats socket $dir/haproxy.sock mode 600 level admin
    # The health check runs a script (galera-check), which needs fork().
    external-check
    insecure-fork-wanted

defaults
    mode tcp
    log global
    option tcplog
    option dontlog-normal
    timeout connect 1s
    # Longer than the API keeps an idle pooled connection (r2d2: 10 minutes).
    timeout client 1h
    timeout server 1h
    # Above galera-check's own 3 s connect wait: a check that is only slow (loaded cores)
    # must not count as a failure, or three of them take a healthy node out and cut its
    # sessions mid-handshake. A crash is still seen at once, by observe layer4.
    timeout check 4s
    retries 3
    option redispatch

listen mysql
    bind 127.0.0.1:$HAPROXY_PORT
    option external-check
    external-check path "/usr/bin:/bin"
    external-check command $GALERA_CHECK_SCRIPT
    # A node is taken out, and its sessions cut so that clients reconnect to the next node,
    # after three failed checks (a check forks the mysql client: on loaded cores one may
    # be slow), or at once when live traffic cannot connect to it (a crash). Two passed
    # checks bring it back.
    default-server check inter 1s fastinter 500ms downinter 1s rise 2 fall 3 on-marked-down shutdown-sessions observe layer4 error-limit 1 on-error mark-down
EOF
        for n in $(seq 1 "$GALERA_NODES"); do
            local backup=""
            [ "$n" -gt 1 ] && backup=" backup"
            echo "    server node$n 127.0.0.1:${GALERA_NODE_PORTS[$((n - 1))]}$backup"
        done
    } >"$dir/haproxy.cfg"
}

galera_start() {
    ensure_packages "${GALERA_PACKAGES[@]}"
    GALERA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/messages-galera.XXXXXX")
    export GALERA_DIR
    local n gcomm=() ist=() sst=() cluster=""
    GALERA_NODE_PORTS=()
    for n in $(seq 1 "$GALERA_NODES"); do
        GALERA_NODE_PORTS+=("$(free_port)")
        gcomm+=("$(free_port)")
        ist+=("$(free_port)")
        sst+=("$(free_port)")
        cluster+="${cluster:+,}127.0.0.1:${gcomm[-1]}"
    done
    for n in $(seq 1 "$GALERA_NODES"); do
        _galera_node_config "$n" "${GALERA_NODE_PORTS[$((n - 1))]}" "${gcomm[$((n - 1))]}" \
            "${ist[$((n - 1))]}" "${sst[$((n - 1))]}" "$cluster"
    done

    step "Starting a three-node Galera cluster on 127.0.0.1 ports ${GALERA_NODE_PORTS[*]} ($GALERA_DIR)"
    # As root, the nodes run as mysql: the rsync daemon of an SST, started by a node as root,
    # would drop to "nobody" and could not write the joiner's data folder.
    local user=()
    if [ "$(id -u)" -eq 0 ]; then
        user=(--user=mysql)
        chmod 755 "$GALERA_DIR"
        chown -R mysql:mysql "$GALERA_DIR"
    fi
    # Only the first node is initialised; the others receive its data by SST when they join.
    mariadb-install-db --no-defaults "${user[@]}" --datadir="$GALERA_DIR/node1/data" \
        --auth-root-authentication-method=normal --skip-test-db >"$GALERA_DIR/install.log" 2>&1 || {
        cat "$GALERA_DIR/install.log" >&2
        return 1
    }
    galera_node_start 1 --wsrep-new-cluster
    if ! wait_for 60 galera_node_sql 1 "SELECT 1"; then
        tail -n 40 "$GALERA_DIR/node1/error.log" >&2
        return 1
    fi
    galera_node_sql 1 "CREATE USER 'messages'@'127.0.0.1' IDENTIFIED BY 'messages';
        GRANT ALL PRIVILEGES ON *.* TO 'messages'@'127.0.0.1' WITH GRANT OPTION;
        CREATE USER '$GALERA_CHECK_USER'@'127.0.0.1';"
    for n in $(seq 2 "$GALERA_NODES"); do
        galera_node_start "$n"
    done
    for n in $(seq 1 "$GALERA_NODES"); do
        galera_wait_synced "$n"
    done
    echo "All $GALERA_NODES nodes Synced, wsrep_cluster_size=$GALERA_NODES"

    HAPROXY_PORT=$(free_port)
    HAPROXY_SOCKET="$GALERA_DIR/haproxy/haproxy.sock"
    _haproxy_config
    step "Starting HAProxy on 127.0.0.1:$HAPROXY_PORT (node1 active, node2 and node3 backups)"
    haproxy -c -q -f "$GALERA_DIR/haproxy/haproxy.cfg"
    _haproxy_start
    wait_for 30 _haproxy_node_up node1
    export GALERA_NODE_PORTS_LIST="${GALERA_NODE_PORTS[*]}" HAPROXY_PORT HAPROXY_SOCKET
    export TEST_MYSQL_URL="mysql://messages:messages@127.0.0.1:$HAPROXY_PORT"
}

# HAProxy runs in the foreground (-db) under a shell in a session of its own (setsid), so
# that no signal sent to the process group of the tests or of a node reaches it. The shell
# keeps what a failure needs in $GALERA_DIR/haproxy: haproxy.log (HAProxy's stderr: its
# alerts, warnings and log, and the health check's errors), haproxy.exit (its exit status;
# 128+N for signal N) and a core file if it crashed.
_haproxy_start() {
    local dir="$GALERA_DIR/haproxy"
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'cd "$1" || exit
        ulimit -c unlimited
        haproxy -db -f haproxy.cfg &
        echo $! >haproxy.pid
        wait $!
        echo $? >haproxy.exit' haproxy-runner "$dir" </dev/null >>"$dir/haproxy.log" 2>&1 &
    disown
    wait_for 10 test -s "$dir/haproxy.pid"
}

# haproxy_command CMD: one command on HAProxy's runtime socket (e.g. "show servers state").
haproxy_command() {
    python3 - "$HAPROXY_SOCKET" "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
print(b"".join(iter(lambda: s.recv(65536), b"")).decode(), end="")
EOF
}

# Whether HAProxy reports the server as UP.
_haproxy_node_up() {
    haproxy_command "show stat" | grep -q "^mysql,$1,.*,UP,"
}

# galera_keep_logs DIR: copies what explains a failure to DIR, which outlives galera_stop:
# each node's option file and error log, HAProxy's config, log and exit status (and core
# file, if it crashed).
galera_keep_logs() {
    local dir=$1 n file
    mkdir -p "$dir"
    for n in $(seq 1 "$GALERA_NODES"); do
        for file in my.cnf error.log; do
            [ -f "$GALERA_DIR/node$n/$file" ] && cp "$GALERA_DIR/node$n/$file" "$dir/node$n-$file"
        done
    done
    for file in "$GALERA_DIR"/haproxy/haproxy.{cfg,log,exit} "$GALERA_DIR"/haproxy/core*; do
        [ -f "$file" ] && cp "$file" "$dir/"
    done
    return 0
}

galera_stop() {
    [ -n "${GALERA_DIR:-}" ] && [ -d "$GALERA_DIR" ] || return 0
    step "Stopping HAProxy and the Galera cluster"
    local pidfile pid
    for pidfile in "$GALERA_DIR"/haproxy/haproxy.pid "$GALERA_DIR"/node*/mariadb.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill -9 "$pid" 2>/dev/null || true
        # Gone before its files are removed.
        wait_for 10 bash -c "! kill -0 $pid" || true
    done
    # The rsync daemons of an SST still running, started from the nodes' folders.
    for pidfile in "$GALERA_DIR"/node*/data/rsync_sst.pid; do
        [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null
    done
    rm -rf "$GALERA_DIR"
    GALERA_DIR=
}
