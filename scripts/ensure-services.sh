#!/usr/bin/env bash
# Makes sure what signup-worker needs is up on this Debian 12 machine (with or without systemd):
#   - PostgreSQL on 127.0.0.1:5432, user postgres, no password over local TCP
#   - RabbitMQ on 127.0.0.1:5672, guest/guest
#   - psql, pg_isready, curl and the C toolchain that Rust builds need (cargo is assumed)
#
# Idempotent and silent when everything is up (the usual case); otherwise it says on stderr
# what it does. It starts what is installed but stopped, and installs what is missing with
# apt-get, as root or through password-less sudo.
#
#   ENSURE_SERVICES_TIMEOUT  seconds to wait for each service to come up (default 90)
set -euo pipefail

WAIT_SECS=${ENSURE_SERVICES_TIMEOUT:-90}

log() { echo "ensure-services: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# shellcheck source=scripts/root.sh
source "$(dirname "${BASH_SOURCE[0]}")/root.sh"

# wait_for <what> <probe...>: polls the probe until it succeeds, for at most WAIT_SECS.
wait_for() {
    local what=$1 deadline=$((SECONDS + WAIT_SECS))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || die "gave up waiting for $what after ${WAIT_SECS}s"
        sleep 0.5
    done
}

pg_listening() { pg_isready -q -h 127.0.0.1 -p 5432 -t 3 >/dev/null 2>&1; }
pg_login_ok() {
    PGCONNECT_TIMEOUT=5 psql -X -q -At -h 127.0.0.1 -p 5432 -U postgres -d postgres \
        -c 'select 1' </dev/null >/dev/null 2>&1
}
amqp_listening() { timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null; }

# The newest installed PostgreSQL server's major version (Debian 12 has one: 15).
pg_version() {
    local bin v=0
    for bin in /usr/lib/postgresql/*/bin/postgres; do
        bin=${bin#/usr/lib/postgresql/}
        [[ ${bin%%/*} =~ ^[0-9]+$ ]] && ((${bin%%/*} > v)) && v=${bin%%/*}
    done
    ((v > 0)) && echo "$v"
}

# ---- tools ----------------------------------------------------------------------------------

pkgs=()
command -v cc >/dev/null 2>&1 || pkgs+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
{ command -v psql && command -v pg_isready; } >/dev/null 2>&1 || pkgs+=(postgresql-client)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
command -v cargo >/dev/null 2>&1 || log "warning: cargo not on PATH (this script does not install Rust)"

# ---- PostgreSQL -----------------------------------------------------------------------------

if ! pg_listening; then
    pg_version >/dev/null || apt_install postgresql
    v=$(pg_version) || die "PostgreSQL installed, but no server under /usr/lib/postgresql"
    if [[ ! -d /etc/postgresql/$v/main ]]; then
        log "creating PostgreSQL $v cluster 'main'"
        as_root pg_createcluster "$v" main >/dev/null || die "pg_createcluster $v main failed"
    fi
    # apt's postinst may have started it already (or a start may be under way).
    if ! pg_listening; then
        log "starting PostgreSQL $v/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || pg_listening ||
            die "could not start PostgreSQL $v/main; see /var/log/postgresql/"
    fi
    wait_for "PostgreSQL on 127.0.0.1:5432" pg_listening
fi

# A fresh Debian cluster wants a password over TCP (scram-sha-256). What the project needs
# password-less is the role postgres from this machine: the scripts, the deployment checks
# and the tests connect as postgres (migrate creates databases, the tests create and drop
# them). So only that role is trusted, only on the loopback addresses: any other role keeps
# the rule it had, and so a role the tests create must log in with a password where the
# cluster asks for one. Done only when a login has actually failed; lines added by an older
# version of this script (which trusted every role) are left as they are.
if ! pg_login_ok; then
    v=$(pg_version) || die "cannot log in to PostgreSQL as postgres, and no local server to fix"
    hba=/etc/postgresql/$v/main/pg_hba.conf
    current=$(as_root cat "$hba") || die "cannot read $hba"
    if ! grep -q '^# signup-worker:' <<<"$current"; then
        log "trusting role postgres over 127.0.0.1 and ::1 in $hba"
        # The first matching line wins, so ours go on top.
        printf '%s\n' '# signup-worker: role postgres without password over local TCP (scripts/ensure-services.sh)' \
            'host    all    postgres    127.0.0.1/32    trust' \
            'host    all    postgres    ::1/128         trust' "$current" | as_root tee "$hba" >/dev/null
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main reload ||
        die "could not reload PostgreSQL $v/main"
    wait_for "a password-less login as postgres on 127.0.0.1:5432 (see $hba)" pg_login_ok
fi

# ---- RabbitMQ -------------------------------------------------------------------------------

if ! amqp_listening; then
    # /usr/sbin is not on every user's PATH.
    [[ -x /usr/sbin/rabbitmq-server ]] || command -v rabbitmq-server >/dev/null 2>&1 ||
        apt_install rabbitmq-server
    # The broker's Erlang node may be up but not listening yet (apt's postinst started it).
    if ! pgrep -u rabbitmq -f 'beam.*rabbit' >/dev/null 2>&1; then
        log "starting RabbitMQ"
        as_root rabbitmq-server -detached >/dev/null 2>&1 ||
            die "could not start RabbitMQ; see /var/log/rabbitmq/"
    fi
    wait_for "RabbitMQ on 127.0.0.1:5672" amqp_listening
fi
