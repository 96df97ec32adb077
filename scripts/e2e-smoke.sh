#!/usr/bin/env bash
# Control-plane smoke test: the KvCluster CRD is accepted by a real API
# server, its CEL rule refuses an even member count with the operator's
# message, and the scale subresource works. No pods run.
#
#   scripts/e2e-smoke.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [ -z "${KUBECONFIG:-}" ] || [ -z "${E2E_DIR:-}" ]; then
    exec "$ROOT/scripts/e2e-up.sh" -- "$0" "$@"
fi

pass=0 fail=0
check() { # name command...
    local name=$1; shift
    if "$@"; then pass=$((pass + 1)); echo "ok   $name"
    else fail=$((fail + 1)); echo "FAIL $name"; fi
}

kvc() { # name replicas
    printf 'apiVersion: witan.io/v1alpha1\nkind: KvCluster\nmetadata:\n  name: %s\nspec:\n  replicas: %s\n' "$1" "$2"
}

crd_established() {
    kubectl apply -f "$ROOT/crds/kvcluster.yaml" >/dev/null &&
        kubectl wait --for=condition=Established crd/kvclusters.witan.io --timeout=30s >/dev/null
}

even_refused() {
    local out
    if out=$(kvc even 4 | kubectl apply -f - 2>&1); then
        echo "  replicas 4 was accepted: $out"; return 1
    fi
    grep -qF 'replicas must be 1, 3, 5, 7 or 9: an even number of voters tolerates no more failures than one fewer' <<<"$out" ||
        { echo "  refused, but not with the CEL message: $out"; return 1; }
}

odd_accepted() {
    kvc x 3 | kubectl apply -f - >/dev/null &&
        [ "$(kubectl get kvc x -o jsonpath='{.spec.replicas}')" = 3 ]
}

scale_subresource() {
    kubectl scale kvc/x --replicas=5 >/dev/null &&
        [ "$(kubectl get --raw /apis/witan.io/v1alpha1/namespaces/default/kvclusters/x/scale |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["replicas"])')" = 5 ]
}

scale_even_refused() {
    local out
    if out=$(kubectl scale kvc/x --replicas=4 2>&1); then
        echo "  scale to 4 was accepted: $out"; return 1
    fi
    grep -qF 'replicas must be 1, 3, 5, 7 or 9' <<<"$out" ||
        { echo "  refused, but not with the CEL message: $out"; return 1; }
    [ "$(kubectl get kvc x -o jsonpath='{.spec.replicas}')" = 5 ]
}

check "CRD accepted and Established" crd_established
check "replicas 4 refused by the CEL rule" even_refused
check "replicas 3 accepted" odd_accepted
check "kubectl scale --replicas=5 through the scale subresource" scale_subresource
check "kubectl scale --replicas=4 refused by the CEL rule" scale_even_refused
echo "e2e-smoke: $pass/$((pass + fail)) checks pass"
[ "$fail" = 0 ]
