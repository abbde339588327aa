#!/usr/bin/env bash
# Compares `vdi backup` / `vdi restore` with cp, a pipe (cat | cat) and sqlite3 .backup,
# interleaved, and prints the median of ROUNDS runs of each.
#
#   cargo build --release -p vdi-cli
#   crates/vdi-cli/scripts/compare.sh [DIR] [SIZE_MIB] [ROUNDS]
#
# DIR should be on tmpfs (default /dev/shm/vdi-compare; removed at the end). Needs
# sqlite3 for the database rows (apt-get install sqlite3), else they are skipped.
set -euo pipefail

DIR=${1:-/dev/shm/vdi-compare}
SIZE=${2:-1024}
ROUNDS=${3:-3}
HERE=$(cd "$(dirname "$0")/../../.." && pwd)
VDI=${VDI:-$HERE/target/release/vdi}
[ -x "$VDI" ] || { echo "build first: cargo build --release -p vdi-cli ($VDI missing)" >&2; exit 1; }

mkdir -p "$DIR"
trap 'rm -rf "$DIR"' EXIT
# Everything is written to DIR (the medium of the comparison). The engine streams a
# SQLite database's pages straight into its buffers (no copy in TMPDIR); TMPDIR points
# there too, so that anything that did use it would be measured on the same medium.
export TMPDIR="$DIR"
cd "$DIR"
head -c $((SIZE << 20)) /dev/urandom > src.bin
HAVE_SQLITE=0
if command -v sqlite3 >/dev/null; then
    HAVE_SQLITE=1
    "$VDI" demo --size "${SIZE}M" --dir "$DIR/demo" --keep --quiet
    DB="$DIR/demo/sample.db"
fi
sync

declare -A T
now() { date +%s.%N; }
# measure NAME OUTPUT command...: removes OUTPUT (this command's previous output) just
# before running, so every command writes into memory freed a moment ago. (In this guest,
# memory freed a while ago is handed back to the host and is slow to touch again; removing
# every output at the start of a round would favour whatever runs first.)
measure() {
    local name=$1 out=$2; shift 2
    local t0 t1
    rm -rf "$out"
    t0=$(now)
    "$@" >/dev/null
    t1=$(now)
    T[$name]="${T[$name]:-} $(echo "$t1 - $t0" | bc -l)"
}

for r in $(seq "$ROUNDS"); do
    measure "cp" cp.bin cp src.bin cp.bin
    measure "cat | cat" pipe.bin sh -c 'cat src.bin | cat > pipe.bin'
    measure "vdi backup, 1 device" bk1 "$VDI" backup file:src.bin bk1 --quiet
    measure "vdi restore, 1 device" out1.bin "$VDI" restore bk1 file:out1.bin --quiet
    measure "vdi backup, 4 devices" bk4 "$VDI" backup file:src.bin bk4 --devices 4 --quiet
    measure "vdi restore, 4 devices" out4.bin "$VDI" restore bk4 file:out4.bin --quiet
    measure "vdi backup, 1 device, zstd:1" bkz "$VDI" backup file:src.bin bkz --compress zstd:1 --quiet
    measure "vdi restore, 1 device, zstd:1" outz.bin "$VDI" restore bkz file:outz.bin --quiet
    cmp src.bin out1.bin && cmp src.bin out4.bin && cmp src.bin outz.bin
    # The same without writing a new file (no page allocation: the transport alone).
    measure "cat | cat > /dev/null" none sh -c 'cat src.bin | cat > /dev/null'
    measure "vdi backup - > /dev/null" none sh -c "\"$VDI\" backup file:src.bin - --quiet > /dev/null"
    measure "vdi restore - > /dev/null" none sh -c "\"$VDI\" restore bk1 - --quiet > /dev/null"
    if [ $HAVE_SQLITE = 1 ]; then
        measure "sqlite3 .backup" sq.db sqlite3 "$DB" ".backup sq.db"
        measure "vdi backup sqlite:, 1 device" bksq "$VDI" backup "sqlite:$DB" bksq --quiet
        measure "vdi backup sqlite:, 4 devices" bksq4 "$VDI" backup "sqlite:$DB" bksq4 --devices 4 --quiet
        measure "vdi restore sqlite:, 1 device" sq-out.db "$VDI" restore bksq "sqlite:sq-out.db" --quiet
    fi
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
DBSIZE=$([ $HAVE_SQLITE = 1 ] && stat -c %s "$DB" || echo 0)
printf '%-36s %10s %12s\n' "what ($SIZE MiB, median of $ROUNDS)" "seconds" "MiB/s"
for k in "cp" "cat | cat" "vdi backup, 1 device" "vdi restore, 1 device" "vdi backup, 4 devices" \
         "vdi restore, 4 devices" "vdi backup, 1 device, zstd:1" "vdi restore, 1 device, zstd:1" \
         "cat | cat > /dev/null" "vdi backup - > /dev/null" "vdi restore - > /dev/null" \
         "sqlite3 .backup" "vdi backup sqlite:, 1 device" "vdi backup sqlite:, 4 devices" \
         "vdi restore sqlite:, 1 device"; do
    [ -n "${T[$k]:-}" ] || continue
    m=$(echo "${T[$k]}" | median)
    bytes=$((SIZE << 20))
    case "$k" in *sqlite*) bytes=$DBSIZE ;; esac
    printf '%-36s %10.3f %12.0f\n' "$k" "$m" "$(echo "$bytes / 1048576 / $m" | bc -l)"
done
