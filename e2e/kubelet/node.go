package main

import (
	"context"
	"log"
	"runtime"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

const heartbeatPeriod = 10 * time.Second

// registerNode creates the Node (or takes over one of the same name) with a
// Ready condition: the kubelet is up and can start pods.
func (k *kubelet) registerNode(ctx context.Context) error {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.cfg.node,
			Labels: map[string]string{
				"kubernetes.io/hostname": k.cfg.node,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     runtime.GOARCH,
			},
		},
	}
	_, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return k.updateNodeStatus(ctx)
}

// updateNodeStatus writes the Ready condition, retrying when the node
// lifecycle controller changed the Node in between.
func (k *kubelet) updateNodeStatus(ctx context.Context) error {
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error { return k.tryUpdateNodeStatus(ctx) })
}

func (k *kubelet) tryUpdateNodeStatus(ctx context.Context) error {
	node, err := k.client.CoreV1().Nodes().Get(ctx, k.cfg.node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	capacity := v1.ResourceList{
		v1.ResourceCPU:    *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		v1.ResourceMemory: resource.MustParse("16Gi"),
		v1.ResourcePods:   *resource.NewQuantity(maxPods, resource.DecimalSI),
	}
	node.Status.Capacity = capacity
	node.Status.Allocatable = capacity
	node.Status.Addresses = []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: k.cfg.subnet + ".1"},
		{Type: v1.NodeHostName, Address: k.cfg.node},
	}
	node.Status.NodeInfo.KubeletVersion = "witan-e2e-kubelet"
	node.Status.NodeInfo.OperatingSystem = "linux"
	node.Status.NodeInfo.Architecture = runtime.GOARCH
	node.Status.NodeInfo.ContainerRuntimeVersion = "process://"
	ready := v1.NodeCondition{
		Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady",
		Message: "the process kubelet is running", LastHeartbeatTime: now, LastTransitionTime: now,
	}
	found := false
	for i, c := range node.Status.Conditions {
		if c.Type == v1.NodeReady {
			if c.Status == v1.ConditionTrue {
				ready.LastTransitionTime = c.LastTransitionTime
			}
			node.Status.Conditions[i] = ready
			found = true
		}
	}
	if !found {
		node.Status.Conditions = append(node.Status.Conditions, ready)
	}
	_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

// heartbeat renews the node Lease and the Ready condition, so that the node
// lifecycle controller keeps the node Ready only while this process lives.
func (k *kubelet) heartbeat(ctx context.Context) {
	leases := k.client.CoordinationV1().Leases(v1.NamespaceNodeLease)
	tick := time.NewTicker(heartbeatPeriod)
	defer tick.Stop()
	for {
		now := metav1.NewMicroTime(time.Now())
		lease, err := leases.Get(ctx, k.cfg.node, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: k.cfg.node},
				Spec: coordinationv1.LeaseSpec{
					HolderIdentity: ptr.To(k.cfg.node), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now,
				},
			}, metav1.CreateOptions{})
		case err == nil:
			lease.Spec.RenewTime = &now
			_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			log.Printf("renewing the node lease: %v", err)
		}
		if err := k.updateNodeStatus(ctx); err != nil && ctx.Err() == nil {
			log.Printf("updating the node status: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
