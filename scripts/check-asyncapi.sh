#!/usr/bin/env bash
# Validates docs/asyncapi.yaml, and the JSON Schemas it references, with the AsyncAPI CLI; then
# checks the schemas' named edge cases (tests/schema_edges.json) with ajv, the JavaScript validator
# that comes with the CLI, so that their patterns mean in ECMA-262 what they mean in Rust.
#
# The CLI (version and every dependency pinned by scripts/asyncapi-cli/package-lock.json) is
# installed once with `npm ci` into a cache directory outside the repository, keyed by the
# lock file's hash: $SIGNUP_WORKER_TOOLS, else $XDG_CACHE_HOME/signup-worker, else
# ~/.cache/signup-worker. The first run downloads about 1,500 npm packages (1.5 GB unpacked,
# a minute or two); later runs take a few seconds. Install scripts are not run: validation
# needs none, and some would download browsers.
#
# Without Node.js 18+ and npm the check is skipped with a message, not failed.
set -euo pipefail
cd "$(dirname "$0")/.."

lock=scripts/asyncapi-cli/package-lock.json
version=$(sed -n 's/.*"@asyncapi\/cli": "\([0-9.]*\)".*/\1/p' scripts/asyncapi-cli/package.json)

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "SKIPPED: docs/asyncapi.yaml not validated: Node.js and npm are not installed" \
        "(the AsyncAPI CLI $version needs them; apt-get install nodejs npm)"
    exit 0
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 18)); then
    echo "SKIPPED: docs/asyncapi.yaml not validated: Node.js $(node --version) is too old" \
        "for the AsyncAPI CLI $version (18 or later)"
    exit 0
fi

tools=${SIGNUP_WORKER_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/signup-worker}
dir="$tools/asyncapi-cli-$version-$(sha256sum "$lock" | cut -c1-12)"
cli="$dir/node_modules/.bin/asyncapi"
if [[ ! -x $cli ]]; then
    echo "installing @asyncapi/cli $version into $dir (once)"
    mkdir -p "$tools"
    # Installed beside, then renamed: an interrupted install never looks complete.
    tmp=$(mktemp -d "$dir.partial.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    cp scripts/asyncapi-cli/package.json "$lock" "$tmp/"
    npm ci --prefix "$tmp" --ignore-scripts --no-audit --no-fund --loglevel=error
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
fi

# The CLI sends usage metrics unless its config file says not to; it lives with the CLI.
metrics_config="$dir/analytics.json"
if [[ ! -f $metrics_config ]]; then
    echo '{"analyticsEnabled":"false","infoMessageShown":"true","userID":"signup-worker-tests"}' \
        >"$metrics_config"
fi
export ASYNCAPI_METRICS_CONFIG_PATH=$metrics_config

echo "asyncapi $("$cli" --version)"
# Warnings fail too; the only diagnostic left is the note that AsyncAPI 3.1 exists.
"$cli" validate --fail-severity warn docs/asyncapi.yaml

# The same schemas under ajv (ECMA-262 regular expressions), on the named edge cases.
NODE_PATH="$dir/node_modules" node scripts/asyncapi-cli/ecma-agreement.cjs
