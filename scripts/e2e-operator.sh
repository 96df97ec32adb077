#!/usr/bin/env bash
# End-to-end: the operator installed by its Helm chart runs as a pod (with
# the chart's ServiceAccount and RBAC) under the process kubelet, creates a
# 3-member KvCluster whose members are real witan processes, and etcdctl
# writes and reads through every member's pod IP; a deleted member pod comes
# back with its data and identity; 3 -> 5 -> 3 never shows an even number of
# voters; deleting the KvCluster garbage-collects its children.
#
#   scripts/e2e-operator.sh
#
# Builds witan and witan-operator (cargo), the process kubelet (go) and,
# the first time, the control plane (scripts/e2e-build.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [ -z "${KUBECONFIG:-}" ] || [ -z "${E2E_DIR:-}" ]; then
    (cd "$ROOT" && cargo build --locked -p witan-node --bin witan -p witan-operator --bin witan-operator)
    exec "$ROOT/scripts/e2e-up.sh" --kubelet -- "$0" "$@"
fi

pass=0 fail=0
start=$SECONDS
check() { # name command...
    local name=$1 t=$SECONDS; shift
    if "$@"; then pass=$((pass + 1)); echo "ok   $name ($((SECONDS - t))s)"
    else fail=$((fail + 1)); echo "FAIL $name ($((SECONDS - t))s)"; fi
}

# On failure: the API objects and every pod's log, next to the run's logs.
dump() {
    local out=$E2E_DIR/dump
    mkdir -p "$out"
    kubectl get nodes,pods,statefulsets,deployments,services,endpointslices,configmaps,pvc,pv,pdb,kvc,events \
        -A -o yaml >"$out/objects.yaml" 2>&1 || true
    kubectl get pods -A -o wide >"$out/pods.txt" 2>&1 || true
    echo "diagnostics in $out and $E2E_DIR/kubelet/logs"
}

helm_install() {
    helm install witan "$ROOT/charts/witan" --namespace witan-system --create-namespace \
        --wait --timeout 120s >/dev/null
}

operator_running() {
    kubectl -n witan-system get deploy -o name | grep -q . &&
        kubectl -n witan-system wait --for=condition=Available deploy --all --timeout=60s >/dev/null
}

create_cluster() {
    kubectl create namespace kv >/dev/null || return 1
    printf 'apiVersion: witan.io/v1alpha1\nkind: KvCluster\nmetadata: {name: kv, namespace: kv}\nspec: {replicas: 3}\n' |
        kubectl apply -f - >/dev/null || return 1
    kubectl -n kv wait --for=condition=Available kvc/kv --timeout=180s >/dev/null
}

members_ready() {
    kubectl -n kv wait --for=condition=Ready pod -l witan.io/cluster=kv --timeout=60s >/dev/null &&
        [ "$(kubectl -n kv get pods -l witan.io/cluster=kv -o name | wc -l)" = 3 ]
}

three_voters_and_a_leader() {
    local ip
    ip=$(kubectl -n kv get pod kv-0 -o jsonpath='{.status.podIP}')
    local voters
    voters=$(etcdctl --endpoints "http://$ip:2379" member list -w json |
        python3 -c 'import json,sys; print(sum(1 for m in json.load(sys.stdin)["members"] if not m.get("isLearner")))')
    [ "$voters" = 3 ] || { echo "  $voters voters"; return 1; }
    [ -n "$(kubectl -n kv get kvc kv -o jsonpath='{.status.leader}')" ] || { echo "  no leader in the status"; return 1; }
}

put_get_every_member() {
    local pod ip i=0
    for pod in kv-0 kv-1 kv-2; do
        ip=$(kubectl -n kv get pod "$pod" -o jsonpath='{.status.podIP}')
        etcdctl --endpoints "http://$ip:2379" put "key-$pod" "value-$i" >/dev/null || return 1
        i=$((i + 1))
    done
    for pod in kv-0 kv-1 kv-2; do
        ip=$(kubectl -n kv get pod "$pod" -o jsonpath='{.status.podIP}')
        local got
        got=$(etcdctl --endpoints "http://$ip:2379" get --prefix key- --print-value-only | tr '\n' ' ')
        [ "$got" = "value-0 value-1 value-2 " ] || { echo "  $pod read: $got"; return 1; }
    done
}

pod_ip() { kubectl -n kv get pod "$1" -o jsonpath='{.status.podIP}'; }

voters() { # endpoint IP -> number of voters in MemberList
    etcdctl --endpoints "http://$1:2379" member list -w json |
        python3 -c 'import json,sys; print(sum(1 for m in json.load(sys.stdin)["members"] if not m.get("isLearner")))'
}

member_id() { # pod -> its member ID (hex) as MemberList reports it
    etcdctl --endpoints "http://$(pod_ip kv-0):2379" member list -w json |
        python3 -c 'import json,sys; print(next(format(m["ID"],"x") for m in json.load(sys.stdin)["members"] if m.get("name")==sys.argv[1]))' "$1"
}

deleted_member_returns() {
    local old_uid old_id new_id
    old_uid=$(kubectl -n kv get pod kv-1 -o jsonpath='{.metadata.uid}') || return 1
    old_id=$(member_id kv-1) || return 1
    kubectl -n kv delete pod kv-1 --wait=true --timeout=60s >/dev/null || return 1
    # The StatefulSet makes a new pod of the same name; wait for it, Ready.
    local uid deadline=$((SECONDS + 60))
    until uid=$(kubectl -n kv get pod kv-1 -o jsonpath='{.metadata.uid}' 2>/dev/null) &&
        [ -n "$uid" ] && [ "$uid" != "$old_uid" ]; do
        [ $SECONDS -lt $deadline ] || { echo "  no new kv-1 pod"; return 1; }
        sleep 0.2
    done
    kubectl -n kv wait --for=condition=Ready pod/kv-1 --timeout=120s >/dev/null || return 1
    new_id=$(member_id kv-1) || return 1
    [ "$old_id" = "$new_id" ] || { echo "  member id $old_id became $new_id"; return 1; }
    # Its own copy of the data, read locally (serializable) from the new process.
    local got
    got=$(etcdctl --endpoints "http://$(pod_ip kv-1):2379" get key-kv-1 --consistency=s --print-value-only) || return 1
    [ "$got" = value-1 ] || { echo "  kv-1 read '$got'"; return 1; }
    [ "$(voters "$(pod_ip kv-1)")" = 3 ]
}

# Samples the voter count every 200ms into $1 until killed.
sample_voters() {
    while true; do
        voters "$(pod_ip kv-0)" >>"$1" 2>/dev/null || true
        sleep 0.2
    done
}

scale_to() { # replicas
    kubectl -n kv scale kvc/kv --replicas="$1" >/dev/null || return 1
    kubectl -n kv wait --for=jsonpath='{.status.readyReplicas}'="$1" kvc/kv --timeout=120s >/dev/null || return 1
    kubectl -n kv wait --for=condition=Available kvc/kv --timeout=60s >/dev/null || return 1
    local deadline=$((SECONDS + 120))
    until [ "$(voters "$(pod_ip kv-0)")" = "$1" ]; do
        [ $SECONDS -lt $deadline ] || { echo "  voters: $(voters "$(pod_ip kv-0)")"; return 1; }
        sleep 0.5
    done
}

scale_5_and_back() {
    local samples=$E2E_DIR/voter-samples sampler status=0
    sample_voters "$samples" &
    sampler=$!
    scale_to 5 && scale_to 3 || status=1
    kill "$sampler" && wait "$sampler" 2>/dev/null
    local seen
    seen=$(sort -u "$samples" | tr '\n' ' ')
    echo "  voter counts seen: $seen($(wc -l <"$samples") samples)"
    if grep -qE '^[02468]$' "$samples"; then echo "  an even number of voters was seen"; status=1; fi
    [ "$(kubectl -n kv get pods -l witan.io/cluster=kv -o name | wc -l)" = 3 ] || status=1
    return $status
}

deleted_cluster_collected() {
    kubectl -n kv delete kvc kv --wait=true --timeout=60s >/dev/null || return 1
    local kind
    for kind in statefulset service configmap poddisruptionbudget pod; do
        kubectl -n kv wait --for=delete "$kind" -l app.kubernetes.io/instance=kv --timeout=90s >/dev/null 2>&1 || true
        local left
        left=$(kubectl -n kv get "$kind" -l app.kubernetes.io/instance=kv -o name)
        [ -z "$left" ] || { echo "  left behind: $left"; return 1; }
    done
}

check "helm install: the operator runs with the chart's ServiceAccount and RBAC" helm_install
check "the operator's Deployment is Available" operator_running
check "a 3-member KvCluster becomes Available" create_cluster
check "its three pods are Ready" members_ready
check "MemberList shows three voters; the status names a leader" three_voters_and_a_leader
check "etcdctl put/get through every member's pod IP" put_get_every_member
check "a deleted member pod returns with its data and member ID" deleted_member_returns
check "scale 3 -> 5 -> 3: never an even number of voters" scale_5_and_back
check "deleting the KvCluster garbage-collects its children" deleted_cluster_collected
[ "$fail" = 0 ] || dump
echo "e2e-operator: $pass/$((pass + fail)) checks pass in $((SECONDS - start))s"
[ "$fail" = 0 ]
