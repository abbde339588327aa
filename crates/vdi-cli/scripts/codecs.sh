#!/usr/bin/env bash
# The cost of compression and encryption at rest: compare.sh's codecs and encrypt rows (vdi
# with each stored-stream codec, encrypted or not, against zstd -1 on one thread and on every
# core, zstd -d, lz4 -1, lz4 -d, gzip -1, pigz -1, openssl enc -aes-256-ctr and age), with
# the baselines they need, and the targets these rows decide. See compare.sh for what is
# measured and how; the arguments and the environment are compare.sh's.
#
#   crates/vdi-cli/scripts/codecs.sh [--json] [DIR] [SIZE_MIB] [ROUNDS]
set -euo pipefail
ONLY=${ONLY:-codecs,encrypt} exec "$(dirname "$0")/compare.sh" "$@"
