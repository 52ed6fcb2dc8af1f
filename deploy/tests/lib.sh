# shellcheck shell=bash
# Sourced by check-manifests.sh and check-observability.sh: root commands, apt and python3.

die() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

# as_root and apt_install, shared with scripts/ensure-services.sh.
# shellcheck source=scripts/root.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/root.sh"

# The checks are partly Python: install it on purpose rather than rely on it arriving as a
# dependency of something else.
need_python3() {
    command -v python3 >/dev/null 2>&1 && return 0
    apt_install python3 python3-venv
    command -v python3 >/dev/null 2>&1 || die "python3 is still missing after installing it"
}
