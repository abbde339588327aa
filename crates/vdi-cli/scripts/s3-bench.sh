#!/usr/bin/env bash
# Backup and restore of one file to a local S3 server (s3s-fs), by vdi and by a plain
# boto3 multipart upload/download of the same file with the same part size and
# concurrency, and vdi to a local directory: the median of RUNS runs of each, wall time,
# CPU time (user + system, the process and the children it waited for: vdi's engine) and
# peak resident memory (the largest process, VmHWM).
#
#   crates/vdi-cli/scripts/s3-bench.sh [SIZE_MIB] [RUNS]      (default 1024 MiB, 3 runs)
#
# Needs: s3s-fs (cargo install --locked s3s-fs@0.14.1 --features binary), python3 with
# boto3, and a release build of vdi (built here). A benchmark, not a test: nothing is judged.
set -euo pipefail
cd "$(dirname "$0")/../../.."
size_mib=${1:-1024}
runs=${2:-3}
part_mib=8
in_flight=4

export PATH="$PATH:$HOME/.cargo/bin"
command -v s3s-fs >/dev/null || { echo "s3s-fs is not installed: cargo install --locked s3s-fs@0.14.1 --features binary" >&2; exit 1; }
python3 -c 'import boto3' || { echo "python3 boto3 is not installed" >&2; exit 1; }
cargo build -q --release -p vdi-cli
vdi=$PWD/target/release/vdi

work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/root/bench"
export AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_REGION=us-east-1 VDI_CONFIG=none
s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/root" >/dev/null 2>&1 &
server=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break
    sleep 0.1
done

src=$work/src.bin
head -c "$((size_mib << 20))" /dev/urandom >"$src"

cat >"$work/boto.py" <<EOF
import sys, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
mib = 1 << 20
cfg = TransferConfig(multipart_threshold=$part_mib * mib, multipart_chunksize=$part_mib * mib,
                     max_concurrency=$in_flight, use_threads=True)
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
op, path, key = sys.argv[1:4]
if op == "up":
    s3.upload_file(path, "bench", key, Config=cfg)
else:
    s3.download_file("bench", key, path, Config=cfg)
EOF

# measure LABEL CMD...: one run; prints "wall cpu maxrss_kib".
measure() {
    python3 - "$@" <<'EOF'
import os, subprocess, sys, time
t = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, ru = os.wait4(p.pid, 0)
wall = time.monotonic() - t
if status != 0:
    sys.exit(f"failed: {' '.join(sys.argv[1:])}")
print(f"{wall:.2f} {ru.ru_utime + ru.ru_stime:.2f} {ru.ru_maxrss}")
EOF
}

declare -A results
run_case() {
    local label=$1
    shift
    local lines=()
    for i in $(seq "$runs"); do
        # Each run starts from nothing (a backup is refused over an existing one).
        rm -rf "$work/root/bench/"* "$work/dir" "$work/out.bin"
        [ "${label#* restore}" != "$label" ] && prepare "$label"
        lines+=("$(measure "$@")")
    done
    results[$label]=$(printf '%s\n' "${lines[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p")
}

# A restore needs what its backup stored (not measured).
prepare() {
    case $1 in
        "vdi s3 restore") "$vdi" backup "file:$src" s3://bench/b --quiet ;;
        "vdi s3 restore, 4 devices") "$vdi" backup "file:$src" s3://bench/b --devices 4 --quiet ;;
        "boto3 restore") python3 "$work/boto.py" up "$src" b ;;
        "vdi dir restore") "$vdi" backup "file:$src" "$work/dir" --quiet ;;
    esac
}

opts=(--s3-part-size "${part_mib}M" --s3-parts-in-flight "$in_flight" --quiet)
run_case "vdi s3 backup" "$vdi" backup "file:$src" s3://bench/b "${opts[@]}"
run_case "vdi s3 restore" "$vdi" restore s3://bench/b "file:$work/out.bin" "${opts[@]}"
cmp "$src" "$work/out.bin"
run_case "vdi s3 backup, 4 devices" "$vdi" backup "file:$src" s3://bench/b --devices 4 "${opts[@]}"
run_case "vdi s3 restore, 4 devices" "$vdi" restore s3://bench/b "file:$work/out.bin" "${opts[@]}"
cmp "$src" "$work/out.bin"
run_case "boto3 backup" python3 "$work/boto.py" up "$src" b
run_case "boto3 restore" python3 "$work/boto.py" down "$work/out.bin" b
cmp "$src" "$work/out.bin"
run_case "vdi dir backup" "$vdi" backup "file:$src" "$work/dir" --quiet
run_case "vdi dir restore" "$vdi" restore "$work/dir" "file:$work/out.bin" --quiet
cmp "$src" "$work/out.bin"

echo
echo "$size_mib MiB, median of $runs; parts of $part_mib MiB, $in_flight in flight; s3s-fs on 127.0.0.1; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-28s %9s %9s %9s %12s\n' case "wall s" "MiB/s" "cpu s" "peak RSS MiB"
for label in "vdi s3 backup" "boto3 backup" "vdi s3 backup, 4 devices" "vdi dir backup" \
    "vdi s3 restore" "boto3 restore" "vdi s3 restore, 4 devices" "vdi dir restore"; do
    read -r wall cpu rss <<<"${results[$label]}"
    printf '%-28s %9s %9.0f %9s %12.0f\n' "$label" "$wall" "$(echo "$size_mib / $wall" | bc -l)" "$cpu" "$(echo "$rss / 1024" | bc -l)"
done
