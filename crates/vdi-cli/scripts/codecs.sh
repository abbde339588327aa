#!/usr/bin/env bash
# The cost of compression and encryption at rest: `vdi backup` / `vdi restore` through one
# device with each stored-stream codec (none, zstd:1, zstd:-5, lz4, and encrypted), against
# the programs a user would compare them with on the same file in the same run (cp,
# cat | cat, zstd -1, zstd -1 -T0, lz4 -1, openssl enc -aes-256-ctr: openssl's enc has no
# AEAD mode), interleaved; prints the median of ROUNDS runs of each: wall seconds, CPU
# seconds (user + sys, children included), MiB/s, and the ratio of its throughput to
# cat | cat's; then the issue's targets, met or missed. With --json, one JSON object.
#
#   cargo build --release -p vdi-cli
#   crates/vdi-cli/scripts/codecs.sh [--json] [DIR] [SIZE_MIB] [ROUNDS]
#
# DIR should be on tmpfs (default /dev/shm/vdi-codecs; removed at the end). The data is
# compressible (base64 of random bytes and runs of decimal numbers, about 1.6:1 with
# zstd -1) unless DATA=random (incompressible).
set -euo pipefail

JSON=0
if [ "${1:-}" = "--json" ]; then JSON=1; shift; fi
DIR=${1:-/dev/shm/vdi-codecs}
SIZE=${2:-1024}
ROUNDS=${3:-3}
HERE=$(cd "$(dirname "$0")/../../.." && pwd)
VDI=${VDI:-$HERE/target/release/vdi}
[ -x "$VDI" ] || { echo "build first: cargo build --release -p vdi-cli ($VDI missing)" >&2; exit 1; }
for t in zstd lz4 openssl bc; do
    command -v $t >/dev/null || echo "note: $t is not installed; its rows are skipped" >&2
done

mkdir -p "$DIR"
trap 'rm -rf "$DIR"' EXIT
export TMPDIR="$DIR"
cd "$DIR"
if [ "${DATA:-mixed}" = random ]; then
    head -c $((SIZE << 20)) /dev/urandom > src.bin
else
    for _ in $(seq $((SIZE * 6 / 10 + 4))); do
        head -c 786432 /dev/urandom | base64 -w0
        seq 1 150000
    done | head -c $((SIZE << 20)) > src.bin || true
fi
[ "$(stat -c %s src.bin)" = $((SIZE << 20)) ] || { echo "could not make the source" >&2; exit 1; }
head -c 32 /dev/urandom > key
sync

declare -A W C
ORDER=()
# measure NAME OUTPUT command...: removes OUTPUT just before running (see compare.sh).
measure() {
    local name=$1 out=$2 t
    shift 2
    rm -rf "$out"
    [ -n "${W[$name]:-}" ] || ORDER+=("$name")
    t=$( { TIMEFORMAT='%R %U %S'; time "$@" >/dev/null 2>>"$DIR/errors.log"; } 2>&1 )
    W[$name]="${W[$name]:-} $(echo "$t" | awk '{print $1}')"
    C[$name]="${C[$name]:-} $(echo "$t" | awk '{print $2 + $3}')"
}
have() { command -v "$1" >/dev/null; }

for _ in $(seq "$ROUNDS"); do
    measure "cp" cp.bin cp src.bin cp.bin
    measure "cat | cat" pipe.bin sh -c 'cat src.bin | cat > pipe.bin'
    if have zstd; then
        measure "zstd -1" z1.zst zstd -q -f -1 -T1 src.bin -o z1.zst
        measure "zstd -1 -T0" zt.zst zstd -q -f -1 -T0 src.bin -o zt.zst
    fi
    have lz4 && measure "lz4 -1" l.lz4 lz4 -q -f -1 src.bin l.lz4
    have openssl && measure "openssl enc -aes-256-ctr" e.enc \
        openssl enc -aes-256-ctr -pbkdf2 -pass pass:bench -in src.bin -out e.enc
    for c in none zstd:1 zstd:-5 lz4; do
        measure "vdi backup $c" "bk-$c" "$VDI" backup file:src.bin "bk-$c" --compress "$c" --quiet
    done
    for c in none zstd:1 lz4; do
        measure "vdi backup $c + encrypt" "bke-$c" "$VDI" backup file:src.bin "bke-$c" \
            --compress "$c" --encrypt --key-file key --quiet
    done
    for c in zstd:1 lz4; do
        measure "vdi restore $c" "out-$c" "$VDI" restore "bk-$c" "file:out-$c" --quiet
        measure "vdi restore $c + encrypt" "oute-$c" "$VDI" restore "bke-$c" "file:oute-$c" \
            --key-file key --quiet
        cmp src.bin "out-$c" && cmp src.bin "oute-$c"
    done
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mw() { echo "${W[$1]}" | median; }
mc() { echo "${C[$1]}" | median; }
rate() { echo "$SIZE / $1" | bc -l; }
BASE=$(mw "cat | cat")
CORES=$(nproc)
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
stored() { [ -d "$1" ] && du -sb "$1" | cut -f1 || echo 0; }

# target NAME OK DETAIL
TARGETS=()
target() { TARGETS+=("$1"$'\t'"$2"$'\t'"$3"); }
ZW=$(mw "vdi backup zstd:1"); ZEW=$(mw "vdi backup zstd:1 + encrypt"); LW=$(mw "vdi backup lz4")
r=$(echo "$ZEW / $ZW" | bc -l)
target "encrypted zstd:1 backup within 10% of unencrypted" \
    "$(echo "$r <= 1.10" | bc -l)" "$(printf 'encrypted takes %.2f x the time' "$r")"
r=$(echo "$BASE / $LW" | bc -l)
target "lz4 backup at least cat | cat" \
    "$(echo "$r >= 1" | bc -l)" "$(printf 'lz4 at %.2f x the throughput of cat | cat' "$r")"
if [ -n "${W["zstd -1"]:-}" ]; then
    want=$(echo "0.8 * $CORES * $(rate "$(mw "zstd -1")")" | bc -l)
    got=$(rate "$ZW")
    target "zstd:1 backup at least 0.8 x cores x zstd -1 (issue item 2)" \
        "$(echo "$got >= $want" | bc -l)" "$(printf '%.0f MiB/s, the target %.0f MiB/s' "$got" "$want")"
fi

if [ $JSON = 1 ]; then
    printf '{"size_mib": %d, "rounds": %d, "cores": %d, "load": "%s", "rows": [' "$SIZE" "$ROUNDS" "$CORES" "$LOAD"
    sep=""
    for k in "${ORDER[@]}"; do
        w=$(mw "$k"); c=$(mc "$k")
        printf '%s{"what": "%s", "wall_seconds": %s, "cpu_seconds": %s, "mib_per_second": %.1f, "vs_cat_cat": %.3f}' \
            "$sep" "$k" "$w" "$c" "$(rate "$w")" "$(echo "$BASE / $w" | bc -l)"
        sep=", "
    done
    printf '], "targets": ['
    sep=""
    for t in "${TARGETS[@]}"; do
        IFS=$'\t' read -r n ok d <<<"$t"
        printf '%s{"target": "%s", "met": %s, "detail": "%s"}' "$sep" "$n" "$([ "$ok" = 1 ] && echo true || echo false)" "$d"
        sep=", "
    done
    printf ']}\n'
    exit 0
fi

printf '%s MiB (%s data), median of %s; %s cores, load %s\n' "$SIZE" "${DATA:-mixed}" "$ROUNDS" "$CORES" "$LOAD"
printf '%-34s %9s %9s %9s %10s\n' "what" "wall s" "CPU s" "MiB/s" "vs cat|cat"
for k in "${ORDER[@]}"; do
    w=$(mw "$k"); c=$(mc "$k")
    printf '%-34s %9.3f %9.3f %9.0f %10.2f\n' "$k" "$w" "$c" "$(rate "$w")" "$(echo "$BASE / $w" | bc -l)"
done
printf '\nstored bytes: zstd:1 %s, zstd:-5 %s, lz4 %s, zstd:1 + encrypt %s (source %s)\n' \
    "$(stored bk-zstd:1)" "$(stored bk-zstd:-5)" "$(stored bk-lz4)" "$(stored bke-zstd:1)" $((SIZE << 20))
printf '\ntargets:\n'
for t in "${TARGETS[@]}"; do
    IFS=$'\t' read -r n ok d <<<"$t"
    printf '  %-62s %s (%s)\n' "$n" "$([ "$ok" = 1 ] && echo met || echo MISSED)" "$d"
done
