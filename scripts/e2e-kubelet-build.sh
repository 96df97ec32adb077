#!/usr/bin/env bash
# Builds the process kubelet (e2e/kubelet) and prints the binary's path.
# Go's build cache makes a rebuild of unchanged sources take about a second.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${XDG_CACHE_HOME:-$HOME/.cache}/witan/e2e/bin
mkdir -p "$OUT"
(cd "$ROOT/e2e/kubelet" && GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    go build -trimpath -o "$OUT/witan-e2e-kubelet" .)
echo "$OUT/witan-e2e-kubelet"
