# shellcheck shell=bash
# Sourced by scripts/ensure-services.sh and deploy/tests/lib.sh: root commands and apt-get.
# The caller defines `die` (prints its arguments and exits).

# Runs a command as root: directly when we are root, else through sudo without a password
# prompt (a script run by CI or by another script must not hang on one), else says why.
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

# apt-get install without recommended packages (a systemd machine would leave them running);
# the package lists are refreshed once, before the first install.
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: $*"
    local apt=(as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -q)
    if ((!APT_UPDATED)); then
        echo "apt-get update" >&2
        "${apt[@]}" update >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    echo "apt-get install --no-install-recommends $*" >&2
    "${apt[@]}" install --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}
