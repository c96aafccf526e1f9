# shellcheck shell=bash
# A throwaway RabbitMQ broker for the test suite, on loopback only.
#
# Sourced, not executed:
#
#     source .ci/rabbitmq.sh
#     rabbitmq_install          # apt-get install rabbitmq-server if missing
#     rabbitmq_start            # start our own node, wait until it is ready
#     trap rabbitmq_stop EXIT   # stop it and remove its files (idempotent)
#
# and, for the tests, rabbitmq_crash_restart (SIGKILL the node, start it again).
#
# The broker is not the packaged system service: it is a plain background
# process of the current user, with every file (database, logs, config,
# enabled plugins, pid file) under one temporary directory, listening on
# 127.0.0.1 only (AMQP, Erlang distribution and its own epmd alike).
#
# rabbitmq_start exports, for the tests and for rabbitmqctl:
#   FASTFRAME_AMQP_URL       amqp://guest:guest@127.0.0.1:PORT/%2F (guest may
#                            log in from loopback)
#   FASTFRAME_RABBITMQCTL    the rabbitmqctl to run; call it with this
#                            environment (Debian's /usr/sbin/rabbitmqctl would
#                            su to the rabbitmq user and lose it)
#   FASTFRAME_RABBITMQ_DIR   the node's temporary directory
#   RABBITMQ_NODENAME, RABBITMQ_CTL_ERL_ARGS (cookie, loopback), ERL_EPMD_PORT,
#   ERL_EPMD_ADDRESS and the RABBITMQ_* paths and ports of the node, so that
#   "$FASTFRAME_RABBITMQCTL" stop_app / start_app / list_queues reach it.
# Overrides: FASTFRAME_AMQP_PORT (default 5672, else the next free port),
# FASTFRAME_RABBITMQ_START_TIMEOUT (seconds, default 60).

_rabbitmq_log() { printf 'rabbitmq.sh: %s\n' "$*" >&2; }

# True when nothing accepts connections on 127.0.0.1:$1.
_rabbitmq_port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The first free port in [$1, $1 + 20).
_rabbitmq_free_port() {
    local port
    for ((port = $1; port < $1 + 20; port++)); do
        if _rabbitmq_port_free "$port"; then
            echo "$port"
            return 0
        fi
    done
    _rabbitmq_log "no free port in $1..$(($1 + 19))"
    return 1
}

# Where the real scripts live (not Debian's su wrappers in /usr/sbin).
_rabbitmq_bin_dir() {
    local ctl
    if [ -x /usr/lib/rabbitmq/bin/rabbitmqctl ]; then
        echo /usr/lib/rabbitmq/bin
    elif ctl=$(PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v rabbitmqctl); then
        dirname "$(readlink -f "$ctl")"
    else
        _rabbitmq_log "rabbitmqctl not found: run rabbitmq_install"
        return 1
    fi
}

# True when process $1 exists and has not exited (a zombie has).
_rabbitmq_running() {
    local stat
    [ -n "$1" ] && stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    case ${stat%% *} in Z | X) return 1 ;; esac
}

# True when $1 is a running RabbitMQ process (the launcher script or the
# node), not a later process that reused the pid of one. Only for processes
# past their start: while a process execs, its cmdline reads empty.
_rabbitmq_pid_alive() {
    _rabbitmq_running "$1" && grep -qa rabbitmq "/proc/$1/cmdline" 2>/dev/null
}

# _rabbitmq_kill SIGNAL PID...: signal those of the pids that _rabbitmq_pid_alive.
_rabbitmq_kill() {
    local signal=$1 pid
    shift
    for pid; do
        if _rabbitmq_pid_alive "$pid"; then
            kill "-$signal" "$pid" 2>/dev/null || true
        fi
    done
}

rabbitmq_install() {
    if dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q 'ok installed'; then
        return 0
    fi
    local sudo="" policy=/usr/sbin/policy-rc.d saved="" rc=0
    [ "$(id -u)" = 0 ] || sudo=sudo
    # The package's maintainer scripts would start (or, in a container without
    # systemd, try to start) a system broker on 0.0.0.0:5672. We start our own,
    # so deny every service start for the time of the install.
    if [ -e "$policy" ]; then
        saved=$(mktemp "${TMPDIR:-/tmp}/policy-rc.d.XXXXXX")
        $sudo cp -p "$policy" "$saved"
    fi
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    _rabbitmq_log "installing rabbitmq-server"
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q; then
        rc=1
    elif ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends rabbitmq-server; then
        rc=1
    fi
    if [ -n "$saved" ]; then
        $sudo cp -p "$saved" "$policy"
        rm -f "$saved"
    else
        $sudo rm -f "$policy"
    fi
    [ "$rc" = 0 ] || { _rabbitmq_log "apt-get failed"; return 1; }
}

rabbitmq_start() {
    if [ -n "${FASTFRAME_RABBITMQ_DIR:-}" ] && [ -d "$FASTFRAME_RABBITMQ_DIR" ]; then
        _rabbitmq_log "already started (${FASTFRAME_RABBITMQ_DIR}); rabbitmq_stop first"
        return 1
    fi
    local bin dir port dist_port epmd_port cookie
    bin=$(_rabbitmq_bin_dir) || return 1
    if [ -n "${FASTFRAME_AMQP_PORT:-}" ]; then
        port=$FASTFRAME_AMQP_PORT
        _rabbitmq_port_free "$port" || { _rabbitmq_log "port $port is in use"; return 1; }
    else
        port=$(_rabbitmq_free_port 5672) || return 1
    fi
    dist_port=$(_rabbitmq_free_port $((port + 20000))) || return 1
    # Our own epmd, so that it listens on loopback and goes away with the node.
    epmd_port=$(_rabbitmq_free_port 4369) || return 1
    dir=$(mktemp -d "${TMPDIR:-/tmp}/fastframe-rabbitmq.XXXXXX") || return 1
    mkdir -p "$dir/mnesia" "$dir/log"
    : >"$dir/rabbitmq.conf"
    echo '[].' >"$dir/enabled_plugins"
    cookie=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

    export FASTFRAME_RABBITMQ_DIR=$dir
    export FASTFRAME_RABBITMQCTL=$bin/rabbitmqctl
    export RABBITMQ_NODENAME=fastframe@localhost
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$port
    export RABBITMQ_DIST_PORT=$dist_port
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT=$epmd_port
    export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
    export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
    export RABBITMQ_MNESIA_BASE=$dir/mnesia
    export RABBITMQ_LOG_BASE=$dir/log
    export RABBITMQ_PID_FILE=$dir/rabbitmq.pid
    # The cookie goes on the command line, so rabbitmqctl needs no cookie file;
    # the interface keeps the node's and rabbitmqctl's distribution on loopback.
    # +sbwt none...: the schedulers sleep when idle instead of spinning, as
    # RabbitMQ advises for a node sharing its cores (here, with its clients).
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-setcookie $cookie -kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
    export RABBITMQ_CTL_ERL_ARGS="-setcookie $cookie -kernel inet_dist_use_interface {127,0,0,1}"
    export FASTFRAME_AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2F"

    if ! epmd -daemon -address 127.0.0.1 -port "$epmd_port"; then
        _rabbitmq_log "could not start epmd on 127.0.0.1:$epmd_port"
        rabbitmq_stop
        return 1
    fi
    _rabbitmq_log "starting $RABBITMQ_NODENAME on 127.0.0.1:$port (files in $dir)"
    _rabbitmq_launch || { rabbitmq_stop; return 1; }
}

# The end of the node's logs, its own log first (where a failed boot says why).
_rabbitmq_show_logs() {
    tail -n 20 "$FASTFRAME_RABBITMQ_DIR/log/$RABBITMQ_NODENAME.log" \
        "$FASTFRAME_RABBITMQ_DIR/log/startup.log" >&2 2>/dev/null || true
}

# Starts the node described by the exported variables and waits until it is ready.
_rabbitmq_launch() {
    local dir=$FASTFRAME_RABBITMQ_DIR deadline node
    local limit=${FASTFRAME_RABBITMQ_START_TIMEOUT:-60}
    rm -f "$RABBITMQ_PID_FILE"
    # HOME: the node writes a .erlang.cookie there even with -setcookie.
    (cd "$dir" && HOME=$dir exec "$(dirname "$FASTFRAME_RABBITMQCTL")/rabbitmq-server" \
        </dev/null >>"$dir/log/startup.log" 2>&1) &
    echo $! >"$dir/launcher.pid"
    # Found through launcher.pid; without this, killing it makes bash print a job notice.
    disown $!
    deadline=$((SECONDS + limit))
    while ((SECONDS < deadline)); do
        # Gone only when neither the launcher nor the node it started runs.
        # Not _rabbitmq_pid_alive: the launcher may still be execing.
        node=$(cat "$RABBITMQ_PID_FILE" 2>/dev/null) || node=""
        if ! _rabbitmq_running "$(cat "$dir/launcher.pid")" && ! _rabbitmq_running "$node"; then
            _rabbitmq_log "the broker exited during startup; its logs:"
            _rabbitmq_show_logs
            return 1
        fi
        # rabbitmqctl only once the node listens: run against a node that is
        # not up yet, it writes a ~/.erlang.cookie while reporting the failure.
        if ! _rabbitmq_port_free "$RABBITMQ_NODE_PORT" &&
            timeout 30 "$FASTFRAME_RABBITMQCTL" await_startup --timeout 20 >/dev/null 2>&1; then
            _rabbitmq_log "ready after $((SECONDS + limit - deadline)) s: $FASTFRAME_AMQP_URL"
            return 0
        fi
        sleep 0.2
    done
    _rabbitmq_log "not ready after $limit s; its logs:"
    _rabbitmq_show_logs
    return 1
}

# For the tests: kill the node outright (SIGKILL, so only what it had written
# to disk survives) and start it again on the same files and ports. Works from
# any process that has rabbitmq_start's environment:
#     bash -c 'source .ci/rabbitmq.sh && rabbitmq_crash_restart'
rabbitmq_crash_restart() {
    local dir=${FASTFRAME_RABBITMQ_DIR:-}
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        _rabbitmq_log "no broker of ours to restart: rabbitmq_start first"
        return 1
    fi
    # As .ci/run's start: a node that does not come up gets one more try.
    for _ in 1 2; do
        _rabbitmq_kill_node
        _rabbitmq_log "killed $RABBITMQ_NODENAME; starting it again"
        _rabbitmq_launch && return 0
        sleep 2
    done
    return 1
}

# SIGKILL the node and its launcher; returns once both are gone.
_rabbitmq_kill_node() {
    local pid launcher i
    pid=$(cat "$RABBITMQ_PID_FILE" 2>/dev/null) || pid=""
    launcher=$(cat "$FASTFRAME_RABBITMQ_DIR/launcher.pid" 2>/dev/null) || launcher=""
    _rabbitmq_kill KILL "$pid" "$launcher"
    for ((i = 0; i < 100; i++)); do
        _rabbitmq_running "$pid" || _rabbitmq_running "$launcher" || break
        sleep 0.05
    done
}

rabbitmq_stop() {
    local dir=${FASTFRAME_RABBITMQ_DIR:-} pid launcher i
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        return 0
    fi
    pid=$(cat "$dir/rabbitmq.pid" 2>/dev/null) || pid=""
    launcher=$(cat "$dir/launcher.pid" 2>/dev/null) || launcher=""
    if _rabbitmq_pid_alive "$pid"; then
        # Waits until the node's OS process has exited.
        timeout 30 "$FASTFRAME_RABBITMQCTL" stop "$dir/rabbitmq.pid" >/dev/null 2>&1 || true
    fi
    _rabbitmq_kill TERM "$pid" "$launcher"
    for ((i = 0; i < 50; i++)); do
        _rabbitmq_running "$pid" || _rabbitmq_running "$launcher" || break
        sleep 0.1
    done
    _rabbitmq_kill KILL "$pid" "$launcher"
    if [ -n "${ERL_EPMD_PORT:-}" ]; then
        epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    unset FASTFRAME_RABBITMQ_DIR FASTFRAME_AMQP_URL FASTFRAME_RABBITMQCTL \
        RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS RABBITMQ_NODE_PORT \
        RABBITMQ_DIST_PORT ERL_EPMD_ADDRESS ERL_EPMD_PORT RABBITMQ_CONF_ENV_FILE \
        RABBITMQ_CONFIG_FILE RABBITMQ_ADVANCED_CONFIG_FILE \
        RABBITMQ_ENABLED_PLUGINS_FILE RABBITMQ_MNESIA_BASE RABBITMQ_LOG_BASE \
        RABBITMQ_PID_FILE RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS RABBITMQ_CTL_ERL_ARGS
    return 0
}
