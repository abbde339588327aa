#!/usr/bin/env bash
# PostgreSQL through vdi against pg_basebackup alone, interleaved, the median of ROUNDS
# runs of each: a throw-away cluster (initdb into DIR, run as nobody when root, on a
# socket in DIR and a free port), pgbench -i -s SCALE for data, then
#   pg_basebackup -D dir (plain and tar), pg_basebackup -D - -Ft into a file and piped
#   into vdi backup -,
#   vdi backup postgres: through 1 and 4 devices, vdi restore postgres-data: (which
#   runs pg_verifybackup), pg_verifybackup alone;
# with the size of what each wrote. The cluster is stopped and DIR removed at the end.
#
#   cargo build --release -p vdi-cli
#   crates/vdi-cli/scripts/pg_compare.sh [DIR] [SCALE] [ROUNDS]
#
# DIR is on the medium to compare (default /var/tmp/vdi-pg-compare). Needs PostgreSQL's
# programs (apt-get install postgresql).
set -euo pipefail

DIR=${1:-/var/tmp/vdi-pg-compare}
SCALE=${2:-100}
ROUNDS=${3:-3}
HERE=$(cd "$(dirname "$0")/../../.." && pwd)
VDI=${VDI:-$HERE/target/release/vdi}
[ -x "$VDI" ] || { echo "build first: cargo build --release -p vdi-cli ($VDI missing)" >&2; exit 1; }
BIN=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")")
[ -x "$BIN/pg_ctl" ] || { echo "PostgreSQL's programs are missing: apt-get install postgresql" >&2; exit 1; }

mkdir -p "$DIR"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown nobody: "$DIR"
    as_pg=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
stop() {
    "${as_pg[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap stop EXIT
cd "$DIR"
"${as_pg[@]}" "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
"${as_pg[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories='$DIR' -c max_wal_size=4GB" start >/dev/null
CONN="host=$DIR port=$PORT user=postgres"
"$BIN/pgbench" -i -s "$SCALE" -q -d "$CONN dbname=postgres" >/dev/null 2>&1
"$BIN/psql" -X -q -d "$CONN dbname=postgres" -c CHECKPOINT
sync

declare -A T S
now() { date +%s.%N; }
# measure NAME OUTPUT command...: the time of the command; the size of OUTPUT after it
# (removed first, unless KEEP=1: a command that reads it).
measure() {
    local name=$1 out=$2; shift 2
    local t0 t1
    [ "${KEEP:-0}" = 1 ] || rm -rf "$out"
    t0=$(now)
    "$@" >/dev/null
    t1=$(now)
    T[$name]="${T[$name]:-} $(echo "$t1 - $t0" | bc -l)"
    S[$name]=$(du -sb "$out" | cut -f1)
}

for r in $(seq "$ROUNDS"); do
    measure "pg_basebackup -D dir (plain)" plain "$BIN/pg_basebackup" -d "$CONN" -D plain -c fast
    measure "pg_basebackup -D dir -Ft" tardir "$BIN/pg_basebackup" -d "$CONN" -D tardir -Ft -X fetch -c fast
    measure "pg_basebackup -D - -Ft > file" base.tar sh -c "\"$BIN/pg_basebackup\" -d \"$CONN\" -D - -Ft -X fetch -c fast > base.tar"
    measure "pg_basebackup -Ft | vdi backup -" bkp sh -c "\"$BIN/pg_basebackup\" -d \"$CONN\" -D - -Ft -X fetch -c fast | \"$VDI\" backup - bkp --quiet"
    measure "vdi backup postgres:, 1 device" bk1 "$VDI" backup "postgres:$CONN" bk1 --quiet
    measure "vdi backup postgres:, 4 devices" bk4 "$VDI" backup "postgres:$CONN" bk4 --devices 4 --quiet
    measure "vdi restore postgres-data: (4)" restored "$VDI" restore bk4 "postgres-data:$DIR/restored" --quiet
    KEEP=1 measure "pg_verifybackup alone" plain "$BIN/pg_verifybackup" plain
    rm -rf restored
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
DB=$("$BIN/psql" -X -A -t -d "$CONN dbname=postgres" -c "SELECT pg_database_size('postgres')")
printf 'PostgreSQL %s, pgbench scale %s (database %s MiB), median of %s\n' \
    "$("$BIN/postgres" --version | awk '{print $3}')" "$SCALE" $((DB >> 20)) "$ROUNDS"
printf '%-36s %10s %12s %12s\n' "what" "seconds" "MiB written" "MiB/s"
for k in "pg_basebackup -D dir (plain)" "pg_basebackup -D dir -Ft" "pg_basebackup -D - -Ft > file" \
         "pg_basebackup -Ft | vdi backup -" "vdi backup postgres:, 1 device" "vdi backup postgres:, 4 devices" \
         "vdi restore postgres-data: (4)" "pg_verifybackup alone"; do
    m=$(echo "${T[$k]}" | median)
    mib=$(echo "${S[$k]} / 1048576" | bc -l)
    printf '%-36s %10.3f %12.0f %12.0f\n' "$k" "$m" "$mib" "$(echo "$mib / $m" | bc -l)"
done
