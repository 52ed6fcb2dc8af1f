# shellcheck shell=bash
# Sourced by check-manifests.sh and check-observability.sh: root commands, apt and python3.
# (Same approach as scripts/ensure-services.sh, which these checks do not depend on.)

die() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

# Runs a command as root: directly when we are root, else through sudo without a password
# prompt (a check run by CI or a script must not hang on one), else says why and fails.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        printf 'need root to run: %s (run as root, or as a user with sudo after "sudo -v")\n' "$*" >&2
        return 1
    fi
}

# apt-get install without recommended packages, refreshing the package lists once if needed.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand"
    echo "installing $* (apt-get)" >&2
    local apt=(as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -q)
    "${apt[@]}" install --no-install-recommends "$@" >/dev/null 2>&1 ||
        { "${apt[@]}" update >/dev/null && "${apt[@]}" install --no-install-recommends "$@" >/dev/null; } ||
        die "apt-get install $* failed"
}

# The checks are partly Python: install it on purpose rather than rely on it arriving as a
# dependency of something else.
need_python3() {
    command -v python3 >/dev/null 2>&1 && return 0
    apt_install python3 python3-venv
    command -v python3 >/dev/null 2>&1 || die "python3 is still missing after installing it"
}
