# shellcheck shell=bash
# A throwaway RabbitMQ broker for the test suite, on loopback only.
#
# Sourced, not executed:
#
#     source .ci/rabbitmq.sh
#     rabbitmq_install          # build the Debian 13 root with RabbitMQ, if missing
#     rabbitmq_start            # start our own node, wait until it is ready
#     trap rabbitmq_stop EXIT   # stop it and remove its files (idempotent)
#
# and, for the tests, rabbitmq_crash_restart (SIGKILL the node, start it again).
#
# The broker is Debian 13's (trixie) rabbitmq-server, RabbitMQ 4.0 on Erlang
# 27, whatever release the machine runs: rabbitmq_install debootstraps a
# minimal trixie root with it (FASTFRAME_RABBITMQ_ROOT, default
# /var/lib/fastframe-rabbitmq/trixie; about 370 MB, half a minute), and the
# node runs chrooted there. Debian 12, which this project's machines run,
# ships RabbitMQ 3.10, whose classic queues take half again as much CPU per
# MB persisted (bench/RESULTS.md). Chroot and mounts need root: as another
# user the script uses sudo, and the node still runs as that user.
#
# The broker is not the packaged system service: it is a plain background
# process, with every file (database, logs, config, enabled plugins, pid
# file) under one temporary directory, listening on 127.0.0.1 only (AMQP,
# Erlang distribution and its own epmd alike). Each process run in the root
# gets a mount namespace of its own, where /proc and that directory (at the
# same path as outside) are mounted: nothing stays mounted on the machine.
#
# rabbitmq_start exports, for the tests and for rabbitmqctl:
#   FASTFRAME_AMQP_URL       amqp://guest:guest@127.0.0.1:PORT/%2F (guest may
#                            log in from loopback)
#   FASTFRAME_RABBITMQCTL    the rabbitmqctl to run (a script that runs the
#                            root's in the root); call it with this environment
#   FASTFRAME_RABBITMQ_DIR   the node's temporary directory
#   FASTFRAME_RABBITMQ_ROOT  the Debian 13 root the node runs in
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

_RABBITMQ_SUITE=trixie
_RABBITMQ_MIRROR=http://deb.debian.org/debian
_RABBITMQ_BIN=/usr/lib/rabbitmq/bin

_rabbitmq_root() { echo "${FASTFRAME_RABBITMQ_ROOT:-/var/lib/fastframe-rabbitmq/$_RABBITMQ_SUITE}"; }

# "sudo" unless we are root.
_rabbitmq_sudo() { [ "$(id -u)" = 0 ] || echo sudo; }

# Sets _rabbitmq_cmd to the command line that runs its arguments in the root,
# as the calling user, in a mount namespace of its own with the root's /proc
# and the node's directory (FASTFRAME_RABBITMQ_DIR) mounted, with the
# caller's environment (the node's variables) and HOME in that directory (the
# node writes a .erlang.cookie there even with -setcookie).
_rabbitmq_root_cmd() {
    local dir=$FASTFRAME_RABBITMQ_DIR user=""
    _rabbitmq_cmd=()
    if [ "$(id -u)" != 0 ]; then
        _rabbitmq_cmd=(sudo --preserve-env)
        user="--userspec=$(id -u):$(id -g)"
    fi
    # shellcheck disable=SC2016  # expanded by the inner shell
    _rabbitmq_cmd+=(unshare --mount --propagation private -- /bin/sh -c '
            root=$1 dir=$2 user=$3
            shift 3
            mount -t proc proc "$root/proc" &&
                mkdir -p "$root$dir" && mount --bind "$dir" "$root$dir" &&
                exec chroot $user "$root" /usr/bin/env \
                    PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$dir" "$@"' \
        sh "$(_rabbitmq_root)" "$dir" "$user")
}

_rabbitmq_in_root() {
    local _rabbitmq_cmd
    _rabbitmq_root_cmd
    "${_rabbitmq_cmd[@]}" "$@"
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
    local root sudo log
    root=$(_rabbitmq_root)
    [ -x "$root$_RABBITMQ_BIN/rabbitmq-server" ] && return 0
    sudo=$(_rabbitmq_sudo)
    if ! command -v debootstrap >/dev/null; then
        _rabbitmq_log "installing debootstrap"
        if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
            ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                --no-install-recommends debootstrap debian-archive-keyring; then
            _rabbitmq_log "apt-get failed"
            return 1
        fi
    fi
    _rabbitmq_log "building $root: Debian $_RABBITMQ_SUITE with rabbitmq-server"
    log=$(mktemp "${TMPDIR:-/tmp}/fastframe-debootstrap.XXXXXX")
    # Built aside and moved in place whole, so a failed build is never taken
    # for a root. The chroot has no init: the package starts no service.
    $sudo rm -rf "$root.partial"
    if ! $sudo debootstrap --variant=minbase --include=rabbitmq-server \
            "$_RABBITMQ_SUITE" "$root.partial" "$_RABBITMQ_MIRROR" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        _rabbitmq_log "debootstrap failed (its output: $log)"
        return 1
    fi
    $sudo mv "$root.partial" "$root"
    rm -f "$log"
}

# A rabbitmqctl for the tests and for us: the root's, run in the root.
_rabbitmq_write_ctl() {
    local _rabbitmq_cmd
    _rabbitmq_root_cmd
    {
        echo '#!/usr/bin/env bash'
        printf 'exec'
        printf ' %q' "${_rabbitmq_cmd[@]}" "$_RABBITMQ_BIN/rabbitmqctl"
        echo ' "$@"'
    } >"$1"
    chmod +x "$1"
}

rabbitmq_start() {
    if [ -n "${FASTFRAME_RABBITMQ_DIR:-}" ] && [ -d "$FASTFRAME_RABBITMQ_DIR" ]; then
        _rabbitmq_log "already started (${FASTFRAME_RABBITMQ_DIR}); rabbitmq_stop first"
        return 1
    fi
    local root dir port dist_port epmd_port cookie
    root=$(_rabbitmq_root)
    [ -x "$root$_RABBITMQ_BIN/rabbitmq-server" ] || {
        _rabbitmq_log "no RabbitMQ in $root: run rabbitmq_install"
        return 1
    }
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
    export FASTFRAME_RABBITMQ_ROOT=$root
    export FASTFRAME_RABBITMQCTL=$dir/rabbitmqctl
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

    _rabbitmq_write_ctl "$FASTFRAME_RABBITMQCTL"
    if ! _rabbitmq_in_root epmd -daemon -address 127.0.0.1 -port "$epmd_port"; then
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
    # The redirections are the subshell's: on the function call, bash would keep
    # a copy of our stdout open in the node, and a caller reading it to its end
    # would wait for the node to exit.
    # shellcheck disable=SC2016  # expanded by the shell in the root
    (_rabbitmq_in_root /bin/sh -c 'cd "$HOME" && exec "$0"' "$_RABBITMQ_BIN/rabbitmq-server") \
        </dev/null >>"$dir/log/startup.log" 2>&1 &
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
        _rabbitmq_in_root epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    # The empty mount point each process in the root mounted the directory on.
    $(_rabbitmq_sudo) rmdir "${FASTFRAME_RABBITMQ_ROOT:-}$dir" 2>/dev/null || true
    unset FASTFRAME_RABBITMQ_DIR FASTFRAME_RABBITMQ_ROOT FASTFRAME_AMQP_URL FASTFRAME_RABBITMQCTL \
        RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS RABBITMQ_NODE_PORT \
        RABBITMQ_DIST_PORT ERL_EPMD_ADDRESS ERL_EPMD_PORT RABBITMQ_CONF_ENV_FILE \
        RABBITMQ_CONFIG_FILE RABBITMQ_ADVANCED_CONFIG_FILE \
        RABBITMQ_ENABLED_PLUGINS_FILE RABBITMQ_MNESIA_BASE RABBITMQ_LOG_BASE \
        RABBITMQ_PID_FILE RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS RABBITMQ_CTL_ERL_ARGS
    return 0
}
