#!/usr/bin/env bash
# Side-by-side baseline: a central PostgreSQL 15 on this machine, loaded with
# the same yrd-scale inventory, driven by pgbench over a Unix socket (no TLS,
# no network: the most favourable setting for PostgreSQL).
# Needs: apt-get install postgresql postgresql-contrib; a running cluster.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corridor=${CORRIDOR:-$here/../../target/release/corridor}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp"  # pgbench runs as postgres and writes its logs here
"$corridor" demo export --scale yrd --out "$tmp/yrd.jsonl"
psql() { sudo -u postgres psql -q -v ON_ERROR_STOP=1 "$@"; }
sudo -u postgres dropdb --if-exists corridor_bench
sudo -u postgres createdb corridor_bench
psql corridor_bench -f "$here/schema.sql"
# COPY's text format treats backslashes specially; the demo data has none.
psql corridor_bench -c "\\copy raw(doc) from '$tmp/yrd.jsonl'"
psql corridor_bench -f "$here/load.sql"
# Per-transaction logs give the percentiles pgbench does not print.
percentiles() {
  python3 - "$@" <<'PY'
import glob, sys
lat = sorted(int(l.split()[2]) / 1000 for f in glob.glob(sys.argv[1] + "*") for l in open(f))
pick = lambda p: lat[min(len(lat) - 1, int(round((len(lat) - 1) * p)))]
print(f"calls {len(lat)}  p50 {pick(.5):.2f} ms  p90 {pick(.9):.2f} ms  p99 {pick(.99):.2f} ms  max {lat[-1]:.2f} ms")
PY
}
run() {  # name clients script
  local prefix="$tmp/$1"
  (cd "$tmp" && sudo -u postgres pgbench -n -c "$2" -j 2 -T 10 -l --log-prefix="$prefix" -f "$3" corridor_bench) \
    | grep -E "^tps" || true
  percentiles "$prefix"
}
for c in 1 32; do
  echo "== search, $c clients"
  run "search$c" $c "$here/search.sql"
done
echo "== reserve, 64 clients (uncontended)"
run reserve 64 "$here/reserve.sql"
echo "== reserve paid with one shared voucher, 64 clients"
run reserve_voucher 64 "$here/reserve_voucher.sql"
echo "== reserve paid with one shared voucher, 1 client"
run reserve_voucher1 1 "$here/reserve_voucher.sql"
psql corridor_bench -Atc "SELECT 'bookings stored: ' || count(*) FROM bookings"
