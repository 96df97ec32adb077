#!/usr/bin/env bash
# Tests and builds the process kubelet (e2e/kubelet) and prints the binary's path.
# Go's build cache makes a rebuild of unchanged sources take about a second.
# WITAN_E2E_KUBELET_RACE=1 builds it with the race detector (needs cgo).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${XDG_CACHE_HOME:-$HOME/.cache}/witan/e2e/bin
mkdir -p "$OUT"
# Its unit tests first (decisions: DNS records, init order, termination
# messages); their output goes to stderr, the path alone to stdout.
(cd "$ROOT/e2e/kubelet" && GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 go test ./... >&2)
if [ "${WITAN_E2E_KUBELET_RACE:-0}" = 1 ]; then
    (cd "$ROOT/e2e/kubelet" && GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=1 \
        go build -race -trimpath -o "$OUT/witan-e2e-kubelet" .)
else
    (cd "$ROOT/e2e/kubelet" && GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
        go build -trimpath -o "$OUT/witan-e2e-kubelet" .)
fi
echo "$OUT/witan-e2e-kubelet"
