#!/usr/bin/env bash
# The benchmark table: `vdi backup` / `vdi restore` against the programs a user would compare
# them with, on the same source file, on the same medium, in the same run. Rows, by group:
#
#   devices  cp, cat | cat; vdi backup and vdi restore through 1, 4 and 8 devices
#   pipes    cat | cat > /dev/null; vdi backup - > /dev/null, vdi restore - > /dev/null
#   codecs   zstd -1 -T1 (one thread), zstd -1 -T0 (every core), zstd -d, lz4 -1, lz4 -d,
#            gzip -1, pigz -1; vdi --compress zstd:1 through 1 and 4 devices, zstd:-5, lz4
#   encrypt  openssl enc -aes-256-ctr and age, for the cost of a cipher; vdi --encrypt with
#            none, zstd:1 and lz4. openssl's enc has no AEAD mode (no -aes-256-gcm), so that
#            row is the bare cipher, unauthenticated; age (ChaCha20-Poly1305 in 64 KiB chunks,
#            to a recipient key of age-keygen's) is the authenticated one, nearer to vdi's
#            AES-256-GCM chunks
#   sqlite   sqlite3 .backup; vdi backup sqlite: through 1 and 4 devices, vdi restore sqlite:
#
# Each row is the median of ROUNDS runs, the rounds interleaved (every row once, then every
# row again): wall seconds, CPU seconds (user + sys, children included), MiB/s of the source,
# the peak RSS of the largest process of the command (GNU time's %M; "-" without GNU time at
# /usr/bin/time), the output's size over the input's, and two ratios of medians, both of
# throughput (above 1: faster): against cp, and against the row's own baseline (named in the
# last column: cp for plain backup and restore, cat | cat for pipes and lz4, zstd -1 -T1 for
# zstd compression, zstd -d for zstd restores, the unencrypted row for an encrypted one,
# sqlite3 .backup for the sqlite rows). Then the issue's targets, met or MISSED, with the
# numbers. With --json, one JSON object instead (rows, targets, size, rounds, cores, load);
# JSON_OUT=FILE writes that object to FILE as well (beside the table).
# Every restore is checked byte for byte against its source (cmp); a mismatch stops the run.
#
#   cargo build --release -p vdi-cli
#   crates/vdi-cli/scripts/compare.sh [--json] [DIR] [SIZE_MIB] [ROUNDS]
#   ONLY=codecs,encrypt crates/vdi-cli/scripts/compare.sh   # some groups (and their baselines)
#
# DIR should be on tmpfs (default /dev/shm/vdi-compare; made, and removed at the end; an
# existing non-empty DIR is refused). SIZE_MIB (default 1024) and ROUNDS (default 3) may also
# be given in the environment; VDI=PATH picks the binary (default target/release/vdi). The
# data is compressible (base64 of random bytes and runs of decimal numbers, about 1.6:1 with
# zstd -1) unless DATA=random (incompressible). A row whose program is not installed is
# skipped, with a note on standard error; so are the targets that need it.
# Needs bash 4, awk, cmp and du; at 1024 MiB, about 5 GiB free in DIR's medium at the peak,
# and about 10 minutes with 3 rounds on 2 cores (2 making the data and the database, 3 in
# gzip -1 and pigz -1).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "compare.sh: $*" >&2; exit 1; }

JSON=0
ARGS=()
for a in "$@"; do
    case $a in
        --json) JSON=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "compare.sh: unknown option $a" >&2; usage >&2; exit 2 ;;
        *) ARGS+=("$a") ;;
    esac
done
DIR=${ARGS[0]:-/dev/shm/vdi-compare}
SIZE=${ARGS[1]:-${SIZE_MIB:-1024}}
ROUNDS=${ARGS[2]:-${ROUNDS:-3}}
DATA=${DATA:-mixed}
ALL_GROUPS="devices pipes codecs encrypt sqlite"
ONLY=${ONLY:-$ALL_GROUPS}
ONLY=${ONLY//,/ }
JSON_OUT=${JSON_OUT:-}
[[ $SIZE =~ ^[1-9][0-9]*$ ]] || die "SIZE_MIB must be a whole number of MiB, not '$SIZE'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a whole number, not '$ROUNDS'"
case $DATA in mixed | random) ;; *) die "DATA is mixed or random, not '$DATA'" ;; esac
for g in $ONLY; do
    case " $ALL_GROUPS " in *" $g "*) ;; *) die "ONLY: no group '$g' (groups: $ALL_GROUPS)" ;; esac
done
HERE=$(cd "$(dirname "$0")/../../.." && pwd)
VDI=${VDI:-$HERE/target/release/vdi}
[ -x "$VDI" ] || die "build first: cargo build --release -p vdi-cli ($VDI missing)"
VDI=$(cd "$(dirname "$VDI")" && pwd)/$(basename "$VDI")   # the script works in DIR
have() { command -v "$1" >/dev/null; }
# GNU time gives the peak RSS (%M, KiB); the wall and CPU seconds come from bash's `time`
# (to the millisecond; GNU time's %e, %U and %S have two decimals).
GNU_TIME=
if [ -x /usr/bin/time ] && /usr/bin/time -f %M -o /dev/null true 2>/dev/null; then
    GNU_TIME=/usr/bin/time
else
    echo "note: no GNU time at /usr/bin/time: no peak RSS" >&2
fi

if [ -e "$DIR" ] && [ ! -e "$DIR/.vdi-compare" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR is not empty, and DIR is removed at the end: give another"
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ -n "$JSON_OUT" ]; then
    JSON_OUT=$(cd "$(dirname "$JSON_OUT")" && pwd)/$(basename "$JSON_OUT")
    case $JSON_OUT in "$DIR"/*) die "JSON_OUT must not be in DIR (removed at the end)" ;; esac
    : > "$JSON_OUT"
fi
trap 'rm -rf "$DIR"' EXIT
trap 'exit 130' INT TERM
touch "$DIR/.vdi-compare"
# Everything is written to DIR (the medium of the comparison). The engine streams a SQLite
# database's pages straight into its buffers (no copy in TMPDIR); TMPDIR points there too,
# so that anything that did use it would be measured on the same medium.
export TMPDIR="$DIR"
cd "$DIR"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
CORES=$(nproc)
BYTES=$((SIZE << 20))
DB="$DIR/demo/sample.db"
# The keys: 32 random bytes for vdi (--key-file) and openssl (-K, no key derivation to time),
# and an age identity whose recipient encrypts.
head -c 32 /dev/urandom > key
KEYHEX=$(od -An -tx1 -v key | tr -d ' \n')
AGE_RECIPIENT=
if have age && have age-keygen; then
    age-keygen -o age.key 2>/dev/null
    AGE_RECIPIENT=$(age-keygen -y age.key)
else
    echo "note: age or age-keygen is not installed: no row 'age'" >&2
fi

# ---- the rows ---------------------------------------------------------------------------
#
# row NAME BASELINE READS WRITES command...
#   NAME      the row, in the table and the JSON
#   BASELINE  the row this one's throughput is compared with (- for none)
#   READS     what the command reads that another row writes (- for none): that row runs
#             whenever this one does, earlier in the round
#   WRITES    what the command writes in DIR (- for nothing). It is removed just before the
#             command runs, and again once nothing later in the round reads it, so that every
#             command writes into memory freed a moment ago (in a guest, memory freed a while
#             ago may have been handed back to the host, and is slow to touch again; removing
#             every output at the start of a round would favour whatever runs first) and only
#             a few outputs are in memory at a time.
# rows runs in two modes: PLAN=1 records each row (rows whose program is missing are dropped),
# PLAN=0 runs the wanted ones: the rows of the groups in ONLY and what they need.
declare -A GROUP VS READS WRITER WANT LAST W C M OUT
ORDER=()
GARBAGE=()
PLAN=1
R=0
row() {
    local name=$1 vs=$2 reads=$3 writes=$4
    shift 4
    if [ $PLAN = 1 ]; then
        if ! have "$1"; then
            echo "note: $1 is not installed: no row '$name'" >&2
            return 0
        fi
        ORDER+=("$name")
        GROUP[$name]=$G
        VS[$name]=$vs
        READS[$name]=$reads
        [ "$writes" = - ] || WRITER[$writes]=$name
        return 0
    fi
    [ -n "${WANT[$name]:-}" ] || return 0
    collect
    [ "$writes" = - ] || rm -rf "$writes"
    measure "$name" "$@"
    if [ "$writes" != - ]; then
        OUT[$name]=$(du -sb "$writes" | cut -f1)
        [ -n "${LAST[$writes]:-}" ] || GARBAGE+=("$writes")
    fi
    if [ "$reads" != - ] && [ "${LAST[$reads]:-}" = "$name" ]; then GARBAGE+=("$reads"); fi
}
collect() {
    if [ ${#GARBAGE[@]} -gt 0 ]; then rm -rf "${GARBAGE[@]}"; fi
    GARBAGE=()
}
ran() { [ $PLAN = 0 ] && [ -n "${WANT[$1]:-}" ]; }
# check ROW FILE [REFERENCE]: FILE, which ROW wrote, must be REFERENCE (src.bin) byte for byte.
check() {
    if ran "$1"; then cmp "${3:-src.bin}" "$2" || die "$1: $2 differs from ${3:-src.bin}"; fi
}
# check_stream ROW command...: once, unmeasured, what the command writes on standard output
# must be src.bin (for the rows whose output goes to /dev/null).
check_stream() {
    local name=$1
    shift
    if ran "$name" && [ "$R" = 1 ]; then
        "$@" | cmp - src.bin || die "$name: its output differs from src.bin"
    fi
}
TIMEFORMAT='%3R %3U %3S'
# measure NAME command...: runs the command (its standard output to /dev/null, its standard
# error to ours) and adds its wall and CPU seconds and peak RSS to NAME's samples.
measure() {
    local name=$1 t rc=0 w u s
    shift
    if [ -n "$GNU_TIME" ]; then
        t=$({ time "$GNU_TIME" -f %M -o "$DIR/.rss" "$@" >/dev/null 2>&3; } 3>&2 2>&1) || rc=$?
    else
        t=$({ time "$@" >/dev/null 2>&3; } 3>&2 2>&1) || rc=$?
    fi
    [ $rc = 0 ] || die "$name failed (exit $rc): $*"
    read -r w u s <<<"$t"
    W[$name]+=" $w"
    C[$name]+=" $(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }')"
    [ -z "$GNU_TIME" ] || M[$name]+=" $(tail -n 1 "$DIR/.rss")"
}
dev() { if [ "$1" = 1 ]; then echo "1 device"; else echo "$1 devices"; fi; }

# One round: every row once, in this order.
rows() {
    local n d c f plain
    G=devices
    row "cp"        -  - cp.bin   cp src.bin cp.bin
    row "cat | cat" cp - pipe.bin sh -c 'cat src.bin | cat > pipe.bin'
    for n in 1 4 8; do
        d=$(dev $n)
        row "vdi backup, $d"  cp -       "bk$n"      "$VDI" backup file:src.bin "bk$n" --devices "$n" --quiet
        row "vdi restore, $d" cp "bk$n" "out$n.bin" "$VDI" restore "bk$n" "file:out$n.bin" --quiet
        check "vdi restore, $d" "out$n.bin"
    done

    # The same without writing a file (no page allocation: the transport alone).
    G=pipes
    row "cat | cat > /dev/null"     "cat | cat"             - - sh -c 'cat src.bin | cat > /dev/null'
    row "vdi backup - > /dev/null"  "cat | cat > /dev/null" - - "$VDI" backup file:src.bin - --quiet
    row "vdi restore - > /dev/null" "cat | cat > /dev/null" bk1 - "$VDI" restore bk1 - --quiet
    check_stream "vdi restore - > /dev/null" "$VDI" restore bk1 - --quiet

    G=codecs
    row "zstd -1 -T1" -             -      z1.zst     zstd -q -f -1 -T1 src.bin -o z1.zst
    row "zstd -1 -T0" "zstd -1 -T1" -      zt.zst     zstd -q -f -1 -T0 src.bin -o zt.zst
    row "zstd -d"     -             z1.zst zd.bin     zstd -q -f -d z1.zst -o zd.bin
    check "zstd -d" zd.bin
    row "lz4 -1"      "cat | cat"   -      l.lz4      lz4 -q -f -1 src.bin l.lz4
    row "lz4 -d"      "cat | cat"   l.lz4  ld.bin     lz4 -q -f -d l.lz4 ld.bin
    check "lz4 -d" ld.bin
    row "gzip -1"     "zstd -1 -T1" -      src.bin.gz gzip -1 -k -f src.bin
    row "pigz -1"     "gzip -1"     -      src.bin.pz pigz -1 -k -f -S .pz src.bin
    for n in 1 4; do
        d=$(dev $n)
        row "vdi backup zstd:1, $d"  "zstd -1 -T1" -      "bz$n"      "$VDI" backup file:src.bin "bz$n" --devices "$n" --compress zstd:1 --quiet
        row "vdi restore zstd:1, $d" "zstd -d"     "bz$n" "oz$n.bin" "$VDI" restore "bz$n" "file:oz$n.bin" --quiet
        check "vdi restore zstd:1, $d" "oz$n.bin"
    done
    row "vdi backup zstd:-5, 1 device" "zstd -1 -T1" - bzf  "$VDI" backup file:src.bin bzf --compress zstd:-5 --quiet
    row "vdi backup lz4, 1 device"     "cat | cat"   - bl   "$VDI" backup file:src.bin bl --compress lz4 --quiet
    row "vdi restore lz4, 1 device"    "cat | cat"   bl ol.bin "$VDI" restore bl file:ol.bin --quiet
    check "vdi restore lz4, 1 device" ol.bin

    G=encrypt
    row "openssl enc -aes-256-ctr" cp - e.enc \
        openssl enc -aes-256-ctr -K "$KEYHEX" -iv 00000000000000000000000000000000 -in src.bin -out e.enc
    if [ -n "$AGE_RECIPIENT" ]; then
        row "age" cp - e.age age -r "$AGE_RECIPIENT" -o e.age src.bin
    fi
    for c in none zstd:1 lz4; do
        f=${c//:/}
        if [ $c = none ]; then plain=""; else plain=" $c"; fi
        row "vdi backup$plain, 1 device, encrypted" "vdi backup$plain, 1 device" - "be$f" \
            "$VDI" backup file:src.bin "be$f" --compress "$c" --encrypt --key-file key --quiet
        row "vdi restore$plain, 1 device, encrypted" "vdi restore$plain, 1 device" "be$f" "oe$f.bin" \
            "$VDI" restore "be$f" "file:oe$f.bin" --key-file key --quiet
        check "vdi restore$plain, 1 device, encrypted" "oe$f.bin"
    done

    # A SQLite database of about SIZE_MIB (vdi demo's), its pages read by the engine.
    G=sqlite
    row "sqlite3 .backup"                -                 -    sq.db  sqlite3 "$DB" ".backup sq.db"
    row "vdi backup sqlite:, 1 device"   "sqlite3 .backup" -    bsq1   "$VDI" backup "sqlite:$DB" bsq1 --quiet
    row "vdi backup sqlite:, 4 devices"  "sqlite3 .backup" -    bsq4   "$VDI" backup "sqlite:$DB" bsq4 --devices 4 --quiet
    row "vdi restore sqlite:, 1 device"  "sqlite3 .backup" bsq1 osq.db "$VDI" restore bsq1 sqlite:osq.db --quiet
    check "vdi restore sqlite:, 1 device" osq.db "$DB"
}

# The plan: every row, then the wanted ones (those of ONLY's groups, their baselines and the
# rows that write what they read, to a fixed point), then the last reader of each output.
rows
for k in "${ORDER[@]}"; do
    case " $ONLY " in *" ${GROUP[$k]} "*) WANT[$k]=1 ;; esac
done
changed=1
while [ $changed = 1 ]; do
    changed=0
    for k in "${ORDER[@]}"; do
        [ -n "${WANT[$k]:-}" ] || continue
        for dep in "${VS[$k]}" "${WRITER[${READS[$k]}]:-}"; do
            if [ -n "$dep" ] && [ -n "${GROUP[$dep]:-}" ] && [ -z "${WANT[$dep]:-}" ]; then
                WANT[$dep]=1
                changed=1
            fi
        done
    done
done
HAVE_SQLITE_ROWS=0
for k in "${ORDER[@]}"; do
    [ -n "${WANT[$k]:-}" ] || continue
    [ "${READS[$k]}" = - ] || LAST[${READS[$k]}]=$k
    [ "${GROUP[$k]}" != sqlite ] || HAVE_SQLITE_ROWS=1
done

# The source, and the database if a sqlite row runs.
echo "compare.sh: making $SIZE MiB of $DATA data in $DIR" >&2
if [ "$DATA" = random ]; then
    head -c $BYTES /dev/urandom > src.bin
else
    for _ in $(seq $((SIZE * 6 / 10 + 4))); do
        head -c 786432 /dev/urandom | base64 -w0
        seq 1 150000
    done | head -c $BYTES > src.bin || true
fi
[ "$(stat -c %s src.bin)" = $BYTES ] || die "could not make the source"
DBBYTES=0
if [ $HAVE_SQLITE_ROWS = 1 ]; then
    echo "compare.sh: making a SQLite database of about $SIZE MiB (vdi demo)" >&2
    "$VDI" demo --size "${SIZE}M" --dir "$DIR/demo" --keep --quiet
    rm -rf "$DIR/demo/backup" "$DIR"/demo/restored.db*   # the demo's own backup and restore
    DBBYTES=$(stat -c %s "$DB")
fi
sync

PLAN=0
SETUP=$SECONDS
for R in $(seq "$ROUNDS"); do
    echo "compare.sh: round $R of $ROUNDS" >&2
    rows
    collect
done
ELAPSED=$SECONDS   # the whole run, the source and the database included
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the table --------------------------------------------------------------------------

median() {
    tr ' ' '\n' | sed '/^$/d' | sort -g |
        awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else if (NR) print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
calc() { awk "BEGIN { print ($*) }"; }
declare -A MW MC MM RATE NB
RAN=()
for k in "${ORDER[@]}"; do
    [ -n "${W[$k]:-}" ] || continue
    RAN+=("$k")
    MW[$k]=$(echo "${W[$k]}" | median)
    MC[$k]=$(echo "${C[$k]}" | median)
    MM[$k]=$(echo "${M[$k]:-}" | median)
    NB[$k]=$BYTES
    [ "${GROUP[$k]}" != sqlite ] || NB[$k]=$DBBYTES
    RATE[$k]=$(calc "${NB[$k]} / 1048576 / (${MW[$k]} > 0 ? ${MW[$k]} : 0.001)")
done
# vs A B: A's throughput over B's (empty when either did not run)
vs() { if [ -n "${RATE[$1]:-}" ] && [ -n "${RATE[$2]:-}" ]; then calc "${RATE[$1]} / ${RATE[$2]}"; fi; }
mib() { if [ -n "$1" ]; then calc "$1 / 1024"; fi; }

# ---- the targets (the issue's) ----------------------------------------------------------
# target NAME MET DETAIL (MET: 1, 0, or - for a figure reported without a target)
TARGETS=()
target() { TARGETS+=("$1"$'\t'"$2"$'\t'"$3"); }
at_least() { # NAME ROW BASELINE: ROW's throughput at least BASELINE's
    local r
    r=$(vs "$2" "$3")
    [ -n "$r" ] || return 0
    target "$1" "$(calc "$r >= 1")" \
        "$(printf '%.0f MiB/s vs %.0f MiB/s: %.2f x' "${RATE[$2]}" "${RATE[$3]}" "$r")"
}
at_least "restore through 4 devices at least through 1" "vdi restore, 4 devices" "vdi restore, 1 device"
at_least "restore through 8 devices at least through 1" "vdi restore, 8 devices" "vdi restore, 1 device"
at_least "backup through 1 device at least cp" "vdi backup, 1 device" "cp"
at_least "restore through 1 device at least cp" "vdi restore, 1 device" "cp"
for d in "1 device" "4 devices"; do
    k="vdi backup zstd:1, $d"
    if [ -n "${RATE[$k]:-}" ] && [ -n "${RATE["zstd -1 -T1"]:-}" ]; then
        want=$(calc "0.8 * $CORES * ${RATE["zstd -1 -T1"]}")
        target "zstd:1 backup, $d, at least 0.8 x cores x zstd -1 -T1" "$(calc "${RATE[$k]} >= $want")" \
            "$(printf '%.0f MiB/s; the target 0.8 x %d x %.0f = %.0f MiB/s' "${RATE[$k]}" "$CORES" "${RATE["zstd -1 -T1"]}" "$want")"
    fi
done
at_least "lz4 backup at least cat | cat" "vdi backup lz4, 1 device" "cat | cat"
k="vdi backup zstd:1, 1 device"
if [ -n "${MW["$k, encrypted"]:-}" ] && [ -n "${MW[$k]:-}" ]; then
    r=$(calc "${MW["$k, encrypted"]} / ${MW[$k]}")
    target "encrypted zstd:1 backup within 10% of unencrypted" "$(calc "$r <= 1.10")" \
        "$(printf '%.3f s vs %.3f s: %.2f x the time' "${MW["$k, encrypted"]}" "${MW[$k]}" "$r")"
fi
# memory KIND REGEX: the peak RSS of the rows whose names match
memory() {
    local detail="" k
    for k in "${RAN[@]}"; do
        [[ $k =~ $2 ]] || continue
        [ -n "${MM[$k]}" ] || continue
        detail+="${detail:+; }${k#vdi } $(printf '%.1f' "$(mib "${MM[$k]}")") MiB"
    done
    [ -z "$detail" ] || target "peak RSS of the $1 rows" - "$detail"
}
memory "zstd:1" '^vdi (backup|restore) zstd:1, [0-9]+ devices?$'
memory "encrypted" '^vdi .*, encrypted$'

# ---- the output -------------------------------------------------------------------------
js() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }
# num VALUE [FORMAT]: VALUE in FORMAT, or null when empty
# shellcheck disable=SC2059 # the format is the caller's
num() { if [ -n "$1" ]; then printf "${2:-%s}" "$1"; else printf null; fi; }
VERSION=$("$VDI" --version)

print_json() {
    local sep k b t n ok d g
    printf '{"size_mib": %d, "data": "%s", "rounds": %d, "cores": %d, "load": {"before": [%s], "after": [%s]}, ' \
        "$SIZE" "$DATA" "$ROUNDS" "$CORES" "${LOAD_BEFORE// /, }" "${LOAD_AFTER// /, }"
    printf '"vdi": %s, "groups": [' "$(js "$VERSION")"
    sep=""
    for g in $ONLY; do printf '%s"%s"' "$sep" "$g"; sep=", "; done
    printf '], "source_bytes": %d, "sqlite_bytes": %d, "gnu_time": %s, "seconds": %d, "setup_seconds": %d,\n "rows": [' \
        "$BYTES" "$DBBYTES" "$([ -n "$GNU_TIME" ] && echo true || echo false)" "$ELAPSED" "$SETUP"
    sep=""
    for k in "${RAN[@]}"; do
        b=${VS[$k]}
        [ -n "${RATE[$b]:-}" ] || b=""
        printf '%s\n  {"name": %s, "group": "%s", "bytes": %d, "wall_s": %s, "cpu_s": %s, "mib_per_s": %.1f, ' \
            "$sep" "$(js "$k")" "${GROUP[$k]}" "${NB[$k]}" "${MW[$k]}" "${MC[$k]}" "${RATE[$k]}"
        printf '"peak_rss_kib": %s, "output_bytes": %s, "vs_cp": %s, "ratio": %s, "baseline": %s, ' \
            "$(num "${MM[$k]}" %.0f)" "$(num "${OUT[$k]:-}")" "$(num "$(vs "$k" cp)" %.3f)" \
            "$(num "$([ -z "$b" ] || vs "$k" "$b")" %.3f)" "$([ -n "$b" ] && js "$b" || echo null)"
        printf '"wall_samples": [%s]}' "$(echo "${W[$k]}" | sed 's/^ //; s/ /, /g')"
        sep=","
    done
    printf '],\n "targets": ['
    sep=""
    for t in "${TARGETS[@]}"; do
        IFS=$'\t' read -r n ok d <<<"$t"
        case $ok in 1) ok=true ;; 0) ok=false ;; *) ok=null ;; esac
        printf '%s\n  {"name": %s, "met": %s, "detail": %s}' "$sep" "$(js "$n")" "$ok" "$(js "$d")"
        sep=","
    done
    printf ']}\n'
}

print_table() {
    local SQL group k rss out r b rb t n ok d
    SQL=""
    [ "$DBBYTES" = 0 ] || SQL=" (the database: $(calc "int($DBBYTES / 1048576 + 0.5)") MiB)"
    printf '%s MiB of %s data%s, median of %s round(s); %s cores; load %s before, %s after; %s; %s s (%s s making the data)\n' \
        "$SIZE" "$DATA" "$SQL" "$ROUNDS" "$CORES" "$LOAD_BEFORE" "$LOAD_AFTER" "$VERSION" "$ELAPSED" "$SETUP"
    printf '%-42s %7s %7s %7s %7s %6s %6s  %s\n' "" "wall s" "CPU s" "MiB/s" "RSS MiB" "out/in" "vs cp" "vs baseline"
    group=""
    for k in "${RAN[@]}"; do
        if [ "${GROUP[$k]}" != "$group" ]; then
            group=${GROUP[$k]}
            printf '%s\n' "$group"
        fi
        rss=$(mib "${MM[$k]}")
        out=""
        [ -z "${OUT[$k]:-}" ] || out=$(calc "${OUT[$k]} / ${NB[$k]}")
        r=$(vs "$k" cp)
        b=${VS[$k]}
        rb=""
        [ "$b" = - ] || rb=$(vs "$k" "$b")
        printf '  %-40s %7.3f %7.3f %7.0f %7s %6s %6s  %s\n' "$k" "${MW[$k]}" "${MC[$k]}" "${RATE[$k]}" \
            "$([ -n "$rss" ] && printf '%.1f' "$rss" || echo -)" \
            "$([ -n "$out" ] && printf '%.2f' "$out" || echo -)" \
            "$([ -n "$r" ] && printf '%.2f' "$r" || echo -)" \
            "$([ -n "$rb" ] && printf '%.2f %s' "$rb" "$b" || echo -)"
    done
    printf 'ratios: of throughput medians (above 1: faster); out/in: output bytes over input bytes\n'
    if [ ${#TARGETS[@]} -gt 0 ]; then
        printf '\ntargets:\n'
        for t in "${TARGETS[@]}"; do
            IFS=$'\t' read -r n ok d <<<"$t"
            case $ok in
                1) printf '  %-62s %-6s %s\n' "$n" met "$d" ;;
                0) printf '  %-62s %-6s %s\n' "$n" MISSED "$d" ;;
                *) printf '  %s (no target):\n    %s\n' "$n" "${d//; /$'\n'    }" ;;
            esac
        done
    fi
}

if [ -n "$JSON_OUT" ]; then print_json > "$JSON_OUT"; fi
if [ $JSON = 1 ]; then print_json; else print_table; fi
