#!/usr/bin/env bash
# Corridor and a central PostgreSQL 15, side by side, in one run on the same
# data and the same machine, one after the other (never both under load):
#   1. a private PostgreSQL cluster (initdb --locale=C.UTF-8, tuned below),
#      loaded with the yrd inventory from `corridor demo export`, driven by
#      pgbench -M prepared over a Unix socket (no TLS, no network);
#   2. the nine-city yrd mesh (`corridor up --scale yrd`), driven by
#      `corridor bench`, through the gateway and straight to one node.
# Prints one table: calls/s, latency and the server processes' CPU per call
# (/proc: utime + stime of every server process, reaped children included,
# over the timed run: pgbench's whole run, corridor bench's --server-pid).
# Needs: PostgreSQL 15 with contrib (Debian: postgresql postgresql-contrib),
# python3, and a release build (cargo build --release). Run as root, the
# cluster runs as the `postgres` user; as anyone else, as that user.
# Env: CORRIDOR (binary), SECONDS_PER_RUN (default 10), PORT_BASE (26443).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corridor=${CORRIDOR:-$here/../../target/release/corridor}
secs=${SECONDS_PER_RUN:-10}
port_base=${PORT_BASE:-26443}
pgbin=${PGBIN:-/usr/lib/postgresql/15/bin}
tmp=$(mktemp -d)
pgdata=$tmp/pg
mesh_pid=
cleanup() {
  [ -n "$mesh_pid" ] && kill "$mesh_pid" 2>/dev/null && wait "$mesh_pid" 2>/dev/null
  [ -f "$pgdata/postmaster.pid" ] && as_pg "$pgbin/pg_ctl" -D "$pgdata" -m fast stop >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
if [ "$(id -u)" = 0 ]; then
  chown postgres "$tmp"
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi
[ -x "$corridor" ] || { echo "no corridor binary at $corridor: cargo build --release" >&2; exit 2; }

# CPU seconds so far of a process tree: every live process's own time, and the
# root's reaped children (a backend that exits moves its time there).
cpu_of() {
  python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1]); hz = os.sysconf("SC_CLK_TCK")
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()
kids = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            kids.setdefault(int(stat(p)[1]), []).append(int(p))
        except OSError:
            pass
total, todo = 0, [root]
while todo:
    pid = todo.pop()
    try:
        f = stat(pid)
    except OSError:
        continue
    total += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if pid == root else 0)
    todo += kids.get(pid, [])
print(total / hz)
PY
}
# Each run appends a row to rows.tsv: system, workload, clients, calls,
# seconds, p50 and p99 ms, and the CPU seconds the servers spent.

echo "== exporting the yrd inventory" >&2
"$corridor" demo export --scale yrd --out "$tmp/yrd.jsonl"
chmod 644 "$tmp/yrd.jsonl"

echo "== PostgreSQL: a private C.UTF-8 cluster in $pgdata" >&2
as_pg "$pgbin/initdb" -D "$pgdata" --locale=C.UTF-8 --encoding=UTF8 -A trust >/dev/null
# Tuned as for a dedicated OLTP server on this machine kind (2 cores, 24 GiB,
# SSD). Durability stays as shipped: fsync, full_page_writes and
# synchronous_commit on. WAL and checkpoints are sized so that no checkpoint
# lands inside a run; JIT is off (it only slows millisecond queries).
cat >>"$pgdata/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$tmp'
max_connections = 200
shared_buffers = 4GB
effective_cache_size = 16GB
work_mem = 16MB
maintenance_work_mem = 1GB
wal_buffers = 64MB
max_wal_size = 16GB
min_wal_size = 2GB
checkpoint_timeout = 30min
checkpoint_completion_target = 0.9
random_page_cost = 1.1
effective_io_concurrency = 200
jit = off
synchronous_commit = on
fsync = on
full_page_writes = on
EOF
as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$tmp/pg.log" -w start >/dev/null
pg_pid=$(head -1 "$pgdata/postmaster.pid")
psql() { as_pg "$pgbin/psql" -h "$tmp" -q -X -v ON_ERROR_STOP=1 "$@"; }
psql postgres -c "CREATE DATABASE corridor_bench"
psql corridor_bench -f "$here/schema.sql" >/dev/null
# COPY's text format treats backslashes specially; the demo data has none.
psql corridor_bench -c "\\copy raw(doc) from '$tmp/yrd.jsonl'"
psql corridor_bench -f "$here/load.sql" >/dev/null
count=$(psql corridor_bench -Atc "SELECT count(*) FROM bookable")
for mode in names alltext plain; do
  "$corridor" bench search --list-queries | python3 "$here/queries.py" "$tmp/q" "$mode"
done
chmod -R a+rX "$tmp/q"
bookings() { psql corridor_bench -Atc "SELECT count(*) FROM bookings"; }

# pgbench over the socket; latencies from its per-transaction log.
pgrun() { # label clients calls-counter(-: transactions) pgbench-args…
  local label=$1 clients=$2 counter=$3; shift 3
  local logs="$tmp/log-${label// /_}-$clients" before after c0 c1
  mkdir -p "$logs" && chown "$(stat -c %u "$tmp")" "$logs"
  before=$([ "$counter" = - ] || $counter)
  c0=$(cpu_of "$pg_pid")
  (cd "$logs" && as_pg "$pgbin/pgbench" -h "$tmp" -n -M prepared -c "$clients" -j 2 -T "$secs" -l \
    --log-prefix="$logs/tx" "$@" corridor_bench >"$logs/out" 2>&1) || { cat "$logs/out" >&2; exit 1; }
  c1=$(cpu_of "$pg_pid")
  after=$([ "$counter" = - ] || $counter)
  python3 - "$logs" "$label" "$clients" "$secs" "${before:-}" "${after:-}" "$c0" "$c1" >>"$tmp/rows.tsv" <<'PY'
import glob, sys
logs, label, clients, secs, before, after, c0, c1 = sys.argv[1:]
lat = sorted(int(l.split()[2]) / 1000 for f in glob.glob(logs + "/tx*") for l in open(f))
calls = int(after) - int(before) if before else len(lat)
pick = lambda p: lat[min(len(lat) - 1, int(round((len(lat) - 1) * p)))]
print(f"PostgreSQL\t{label}\t{clients}\t{calls}\t{secs}\t{pick(.5):.2f}\t{pick(.99):.2f}\t{float(c1) - float(c0):.2f}")
PY
  tail -1 "$tmp/rows.tsv" >&2
}
scripts() { for f in "$tmp"/q/"$1"-*.sql; do echo -f "$f"; done; }
for c in 1 32; do
  echo "== PostgreSQL: search, names, unranked and without facets, $c clients" >&2
  pgrun "search (names, unranked, no facets)" $c - $(scripts plain)
done
psql corridor_bench -f "$here/rank.sql" >/dev/null
for c in 1 32; do
  echo "== PostgreSQL: search, names, $c clients" >&2
  pgrun "search (names)" $c - $(scripts names)
  echo "== PostgreSQL: search, names and description, $c clients" >&2
  pgrun "search (with description)" $c - $(scripts alltext)
done
echo "== PostgreSQL: bookings, 64 clients" >&2
pgrun "bookings, uncontended" 64 bookings -D clients=64 -D count="$count" -D i=0 -f "$here/reserve.sql"
echo "== PostgreSQL: voucher-paid bookings, 64 clients" >&2
pgrun "voucher-paid bookings" 64 bookings -D clients=64 -D count="$count" -D i=0 -f "$here/reserve_voucher.sql"
overlaps=$(psql corridor_bench -Atc "SELECT count(*) FROM bookings a JOIN bookings b
  ON a.instrument = b.instrument AND a.id < b.id AND a.during && b.during")
held=$(psql corridor_bench -Atc "SELECT held_fen = 25000 * (SELECT count(*) FROM bookings WHERE idempotency_key LIKE 'pgv-%')
  FROM vouchers")
echo "PostgreSQL: $count bookable instruments, $(bookings) bookings stored, overlapping: $overlaps, voucher holds add up: $held" >&2
as_pg "$pgbin/pg_ctl" -D "$pgdata" -m fast stop >/dev/null

echo "== Corridor: the yrd mesh" >&2
"$corridor" up --scale yrd --data "$tmp/mesh" --port-base "$port_base" >"$tmp/up.log" 2>&1 &
mesh_pid=$!
# Wait for the mesh's own "ready" line (or for it to exit).
grep -m1 -q "corridor ready" < <(timeout 900 tail -n +1 -f --pid "$mesh_pid" "$tmp/up.log") \
  || { cat "$tmp/up.log" >&2; exit 1; }
export CORRIDOR_GATEWAY=https://127.0.0.1:$port_base CORRIDOR_CERTS=$tmp/mesh/certs
node_url() { # the demo's port order: gateway, then the cities in corridor order
  local i=0; for c in shanghai jiaxing hangzhou jinhua huzhou suzhou hefei wuhu xuancheng; do
    i=$((i + 1)); [ "$c" = "$1" ] && echo "https://127.0.0.1:$((port_base + i))"; done
}
"$corridor" voucher issue --city wuhu --uscc 91340200MA2N00000T --face 9000000 --share 50 --annual 10000000 \
  >/dev/null
crun() { # label clients bench-args…
  local label=$1 clients=$2; shift 2
  local out
  out=$("$corridor" bench "$@" --json --seconds "$secs" --server-pid "$mesh_pid")
  python3 - "$label" "$clients" "$secs" "$out" >>"$tmp/rows.tsv" <<'PY'
import json, sys
label, clients, secs, out = sys.argv[1:]
r = json.loads(out)["runs"][0]
if r["refused"] or r["failed"]:
    print(f"warning: {label}: {r['refused']} calls refused, {r['failed']} failed", file=sys.stderr)
print(f"{label}\t{clients}\t{r['ok']}\t{secs}\t{r['p50_ms']:.2f}\t{r['p99_ms']:.2f}\t{r['server_cpu_s']:.2f}")
PY
  tail -1 "$tmp/rows.tsv" >&2
}
for c in 1 32; do
  echo "== Corridor: search, $c clients" >&2
  crun "Corridor, gateway	search" $c search --concurrency $c
  crun "Corridor, node (Hangzhou)	search" $c search --concurrency $c --no-gateway --direct hangzhou \
    --node "$(node_url hangzhou)"
done
echo "== Corridor: bookings, 64 clients" >&2
crun "Corridor, node (Hefei)	bookings, uncontended" 64 reserve --no-gateway --direct --node "$(node_url hefei)"
crun "Corridor, gateway	bookings, uncontended" 64 reserve
crun "Corridor, gateway	voucher-paid bookings" 64 reserve --voucher wuhu/v-1
echo "== Corridor: every Hefei booking, 500 a page, straight to the node" >&2
listing=$("$corridor" bench bookings --city hefei --node "$(node_url hefei)" --size 500 --json)

python3 - "$tmp/rows.tsv" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print("| workload | clients | system | calls/s | p50 ms | p99 ms | server CPU per call |")
print("|---|---|---|---|---|---|---|")
order = lambda r: (r[1].split(" (")[0].split(",")[0], r[1], int(r[2]), r[0])
for system, work, clients, calls, secs, p50, p99, cpu in sorted(rows, key=order):
    calls, secs, cpu = int(calls), float(secs), float(cpu)
    per = f"{1000 * cpu / calls:.3f} ms" if calls else "-"
    print(f"| {work} | {clients} | {system} | {calls / secs:,.0f} | {p50} | {p99} | {per} |")
PY
python3 - "$listing" <<'PY'
import json, sys
r = json.loads(sys.argv[1])["runs"][0]
print(f"\nListing bookings at the node (Hefei, {r['bookings']:,} stored), {r['ok']} pages of 500: "
      f"p50 {r['p50_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms per page")
PY
