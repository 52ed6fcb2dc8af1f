#!/usr/bin/env bash
# The numbering trigger's cost per row, PostgreSQL alone: 100-row INSERTs (pgbench, one
# client) into `tenants` with
#   - no numbering trigger (the floor: heap, indexes, the retire trigger's absence of work),
#   - the trigger before reclaiming existed (sequence only, as in migration 2),
#   - the current trigger (numbering lock, pool lookup, then the sequence) with an empty pool.
# Each variant runs ROUNDS times, interleaved, on a fresh table; the script prints the median
# of each and the numbering cost per row (variant minus floor).
#
#   scripts/bench-numbering.sh            ROWS=20000 ROUNDS=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-20000}
ROUNDS=${ROUNDS:-5}
DB=signup_worker_bench_numbering
SERVER=${PG_SERVER:-postgres://postgres@127.0.0.1:5432}
export DATABASE_URL="$SERVER/$DB"

scripts/ensure-services.sh >/dev/null
cargo build --release --quiet
BIN=target/release/signup-worker
PGBENCH=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | tail -1)

psql -X -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
FOUNDING_CAPACITY=100000000 "$BIN" migrate >/dev/null
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$DATABASE_URL" "$@"; }

# The function body of migration 2, before reclaiming existed.
q -c "CREATE FUNCTION numbering_before_reclaim() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    NEW.founding_member_number := NULL;
    IF NEW.is_demo THEN RETURN NEW; END IF;
    BEGIN
        NEW.founding_member_number := nextval('founding_member_number_seq');
    EXCEPTION WHEN sequence_generator_limit_exceeded THEN
        NEW.founding_member_number := NULL;
    END;
    RETURN NEW;
END \$\$;
CREATE TRIGGER bench_numbering_before_reclaim BEFORE INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION numbering_before_reclaim();
ALTER TABLE tenants DISABLE TRIGGER bench_numbering_before_reclaim;"

script=$(mktemp)
cat >"$script" <<'SQL'
INSERT INTO tenants (event_id, slug, business_name, owner_email, tier, is_demo)
SELECT gen_random_uuid(), 'b-' || replace(gen_random_uuid()::text, '-', ''),
       'Bench Business ' || g, 'owner' || g || '@bench.example', 'starter', false
FROM generate_series(1, 100) AS g;
SQL

use() {
    local current=ENABLE before=DISABLE
    case $1 in
        none) current=DISABLE ;;
        before) current=DISABLE before=ENABLE ;;
    esac
    q -c "ALTER TABLE tenants $current TRIGGER tenants_assign_founding_member_number;
          ALTER TABLE tenants $before TRIGGER bench_numbering_before_reclaim"
}

run() {
    use "$1"
    q -c "TRUNCATE tenants RESTART IDENTITY; TRUNCATE founding_number_retired, founding_number_pool;
          UPDATE founding_reclaim_state SET checked_upto = 0;
          ALTER SEQUENCE founding_member_number_seq RESTART WITH 1"
    q -c "VACUUM ANALYZE tenants"
    local t0 t1
    t0=$(date +%s.%N)
    "$PGBENCH" -n -c 1 -t $((ROWS / 100)) -f "$script" "$DATABASE_URL" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" -v n="$ROWS" 'BEGIN { printf "%.3f\n", (b - a) * 1e6 / n }'
}

declare -A samples
for ((r = 1; r <= ROUNDS; r++)); do
    for v in none before current; do
        samples[$v]+="$(run "$v") "
    done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
none=$(median "${samples[none]}")
before=$(median "${samples[before]}")
current=$(median "${samples[current]}")
printf 'microseconds per inserted row, median of %d rounds of %d rows (one client):\n' "$ROUNDS" "$ROWS"
printf '  %-44s %8s\n' "no numbering trigger" "$none" \
    "numbering before reclaiming (migration 2)" "$before" \
    "numbering with pool and lock, empty pool" "$current"
awk -v n="$none" -v b="$before" -v c="$current" 'BEGIN {
    printf "numbering cost per row: before %.2f us, now %.2f us (%+.0f%%)\n", b - n, c - n, ((c - n) / (b - n) - 1) * 100
}'
rm -f "$script"
psql -X -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
