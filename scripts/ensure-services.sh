#!/usr/bin/env bash
# Make sure the services signup-worker needs are up on this (Debian 12) machine:
#   - PostgreSQL on 127.0.0.1:5432, user postgres, no password for local TCP connections
#   - RabbitMQ on 127.0.0.1:5672, guest/guest
#   - the psql client and the C toolchain that Rust builds need (cargo itself is assumed)
#
# Idempotent. Silent when everything is already there (the usual case); otherwise it says
# what it does on stderr. Installs missing packages with apt-get (needs root or sudo).
#
# Environment:
#   ENSURE_SERVICES_TIMEOUT  seconds to wait for each service to come up (default 90)
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
AMQP_HOST=127.0.0.1
AMQP_PORT=5672
WAIT_SECS=${ENSURE_SERVICES_TIMEOUT:-90}

log() { echo "ensure-services: $*" >&2; }
die() {
    echo "ensure-services: ERROR: $*" >&2
    exit 1
}

# Run a command as root (directly when we are root, else through sudo).
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# Run a command as the postgres OS user (for socket/peer access while TCP auth is not set up).
as_postgres() {
    if [[ $(id -un) == postgres ]]; then
        "$@"
    elif [[ $(id -u) -eq 0 ]] && command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    else
        as_root su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these packages by hand: $*"
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
            die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}

# ---- probes ---------------------------------------------------------------------------------

pg_listening() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1; }

pg_login_ok() {
    PGCONNECT_TIMEOUT=5 psql -X -q -A -t -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -c 'select 1' </dev/null >/dev/null 2>&1
}

amqp_listening() {
    timeout 3 bash -c "exec 3<>/dev/tcp/${AMQP_HOST}/${AMQP_PORT}" >/dev/null 2>&1
}

# wait_for <description> <probe function> [hint]
wait_for() {
    local what=$1 probe=$2 hint=${3:-}
    local deadline=$((SECONDS + WAIT_SECS))
    until "$probe"; do
        if ((SECONDS >= deadline)); then
            die "$what did not come up within ${WAIT_SECS}s${hint:+ ($hint)}"
        fi
        sleep 1
    done
}

# ---- build dependencies and client tools ----------------------------------------------------

ensure_tools() {
    local pkgs=()
    command -v cc >/dev/null 2>&1 || pkgs+=(build-essential)
    command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
    { command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1; } || pkgs+=(postgresql-client)
    command -v curl >/dev/null 2>&1 || pkgs+=(curl)
    if ((${#pkgs[@]} > 0)); then
        apt_install "${pkgs[@]}"
    fi
    command -v cargo >/dev/null 2>&1 || log "warning: cargo not found on PATH (Rust is not installed by this script)"
}

# ---- PostgreSQL -----------------------------------------------------------------------------

pg_version() {
    # The cluster's major version: the configured cluster if there is one, else the newest
    # installed server.
    local d v=
    for d in /etc/postgresql/*/main; do
        [[ -d $d ]] || continue
        v=${d#/etc/postgresql/}
        v=${v%/main}
        break
    done
    if [[ -z $v ]]; then
        for d in /usr/lib/postgresql/*/bin/postgres; do
            [[ -x $d ]] || continue
            d=${d#/usr/lib/postgresql/}
            d=${d%%/*}
            if [[ -z $v ]] || ((d > v)); then v=$d; fi
        done
    fi
    echo "$v"
}

pg_server_installed() {
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

start_postgres() {
    if ! pg_server_installed; then
        apt_install postgresql
    fi
    local v
    v=$(pg_version)
    [[ -n $v ]] || die "PostgreSQL is installed but no version found under /usr/lib/postgresql"
    if [[ ! -d /etc/postgresql/$v/main ]]; then
        log "creating PostgreSQL $v cluster 'main'"
        as_root pg_createcluster "$v" main >/dev/null || die "pg_createcluster $v main failed"
    fi
    # apt's postinst may already have started it (or a start may be under way).
    if ! pg_listening; then
        log "starting PostgreSQL $v/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start ||
            pg_listening ||
            die "could not start PostgreSQL $v/main; see /var/log/postgresql/postgresql-$v-main.log"
    fi
    wait_for "PostgreSQL on $PG_HOST:$PG_PORT" pg_listening "see /var/log/postgresql/"
}

# Let user postgres log in over local TCP without a password (a fresh Debian cluster wants
# scram-sha-256 there). Only touches pg_hba.conf when a login has actually failed.
allow_local_trust() {
    local hba
    hba=$(as_postgres psql -X -q -A -t -c 'SHOW hba_file' 2>/dev/null || true)
    if [[ -z $hba ]]; then
        hba=/etc/postgresql/$(pg_version)/main/pg_hba.conf
    fi
    [[ -f $hba ]] || die "cannot find pg_hba.conf (tried $hba)"
    if ! grep -q '^# signup-worker: local trust' "$hba"; then
        log "allowing password-less local TCP logins in $hba"
        local tmp
        tmp=$(mktemp)
        {
            echo '# signup-worker: local trust (added by scripts/ensure-services.sh)'
            echo 'host    all    all    127.0.0.1/32    trust'
            echo 'host    all    all    ::1/128         trust'
            cat "$hba"
        } >"$tmp"
        as_root cp "$tmp" "$hba"
        rm -f "$tmp"
        as_root chown postgres:postgres "$hba" 2>/dev/null || true
    fi
    log "reloading PostgreSQL configuration"
    as_postgres psql -X -q -c 'SELECT pg_reload_conf()' >/dev/null 2>&1 ||
        as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main reload ||
        die "could not reload PostgreSQL configuration"
    local deadline=$((SECONDS + 15))
    until pg_login_ok; do
        if ((SECONDS >= deadline)); then
            die "psql -h $PG_HOST -U postgres still cannot log in; check $hba"
        fi
        sleep 1
    done
}

ensure_postgres() {
    if ! pg_listening; then
        start_postgres
    fi
    if ! pg_login_ok; then
        allow_local_trust
    fi
}

# ---- RabbitMQ -------------------------------------------------------------------------------

rabbit_running() {
    # The Erlang node of the local broker (started but perhaps not listening yet).
    pgrep -u rabbitmq -f 'beam.*rabbit' >/dev/null 2>&1
}

ensure_rabbitmq() {
    amqp_listening && return 0
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        apt_install rabbitmq-server
    fi
    if ! rabbit_running; then
        log "starting RabbitMQ"
        as_root rabbitmq-server -detached >/dev/null 2>&1 ||
            rabbit_running ||
            die "could not start RabbitMQ; see /var/log/rabbitmq/"
    else
        log "RabbitMQ node is running; waiting for port $AMQP_PORT"
    fi
    wait_for "RabbitMQ on $AMQP_HOST:$AMQP_PORT" amqp_listening "see /var/log/rabbitmq/"
}

# ---- main -----------------------------------------------------------------------------------

ensure_tools
ensure_postgres
ensure_rabbitmq
