#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane on this machine, runs one
# command against it, and tears everything down when the command ends.
#
#   scripts/e2e-up.sh [--kubelet] [--keep] -- COMMAND [ARGS...]
#   scripts/e2e-up.sh [--kubelet]            # no command: runs until Ctrl-C
#
# Started, each as a process of this script: etcd (the API server's own
# storage), kube-apiserver, kube-controller-manager, kube-scheduler, and with
# --kubelet the process kubelet (e2e/kubelet), which runs pods as local
# processes in network namespaces on a bridge this script creates.
#
# COMMAND sees KUBECONFIG (cluster admin), E2E_DIR (the run's directory:
# logs, certificates, pod volumes), E2E_BRIDGE_IP and PATH with kubectl and
# helm first. With --keep the run's directory survives the exit.
#
# Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN): the bridge, the pods'
# network namespaces and their mount namespaces.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

kubelet=0 keep=0
while [ $# -gt 0 ]; do
    case "$1" in
    --kubelet) kubelet=1; shift ;;
    --keep) keep=1; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--kubelet] [--keep] [-- COMMAND...]" >&2; exit 2 ;;
    esac
done

log() { printf 'e2e-up: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Builds the control plane on the first run; seconds once cached.
CACHE=$("$ROOT/scripts/e2e-build.sh" | tail -n 1)
K8S_VERSION=${WITAN_E2E_K8S_VERSION:-v1.37.2}
HELM_VERSION=${WITAN_E2E_HELM_VERSION:-v3.22.0}
PROMETHEUS_VERSION=${WITAN_E2E_PROMETHEUS_VERSION:-v0.316.0}
BIN=$CACHE/k8s-$K8S_VERSION/bin
export PATH="$BIN:$CACHE/helm-$HELM_VERSION/bin:$CACHE/prometheus-$PROMETHEUS_VERSION-k8s-sd/bin:$PATH"
command -v etcd >/dev/null || die "etcd not found: apt-get install etcd-server"
command -v openssl >/dev/null || die "openssl not found"
[ "$(id -u)" = 0 ] || die "needs root for the bridge and the pods' namespaces"

E2E_DIR=$(mktemp -d "${TMPDIR:-/tmp}/witan-e2e.XXXXXX")
chmod 755 "$E2E_DIR"
RUN_ID=$(basename "$E2E_DIR" | tr -dc 'a-zA-Z0-9' | tail -c 6)
export E2E_DIR
mkdir -p "$E2E_DIR/logs" "$E2E_DIR/pki"
pids=()
BRIDGE=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local i
    # Newest first: the kubelet stops its pods before the API goes away.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
        # Bounded: the kubelet's own pod shutdown is bounded by grace periods.
        local waited=0
        while kill -0 "${pids[i]}" 2>/dev/null && [ $waited -lt 600 ]; do
            sleep 0.1; waited=$((waited + 1))
        done
        kill -KILL "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    if [ -n "$BRIDGE" ]; then ip link del "$BRIDGE" 2>/dev/null || true; fi
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^wte2e-$RUN_ID-" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ "$keep" = 1 ] || [ "$status" != 0 ]; then
        log "kept $E2E_DIR (logs in $E2E_DIR/logs)"
    else
        rm -rf "$E2E_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (bounded) until "$@" succeeds, or fails naming what it waited for.
wait_for() {
    local what=$1 limit=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out after ${limit}s waiting for $what"
        local p
        for p in "${pids[@]}"; do
            kill -0 "$p" 2>/dev/null || die "a component exited while waiting for $what; see $E2E_DIR/logs"
        done
        sleep 0.2
    done
}

# --- the pod network: a bridge with a /24 no route on this machine uses ---
used=$(ip -4 route show | awk '{print $1}')
subnet=""
for _ in $(seq 1 50); do
    n=$((RANDOM % 250 + 1))
    if ! grep -q "^10\.213\.$n\." <<<"$used"; then subnet=10.213.$n; break; fi
done
[ -n "$subnet" ] || die "no free 10.213.x.0/24 subnet"
BRIDGE=wte2e-$RUN_ID
ip link add "$BRIDGE" type bridge
ip addr add "$subnet.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
E2E_BRIDGE_IP=$subnet.1
export E2E_BRIDGE_IP

# --- certificates ---
pki=$E2E_DIR/pki
ossl() { openssl "$@" 2>>"$E2E_DIR/logs/openssl.log"; }
ossl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=witan-e2e-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt"
cert() { # name subject [extensions]
    ossl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr"
    local ext=$pki/$1.ext
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n%s\n' "${3:-extendedKeyUsage=clientAuth}" >"$ext"
    ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 2 -extfile "$ext" -out "$pki/$1.crt"
}
cert apiserver "/CN=kube-apiserver" \
    "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$E2E_BRIDGE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=witan-e2e-admin"
ossl genrsa -out "$pki/sa.key" 2048
ossl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# --- etcd ---
etcd_client=$(free_port) etcd_peer=$(free_port)
etcd --name e2e --data-dir "$E2E_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync \
    >"$E2E_DIR/logs/etcd.log" 2>&1 &
pids+=($!)
wait_for "etcd" 30 etcdctl --endpoints "127.0.0.1:$etcd_client" endpoint health

# --- kube-apiserver ---
api_port=$(free_port)
kube-apiserver \
    --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address "$E2E_BRIDGE_IP" --advertise-address "$E2E_BRIDGE_IP" --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,NodeRestriction,PodSecurity,Priority,StorageObjectInUseProtection,PersistentVolumeClaimResize,RuntimeClass,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook,ResourceQuota \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
    >"$E2E_DIR/logs/kube-apiserver.log" 2>&1 &
pids+=($!)

kubeconfig() { # file user-cert-name
    cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://$E2E_BRIDGE_IP:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: e2e
  context: {cluster: e2e, user: $2}
current-context: e2e
KC
}
export KUBECONFIG=$E2E_DIR/admin.kubeconfig
kubeconfig "$KUBECONFIG" admin
wait_for "kube-apiserver /readyz" 120 kubectl get --raw /readyz

# --- controller-manager and scheduler ---
cert controller-manager "/CN=system:kube-controller-manager"
kubeconfig "$E2E_DIR/controller-manager.kubeconfig" controller-manager
cm_port=$(free_port)
kube-controller-manager --kubeconfig "$E2E_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$E2E_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$E2E_DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$cm_port" --leader-elect=false \
    --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --controllers '*' \
    >"$E2E_DIR/logs/kube-controller-manager.log" 2>&1 &
pids+=($!)
cert scheduler "/CN=system:kube-scheduler"
kubeconfig "$E2E_DIR/scheduler.kubeconfig" scheduler
sched_port=$(free_port)
kube-scheduler --kubeconfig "$E2E_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$E2E_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$E2E_DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false \
    >"$E2E_DIR/logs/kube-scheduler.log" 2>&1 &
pids+=($!)
wait_for "kube-controller-manager /healthz" 60 curl -fsk "https://127.0.0.1:$cm_port/healthz"
wait_for "kube-scheduler /healthz" 60 curl -fsk "https://127.0.0.1:$sched_port/healthz"
# The service-account and root-CA controllers ran: pods can get tokens.
wait_for "the default ServiceAccount" 60 kubectl get serviceaccount default -n default
wait_for "the kube-root-ca.crt ConfigMap" 60 kubectl get configmap kube-root-ca.crt -n default

if [ "$kubelet" = 1 ]; then
    kubelet_bin=$("$ROOT/scripts/e2e-kubelet-build.sh")
    cert kubelet "/O=system:masters/CN=witan-e2e-kubelet"
    kubeconfig "$E2E_DIR/kubelet.kubeconfig" kubelet
    "$kubelet_bin" --kubeconfig "$E2E_DIR/kubelet.kubeconfig" --node e2e-node \
        --dir "$E2E_DIR/kubelet" --bridge "$BRIDGE" --subnet "$subnet" --netns-prefix "wte2e-$RUN_ID-" \
        --api-host "$E2E_BRIDGE_IP" --api-port "$api_port" \
        --image "${WITAN_E2E_IMAGES:-witan=$ROOT/target/debug/witan,witan-operator=$ROOT/target/debug/witan-operator}" \
        >"$E2E_DIR/logs/kubelet.log" 2>&1 &
    pids+=($!)
    wait_for "node e2e-node Ready" 60 kubectl wait --for=condition=Ready node/e2e-node --timeout=1s
fi

log "up: KUBECONFIG=$KUBECONFIG (kubernetes $K8S_VERSION, api https://$E2E_BRIDGE_IP:$api_port)"
if [ $# -gt 0 ]; then
    "$@"
else
    log "Ctrl-C to stop"
    wait "${pids[0]}"
fi
