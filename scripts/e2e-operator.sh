#!/usr/bin/env bash
# End-to-end: the operator installed by its Helm chart runs as a pod (with
# the chart's ServiceAccount and RBAC) under the process kubelet, creates a
# 3-member KvCluster whose members are real witan processes, and etcdctl
# writes and reads through every member's pod IP; a deleted member pod comes
# back with its data and identity; 3 -> 5 -> 3 never shows an even number of
# voters; a new version rolls out one member at a time, the leader last,
# under writes that all survive; raising spec.storage.size grows every
# member claim and re-creates the StatefulSet around the same pods (also
# after an operator restart with the StatefulSet gone), and a shrink is
# refused; deleting the KvCluster garbage-collects its children. A KvCluster backs itself up to a PVC on a schedule and a new one
# restores from that backup. Then a
# KvCluster with spec.tls from Secrets whose certificates this script makes
# (openssl): it becomes Available (the operator reaches its members over
# mTLS with its own client certificate) and etcdctl needs the CA and a
# client certificate to use it; plain http and no certificate are refused.
# And a KvCluster with spec.auth: the operator turns etcd auth on (root's
# password from a Secret, its own generated one), etcdctl then needs a
# user, and the operator still changes membership as its own user (1 -> 3).
# Finally a real Prometheus, discovering targets through the API server,
# scrapes what the chart's PodMonitor and ServiceMonitor describe: every
# member has a leader, each KvCluster exactly one, the operator is up.
#
#   scripts/e2e-operator.sh
#   WITAN_E2E_ONLY='helm|Deployment|3-member|three pods|storage' scripts/e2e-operator.sh
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
    # WITAN_E2E_ONLY: an extended regex; only the scenarios whose name
    # matches run (include the ones they build on, e.g. helm|3-member).
    if [ -n "${WITAN_E2E_ONLY:-}" ] && ! grep -qE -- "$WITAN_E2E_ONLY" <<<"$name"; then
        return 0
    fi
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

# --- rollout -------------------------------------------------------------
ROLLOUT_TAG=e2e-rollout

# Writes a numbered key every 0.2 s through every member's current pod IP
# (etcdctl fails over between endpoints); logs "ok N" or "fail N" per write.
rollout_writer() { # log
    local n=0 endpoints
    while true; do
        n=$((n + 1))
        endpoints=$(kubectl -n kv get pods -l witan.io/cluster=kv -o jsonpath='{range .items[*]}http://{.status.podIP}:2379,{end}' 2>/dev/null)
        if etcdctl --endpoints "${endpoints%,}" --dial-timeout 2s --command-timeout 3s \
            put "rollout/$n" "$n" >/dev/null 2>&1; then
            echo "ok $n" >>"$1"
        else
            echo "fail $n" >>"$1"
        fi
        sleep 0.2
    done
}

# Each pod's image, one "pod image" line per pod.
pod_images() {
    kubectl -n kv get pods -l witan.io/cluster=kv \
        -o jsonpath='{range .items[*]}{.metadata.name} {.spec.containers[0].image}{"\n"}{end}'
}

# A new version replaces every member one at a time, the leader last, while
# a writer keeps writing: no acknowledged write is lost and writes succeed
# during the rollout.
rollout_leader_last() {
    local log=$E2E_DIR/rollout-writes order=$E2E_DIR/rollout-order writer status=0
    local leader
    leader=$(kubectl -n kv get kvc kv -o jsonpath='{.status.leader}')
    [ -n "$leader" ] || { echo "  no leader before the rollout"; return 1; }
    : >"$log"; : >"$order"
    rollout_writer "$log" &
    writer=$!
    kubectl -n kv patch kvc kv --type merge -p "{\"spec\":{\"version\":\"$ROLLOUT_TAG\"}}" >/dev/null || status=1
    # The order in which pods come back with the new image.
    local deadline=$((SECONDS + 300)) updated=0
    while [ $status = 0 ] && [ "$updated" -lt 3 ]; do
        [ $SECONDS -lt $deadline ] || { echo "  rollout not done: $(pod_images | tr '\n' ';')"; status=1; break; }
        pod_images | awk -v tag=":$ROLLOUT_TAG" 'index($2, tag) { print $1 }' | while read -r pod; do
            grep -qx "$pod" "$order" || echo "$pod" >>"$order"
        done
        updated=$(wc -l <"$order")
        sleep 0.5
    done
    [ $status = 0 ] && { kubectl -n kv wait --for=condition=Ready pod -l witan.io/cluster=kv --timeout=120s >/dev/null &&
        kubectl -n kv wait --for=condition=Available kvc/kv --timeout=120s >/dev/null || status=1; }
    kill "$writer" && wait "$writer" 2>/dev/null
    echo "  leader before: $leader; replaced in order: $(tr '\n' ' ' <"$order")"
    [ "$(tail -n 1 "$order")" = "$leader" ] || { echo "  the leader was not replaced last"; status=1; }
    local acked failed
    acked=$(grep -c '^ok ' "$log" || true)
    failed=$(grep -c '^fail ' "$log" || true)
    echo "  writes during the rollout: $acked acknowledged, $failed failed"
    [ "$acked" -gt 0 ] || { echo "  no write succeeded during the rollout"; status=1; }
    # Every acknowledged write is there afterwards.
    local have n missing=0
    have=$(etcdctl --endpoints "http://$(pod_ip kv-0):2379" get rollout/ --prefix --keys-only | grep -c . || true)
    while read -r _ n; do
        [ "$(etcdctl --endpoints "http://$(pod_ip kv-0):2379" get "rollout/$n" --print-value-only)" = "$n" ] ||
            missing=$((missing + 1))
    done < <(grep '^ok ' "$log")
    echo "  keys present: $have; acknowledged writes missing: $missing"
    [ "$missing" = 0 ] || status=1
    [ "$(voters "$(pod_ip kv-0)")" = 3 ] || { echo "  not 3 voters after the rollout"; status=1; }
    return $status
}

# --- storage growth ------------------------------------------------------
# "name=uid" of each member pod, sorted.
pod_uids() {
    kubectl -n kv get pods -l witan.io/cluster=kv \
        -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.uid}{"\n"}{end}' | sort | tr '\n' ' '
}

# The StatefulSet's volumeClaimTemplates are immutable: raising
# spec.storage.size makes the operator patch every member's claim, delete the
# StatefulSet with its pods orphaned and create it again. The same pods keep
# running (same UIDs, adopted by the new StatefulSet) and serving.
storage_grows_in_place() {
    local before sts_uid
    before=$(pod_uids)
    sts_uid=$(kubectl -n kv get statefulset kv -o jsonpath='{.metadata.uid}') || return 1
    kubectl -n kv patch kvc kv --type merge -p '{"spec":{"storage":{"size":"2Gi"}}}' >/dev/null || return 1
    statefulset_regrown 2Gi "$sts_uid" "$before" || return 1
    local reasons
    reasons=$(kubectl -n kv get events --field-selector involvedObject.kind=KvCluster,involvedObject.name=kv \
        -o jsonpath='{range .items[*]}{.reason}{"\n"}{end}' | sort -u | tr '\n' ' ')
    for want in ExpandVolumes OrphanStatefulSet RecreateStatefulSet; do
        grep -qw "$want" <<<"$reasons" || { echo "  no $want event: $reasons"; return 1; }
    done
    put_get_every_member
}

# After a storage change: a new StatefulSet (not uid $2) with a claim
# template of $1, every member claim requesting $1, the member pods adopted
# by it and the same as before ($3, from pod_uids), the cluster Running.
statefulset_regrown() { # size old-statefulset-uid pod-uids-before
    local size=$1 sts_uid=$2 before=$3 deadline got
    deadline=$((SECONDS + 120))
    until got=$(kubectl -n kv get statefulset kv -o jsonpath='{.metadata.uid} {.spec.volumeClaimTemplates[0].spec.resources.requests.storage}' 2>/dev/null) &&
        [ "${got#* }" = "$size" ] && [ "${got% *}" != "$sts_uid" ]; do
        [ $SECONDS -lt $deadline ] || {
            echo "  StatefulSet (uid size): '$got'; phase $(kubectl -n kv get kvc kv -o jsonpath='{.status.phase}')"
            return 1
        }
        sleep 0.5
    done
    local pod claim
    for pod in kv-0 kv-1 kv-2; do
        claim=$(kubectl -n kv get pvc "data-$pod" -o jsonpath='{.spec.resources.requests.storage}')
        [ "$claim" = "$size" ] || { echo "  data-$pod requests '$claim'"; return 1; }
    done
    # Adopted: every member pod's controller is the new StatefulSet.
    local new_uid owners
    new_uid=${got% *}
    deadline=$((SECONDS + 60))
    until owners=$(kubectl -n kv get pods -l witan.io/cluster=kv \
        -o jsonpath='{range .items[*]}{.metadata.ownerReferences[?(@.controller==true)].uid}{"\n"}{end}') &&
        [ "$(grep -cx "$new_uid" <<<"$owners")" = 3 ]; do
        [ $SECONDS -lt $deadline ] || { echo "  pod owners: $(tr '\n' ' ' <<<"$owners"), new StatefulSet $new_uid"; return 1; }
        sleep 0.5
    done
    kubectl -n kv wait --for=jsonpath='{.status.phase}'=Running kvc/kv --timeout=60s >/dev/null || return 1
    kubectl -n kv wait --for=condition=Available kvc/kv --timeout=30s >/dev/null || return 1
    local after
    after=$(pod_uids)
    [ "$before" = "$after" ] || { printf '  pods before: %s\n  pods after:  %s\n' "$before" "$after"; return 1; }
    echo "  same pods: $after"
}

# Resumable: with the operator stopped, the StatefulSet is deleted with its
# pods orphaned (as the operator's own step does) and the size raised; the
# operator, started again, grows the claims first and then creates the
# StatefulSet again around the same pods.
storage_resumes_without_a_statefulset() {
    local before sts_uid
    before=$(pod_uids)
    sts_uid=$(kubectl -n kv get statefulset kv -o jsonpath='{.metadata.uid}') || return 1
    kubectl -n witan-system scale deploy --all --replicas=0 >/dev/null || return 1
    kubectl -n witan-system wait --for=delete pod --all --timeout=90s >/dev/null || return 1
    kubectl -n kv delete statefulset kv --cascade=orphan --wait=true --timeout=60s >/dev/null || return 1
    kubectl -n kv patch kvc kv --type merge -p '{"spec":{"storage":{"size":"3Gi"}}}' >/dev/null || return 1
    kubectl -n witan-system scale deploy --all --replicas=1 >/dev/null || return 1
    statefulset_regrown 3Gi "$sts_uid" "$before" || return 1
    kubectl -n witan-system wait --for=condition=Available deploy --all --timeout=60s >/dev/null || return 1
    put_get_every_member
}

# A smaller size, or another StorageClass, is refused by the API server with
# the CRD's CEL messages.
storage_shrink_refused() {
    local out
    if out=$(printf 'apiVersion: witan.io/v1alpha1\nkind: KvCluster\nmetadata: {name: kv, namespace: kv}\nspec: {replicas: 3, version: %s, storage: {size: 1Gi}}\n' "$ROLLOUT_TAG" |
        kubectl apply -f - 2>&1); then
        echo "  a shrink to 1Gi was accepted"; return 1
    fi
    grep -q "storage.size cannot shrink" <<<"$out" || { echo "  $out"; return 1; }
    if out=$(kubectl -n kv patch kvc kv --type merge -p '{"spec":{"storage":{"storageClassName":"other"}}}' 2>&1); then
        echo "  a new storageClassName was accepted"; return 1
    fi
    grep -q "storage.storageClassName cannot change" <<<"$out" || { echo "  $out"; return 1; }
    [ "$(kubectl -n kv get kvc kv -o jsonpath='{.spec.storage.size}')" = 2Gi ]
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

# --- backup and restore --------------------------------------------------
BACKUP_NS=kvb

backup_ip() { kubectl -n "$BACKUP_NS" get pod "$1" -o jsonpath='{.status.podIP}'; }
# One line per backup Job of kvb, with the jsonpath fields given.
backup_jobs() { # jsonpath fields
    kubectl -n "$BACKUP_NS" get jobs -l witan.io/backup-of=kvb -o jsonpath="{range .items[*]}$1{\"\\n\"}{end}"
}

# A KvCluster backs itself up to a PVC every minute: the CronJob's pod (the
# operator image, `witan-operator backup`) stores a snapshot and the status
# reports it.
scheduled_backup_lands() {
    kubectl create namespace "$BACKUP_NS" >/dev/null || return 1
    printf 'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: kv-backups, namespace: %s}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n' "$BACKUP_NS" |
        kubectl apply -f - >/dev/null || return 1
    printf 'apiVersion: witan.io/v1alpha1\nkind: KvCluster\nmetadata: {name: kvb, namespace: %s}\nspec: {replicas: 1, backup: {schedule: "* * * * *", retention: 3, destination: {pvc: {claimName: kv-backups, subPath: kvb}}}}\n' "$BACKUP_NS" |
        kubectl apply -f - >/dev/null || return 1
    kubectl -n "$BACKUP_NS" wait --for=condition=Available kvc/kvb --timeout=180s >/dev/null || return 1
    local before
    before=$(backup_jobs '{.metadata.name}')
    local ip
    ip=$(backup_ip kvb-0)
    etcdctl --endpoints "http://$ip:2379" put backup/a one >/dev/null || return 1
    etcdctl --endpoints "http://$ip:2379" put backup/b two >/dev/null || return 1
    # The first backup Job created after the writes (revision 1 is the empty
    # store, each put +1, so it holds revision 3 or later): the schedule is
    # a minute, so bounded at three.
    local job="" deadline=$((SECONDS + 180))
    until job=$(backup_jobs '{.metadata.name} {.status.completionTime}' | awk 'NF == 2 { print $1 }' |
        grep -vxF -f <(printf '%s\n' "$before" | grep .) | head -n 1) && [ -n "$job" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "  no backup Job finished: $(kubectl -n "$BACKUP_NS" get kvc kvb -o jsonpath='{.status.conditions}')"
            return 1
        fi
        sleep 0.5
    done
    # Its pod's termination message names the backup; the status must report
    # it within 15 s of the Job finishing, well inside the 60 s after which
    # a converged cluster is looked at again anyway: the operator watches
    # the Jobs.
    local want finished=$SECONDS revision location
    want=$(kubectl -n "$BACKUP_NS" get pods -l "batch.kubernetes.io/job-name=$job" \
        -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.message}' |
        python3 -c 'import json,sys; print(json.load(sys.stdin).get("location", ""))') || return 1
    [ -n "$want" ] || { echo "  Job $job reported no location"; return 1; }
    until location=$(kubectl -n "$BACKUP_NS" get kvc kvb -o jsonpath='{.status.lastBackup.location}') &&
        [ "$location" = "$want" ]; do
        [ $((SECONDS - finished)) -lt 15 ] || {
            echo "  Job $job finished $((SECONDS - finished))s ago with $want; status.lastBackup: '$location'"
            return 1
        }
        sleep 0.5
    done
    echo "  Job $job reached status.lastBackup $((SECONDS - finished))s after it was seen finished"
    revision=$(kubectl -n "$BACKUP_NS" get kvc kvb -o jsonpath='{.status.lastBackup.revision}')
    [ "${revision:-0}" -ge 3 ] || { echo "  the backup after the writes has revision $revision"; return 1; }
    location=$(kubectl -n "$BACKUP_NS" get kvc kvb -o jsonpath='{.status.lastBackup.location}')
    echo "  lastBackup: revision $revision at $location"
    [ -n "$location" ] || { echo "  lastBackup has no location"; return 1; }
    kubectl -n "$BACKUP_NS" wait --for=condition=BackupReady kvc/kvb --timeout=30s >/dev/null
}

# "key create_revision mod_revision version" of each backup/ key, then the
# store's revision, on one line.
kv_revisions() { # pod IP
    etcdctl --endpoints "http://$1:2379" get backup/ --prefix -w json | python3 -c '
import base64, json, sys
r = json.load(sys.stdin)
kvs = ["%s %d %d %d" % (base64.b64decode(kv["key"]).decode(), kv["create_revision"], kv["mod_revision"], kv["version"]) for kv in r.get("kvs", [])]
print("; ".join(kvs + ["revision %d" % r["header"]["revision"]]))'
}

# A new KvCluster bootstraps from the latest backup of kvb: same keys and
# values, create/mod revisions and versions, and the store's revision.
restored_cluster_has_the_data() {
    printf 'apiVersion: witan.io/v1alpha1\nkind: KvCluster\nmetadata: {name: kvr, namespace: %s}\nspec: {replicas: 1, bootstrap: {restore: {name: latest, sourceCluster: kvb, source: {pvc: {claimName: kv-backups, subPath: kvb}}}}}\n' "$BACKUP_NS" |
        kubectl apply -f - >/dev/null || return 1
    kubectl -n "$BACKUP_NS" wait --for=condition=Available kvc/kvr --timeout=180s >/dev/null || return 1
    local ip got
    ip=$(backup_ip kvr-0)
    got=$(etcdctl --endpoints "http://$ip:2379" get backup/ --prefix --print-value-only | tr '\n' ' ')
    [ "$got" = "one two " ] || { echo "  restored values: '$got'"; return 1; }
    # The same revisions: each key's create/mod revision and version, and
    # the store's revision is the backup's (nothing was written since).
    local source restored
    source=$(kv_revisions "$(backup_ip kvb-0)") && restored=$(kv_revisions "$ip") || return 1
    echo "  revisions (key create mod version; store): $restored"
    [ "$restored" = "$source" ] || { echo "  source cluster: $source"; return 1; }
    kubectl -n "$BACKUP_NS" wait --for=condition=Restored kvc/kvr --timeout=60s >/dev/null ||
        { echo "  Restored: $(kubectl -n "$BACKUP_NS" get kvc kvr -o jsonpath='{.status.conditions}')"; return 1; }
}

# --- auth --------------------------------------------------------------
AUTH_NS=kva
ROOT_PASSWORD=e2e-root-password

auth_ip() { kubectl -n "$AUTH_NS" get pod "$1" -o jsonpath='{.status.podIP}'; }

create_auth_cluster() {
    kubectl create namespace "$AUTH_NS" >/dev/null || return 1
    kubectl -n "$AUTH_NS" create secret generic kva-root \
        --from-literal=password="$ROOT_PASSWORD" >/dev/null || return 1
    printf 'apiVersion: witan.io/v1alpha1\nkind: KvCluster\nmetadata: {name: kva, namespace: %s}\nspec: {replicas: 1, auth: {enabled: true, rootPasswordSecretRef: {name: kva-root}}}\n' "$AUTH_NS" |
        kubectl apply -f - >/dev/null || return 1
    kubectl -n "$AUTH_NS" wait --for=condition=Available kvc/kva --timeout=180s >/dev/null
}

anonymous_refused() { # pod IP
    local out
    if out=$(etcdctl --endpoints "http://$1:2379" get k 2>&1); then return 1; fi
    grep -q "user name is empty" <<<"$out"
}

auth_turned_on() {
    local ip deadline=$((SECONDS + 90))
    ip=$(auth_ip kva-0) || return 1
    # Anonymous requests are refused once the operator enabled auth.
    until anonymous_refused "$ip"; do
        [ $SECONDS -lt $deadline ] || { echo "  auth never came on: $(etcdctl --endpoints "http://$ip:2379" get k 2>&1)"; return 1; }
        sleep 0.5
    done
    etcdctl --endpoints "http://$ip:2379" --user "root:$ROOT_PASSWORD" put k v >/dev/null || return 1
    [ "$(etcdctl --endpoints "http://$ip:2379" --user "root:$ROOT_PASSWORD" get k --print-value-only)" = v ] || return 1
    # The operator's own credentials: generated once, owned by the KvCluster.
    [ "$(kubectl -n "$AUTH_NS" get secret kva-operator-auth -o jsonpath='{.metadata.ownerReferences[0].kind}')" = KvCluster ] ||
        { echo "  no owned kva-operator-auth Secret"; return 1; }
    [ "$(kubectl -n "$AUTH_NS" get secret kva-operator-auth -o jsonpath='{.data.username}' | base64 -d)" = witan-operator ]
}

auth_operator_scales() {
    kubectl -n "$AUTH_NS" scale kvc/kva --replicas=3 >/dev/null || return 1
    kubectl -n "$AUTH_NS" wait --for=jsonpath='{.status.readyReplicas}'=3 kvc/kva --timeout=180s >/dev/null || return 1
    local voters deadline=$((SECONDS + 120))
    until voters=$(etcdctl --endpoints "http://$(auth_ip kva-0):2379" --user "root:$ROOT_PASSWORD" member list -w json |
        python3 -c 'import json,sys; print(sum(1 for m in json.load(sys.stdin)["members"] if not m.get("isLearner")))') &&
        [ "$voters" = 3 ]; do
        [ $SECONDS -lt $deadline ] || { echo "  voters: $voters"; return 1; }
        sleep 0.5
    done
}

# --- TLS ---------------------------------------------------------------
TLS_NS=kvs
TLS_DIR=$E2E_DIR/tls

# A throwaway CA; a member certificate for the client port and one for
# peers, both naming every member; the operator's client certificate
# (CN witan-operator) and one for etcdctl. The server certificate also names
# every address of the pod subnet: etcdctl here reaches members by pod IP.
make_certificates() {
    mkdir -p "$TLS_DIR" && cd "$TLS_DIR" || return 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=witan-e2e-ca -keyout ca.key -out ca.crt 2>/dev/null || return 1
    local dns="" i subnet=${E2E_BRIDGE_IP%.*}
    for i in 0 1 2 3 4; do
        dns+="DNS:kvs-$i.kvs-peer.$TLS_NS.svc,DNS:kvs-$i.kvs-peer.$TLS_NS.svc.cluster.local,"
    done
    local ips="IP:127.0.0.1"
    for i in $(seq 2 254); do ips+=",IP:$subnet.$i"; done
    issue() { # name CN extendedKeyUsage subjectAltName
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
            -keyout "$1.key" -out "$1.csr" 2>/dev/null &&
            printf 'extendedKeyUsage=%s\n%s' "$3" "${4:+subjectAltName=$4}" >"$1.ext" &&
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    issue server kvs serverAuth "${dns}DNS:localhost,$ips" &&
        issue peer kvs serverAuth,clientAuth "${dns%,}" &&
        issue operator witan-operator clientAuth "" &&
        issue etcdctl e2e clientAuth "" || return 1
    cd - >/dev/null
}

tls_secret() { # secret name, certificate name in $TLS_DIR
    kubectl -n "$TLS_NS" create secret generic "$1" --type=kubernetes.io/tls \
        --from-file=tls.crt="$TLS_DIR/$2.crt" --from-file=tls.key="$TLS_DIR/$2.key" \
        --from-file=ca.crt="$TLS_DIR/ca.crt" >/dev/null
}

create_tls_cluster() {
    make_certificates || { echo "  openssl failed"; return 1; }
    kubectl create namespace "$TLS_NS" >/dev/null || return 1
    tls_secret kvs-server-tls server && tls_secret kvs-peer-tls peer &&
        tls_secret kvs-operator-tls operator || return 1
    printf 'apiVersion: witan.io/v1alpha1\nkind: KvCluster\nmetadata: {name: kvs, namespace: %s}\nspec: {replicas: 3, tls: {clientCertAuth: true}}\n' "$TLS_NS" |
        kubectl apply -f - >/dev/null || return 1
    kubectl -n "$TLS_NS" wait --for=condition=Available kvc/kvs --timeout=180s >/dev/null
}

tls_etcdctl() { # pod, etcdctl args...
    local ip
    ip=$(kubectl -n "$TLS_NS" get pod "$1" -o jsonpath='{.status.podIP}') || return 1
    shift
    etcdctl --endpoints "https://$ip:2379" --cacert "$TLS_DIR/ca.crt" \
        --cert "$TLS_DIR/etcdctl.crt" --key "$TLS_DIR/etcdctl.key" "$@"
}

tls_put_get_every_member() {
    local pod got
    tls_etcdctl kvs-0 put secure-key secure-value >/dev/null || return 1
    for pod in kvs-0 kvs-1 kvs-2; do
        got=$(tls_etcdctl "$pod" get secure-key --print-value-only) || return 1
        [ "$got" = secure-value ] || { echo "  $pod read '$got'"; return 1; }
    done
    [ "$(tls_etcdctl kvs-0 member list | grep -c ', started, ')" = 3 ] || { echo "  not 3 started members"; return 1; }
    tls_etcdctl kvs-0 member list | grep -q 'https://kvs-0.kvs-peer.kvs.svc:2380' ||
        { echo "  peer URLs are not https"; return 1; }
}

tls_refuses_strangers() {
    local ip
    ip=$(kubectl -n "$TLS_NS" get pod kvs-0 -o jsonpath='{.status.podIP}') || return 1
    # No client certificate.
    if etcdctl --endpoints "https://$ip:2379" --cacert "$TLS_DIR/ca.crt" \
        --dial-timeout 3s --command-timeout 3s get secure-key >/dev/null 2>&1; then
        echo "  served a client without a certificate"; return 1
    fi
    # Plain http on the TLS port.
    if etcdctl --endpoints "http://$ip:2379" --dial-timeout 3s --command-timeout 3s \
        get secure-key >/dev/null 2>&1; then
        echo "  served plain http"; return 1
    fi
    # Probes and metrics: plain http on their own port.
    curl -fsS "http://$ip:2381/readyz" >/dev/null || { echo "  no /readyz on 2381"; return 1; }
}

# --- Prometheus ------------------------------------------------------------
# A real Prometheus server (scripts/e2e-build.sh builds it) on this machine,
# discovering targets through the e2e API server with the admin kubeconfig
# (Kubernetes service discovery), scraping what the chart's PodMonitor and
# ServiceMonitor describe (e2e/prometheus/monitors.py does the Prometheus
# Operator's translation). Pods are reached by pod IP, as from any node.
PROM_DIR=$E2E_DIR/prometheus
PROM_ADDR=""
prom_pid=""
stop_prometheus() {
    [ -z "$prom_pid" ] && return
    kill "$prom_pid" 2>/dev/null
    wait "$prom_pid" 2>/dev/null || true
}
trap stop_prometheus EXIT

# "namespace/pod value" per series of an instant PromQL query, or
# "namespace/kvcluster value" with `by` kvcluster.
prom_query() { # PromQL, label pair (e.g. "namespace pod")
    curl -fsS --max-time 5 "http://$PROM_ADDR/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
labels = sys.argv[1].split()
r = json.load(sys.stdin)
if r["status"] != "success":
    sys.exit("query failed: %s" % r)
for s in sorted(r["data"]["result"], key=lambda s: [s["metric"].get(l, "") for l in labels]):
    print("/".join(s["metric"].get(l, "") for l in labels), s["value"][1])' "$2"
}

start_prometheus() {
    mkdir -p "$PROM_DIR" || return 1
    # The translation's own unit tests first.
    PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s "$ROOT/e2e/prometheus" >"$PROM_DIR/unittest.log" 2>&1 ||
        { cat "$PROM_DIR/unittest.log"; return 1; }
    local kube_version
    kube_version=$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') || return 1
    # The monitors as the chart renders them when enabled, every 2s.
    helm template witan "$ROOT/charts/witan" --namespace witan-system --kube-version "$kube_version" \
        --set metrics.kvClusterPodMonitor.enabled=true,metrics.kvClusterPodMonitor.interval=2s \
        --set metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.interval=2s |
        python3 "$ROOT/e2e/prometheus/monitors.py" "$KUBECONFIG" >"$PROM_DIR/prometheus.yml" || return 1
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || return 1
    PROM_ADDR=127.0.0.1:$port
    prometheus --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/data" \
        --web.listen-address="$PROM_ADDR" >"$PROM_DIR/prometheus.log" 2>&1 &
    prom_pid=$!
    local deadline=$((SECONDS + 60))
    until curl -fsS --max-time 2 "http://$PROM_ADDR/-/ready" >/dev/null 2>&1; do
        kill -0 "$prom_pid" 2>/dev/null || { echo "  prometheus exited: $(tail -n 3 "$PROM_DIR/prometheus.log")"; return 1; }
        [ $SECONDS -lt $deadline ] || { echo "  prometheus not ready"; return 1; }
        sleep 0.5
    done
    echo "  $(prometheus --version 2>&1 | head -n 1) at $PROM_ADDR"
}

# Every running member pod of every KvCluster, "namespace/pod", one a line.
member_pods() {
    kubectl get pods -A -l app.kubernetes.io/name=witan,app.kubernetes.io/managed-by=witan-operator \
        --field-selector=status.phase=Running \
        -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{end}' | sort
}

# Every member (plain-http members on the client port, TLS members on their
# metrics port) reports etcd_server_has_leader 1; the operator is up.
prometheus_every_member_has_a_leader() {
    start_prometheus || return 1
    local want got deadline=$((SECONDS + 90))
    want=$(member_pods | sed 's/$/ 1/')
    [ -n "$want" ] || { echo "  no member pods"; return 1; }
    until got=$(prom_query etcd_server_has_leader "namespace pod") && [ "$got" = "$want" ]; do
        [ $SECONDS -lt $deadline ] || { printf '  want:\n%s\n  got:\n%s\n' "$want" "$got"; return 1; }
        sleep 1
    done
    echo "  etcd_server_has_leader 1 on: $(cut -d' ' -f1 <<<"$got" | tr '\n' ' ')"
    until got=$(prom_query 'up{namespace="witan-system", endpoint="http-metrics"}' "namespace pod") && [ "${got##* }" = 1 ]; do
        [ $SECONDS -lt $deadline ] || { echo "  operator target: '$got'"; return 1; }
        sleep 1
    done
    echo "  operator scraped through the chart's metrics Service: $got"
}

# Exactly one member of each KvCluster reports etcd_server_is_leader 1.
prometheus_one_leader_per_cluster() {
    local want got deadline=$((SECONDS + 30))
    want=$(kubectl get kvc -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name} 1{"\n"}{end}' | sort)
    until got=$(prom_query 'sum by (namespace, kvcluster) (etcd_server_is_leader)' "namespace kvcluster") &&
        [ "$got" = "$want" ]; do
        [ $SECONDS -lt $deadline ] || { printf '  want:\n%s\n  got:\n%s\n' "$want" "$got"; return 1; }
        sleep 1
    done
    echo "  leaders per KvCluster: $(tr '\n' ' ' <<<"$got")"
}

check "helm install: the operator runs with the chart's ServiceAccount and RBAC" helm_install
check "the operator's Deployment is Available" operator_running
check "a 3-member KvCluster becomes Available" create_cluster
check "its three pods are Ready" members_ready
check "MemberList shows three voters; the status names a leader" three_voters_and_a_leader
check "etcdctl put/get through every member's pod IP" put_get_every_member
check "a deleted member pod returns with its data and member ID" deleted_member_returns
check "scale 3 -> 5 -> 3: never an even number of voters" scale_5_and_back
check "rollout: a new version replaces every member, the leader last, and no acknowledged write is lost" rollout_leader_last
check "storage: raising spec.storage.size grows every member claim and re-creates the StatefulSet around the same running pods" storage_grows_in_place
check "storage: a shrink or a new storageClassName is refused by the CRD's CEL rules" storage_shrink_refused
check "storage: with the operator stopped, the StatefulSet orphan-deleted and the size raised, the restarted operator grows the claims and re-creates it around the same pods" storage_resumes_without_a_statefulset
check "deleting the KvCluster garbage-collects its children" deleted_cluster_collected
check "backup: a scheduled backup to a PVC lands and the status reports it" scheduled_backup_lands
check "restore: a new KvCluster bootstraps from the latest backup with its data" restored_cluster_has_the_data
check "auth: a KvCluster with spec.auth becomes Available" create_auth_cluster
check "auth: the operator turns auth on; etcdctl needs a user, root's password works" auth_turned_on
check "auth: the operator scales 1 -> 3 as its own user" auth_operator_scales
check "TLS: a KvCluster with certificates from Secrets becomes Available" create_tls_cluster
check "TLS: etcdctl with the CA and a client certificate writes and reads through every member" tls_put_get_every_member
check "TLS: no client certificate and plain http are refused; probes use plain-http 2381" tls_refuses_strangers
check "prometheus: the chart's monitors scrape every member (etcd_server_has_leader 1) and the operator" prometheus_every_member_has_a_leader
check "prometheus: exactly one member of each KvCluster has etcd_server_is_leader 1" prometheus_one_leader_per_cluster
[ "$fail" = 0 ] || dump
echo "e2e: $pass/$((pass + fail)) scenarios pass in $((SECONDS - start))s"
[ "$fail" = 0 ]
