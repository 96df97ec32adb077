package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// provisionerName is the StorageClass provisioner this kubelet serves.
const provisionerName = "witan.test/e2e-local"

// ensureStorageClass creates the default StorageClass whose volumes are
// directories under --dir/volumes. Immediate binding: there is one kind of
// node and every volume lives on this machine. Volume expansion is allowed,
// so a claim may ask for more (the API server's PersistentVolumeClaimResize
// admission checks the class); a directory has no size to grow, so nothing
// resizes it and the claim's status keeps the capacity it was bound with.
func ensureStorageClass(ctx context.Context, client kubernetes.Interface, name string) error {
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
		},
		Provisioner:          provisionerName,
		ReclaimPolicy:        ptr.To(v1.PersistentVolumeReclaimDelete),
		VolumeBindingMode:    ptr.To(storagev1.VolumeBindingImmediate),
		AllowVolumeExpansion: ptr.To(true),
	}
	_, err := client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// runProvisioner creates a PersistentVolume (a directory) for every pending
// claim of our StorageClass, pre-bound to the claim so that the
// PersistentVolume controller binds the pair, and deletes the directory and
// the volume once a Delete-policy volume is Released.
func runProvisioner(ctx context.Context, client kubernetes.Interface, factory informers.SharedInformerFactory, cfg config) {
	claims := factory.Core().V1().PersistentVolumeClaims().Lister()
	volumes := factory.Core().V1().PersistentVolumes().Lister()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pvcs, _ := claims.List(everything)
		for _, pvc := range pvcs {
			if pvc.Status.Phase != v1.ClaimPending || pvc.Spec.VolumeName != "" || pvc.DeletionTimestamp != nil {
				continue
			}
			if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != cfg.storage {
				continue
			}
			name := "pvc-" + string(pvc.UID)
			if _, err := volumes.Get(name); err == nil {
				continue // created; the PersistentVolume controller binds it
			}
			if err := provision(ctx, client, cfg, pvc, name); err != nil {
				log.Printf("provisioning %s/%s: %v", pvc.Namespace, pvc.Name, err)
			}
		}
		pvs, _ := volumes.List(everything)
		for _, pv := range pvs {
			if pv.Annotations["pv.kubernetes.io/provisioned-by"] != provisionerName ||
				pv.Status.Phase != v1.VolumeReleased ||
				pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimDelete ||
				pv.DeletionTimestamp != nil {
				continue
			}
			if err := os.RemoveAll(pv.Spec.HostPath.Path); err != nil {
				log.Printf("deleting the directory of %s: %v", pv.Name, err)
				continue
			}
			err := client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				log.Printf("deleting %s: %v", pv.Name, err)
			} else {
				log.Printf("deleted released volume %s and %s", pv.Name, pv.Spec.HostPath.Path)
			}
		}
	}
}

func provision(ctx context.Context, client kubernetes.Interface, cfg config, pvc *v1.PersistentVolumeClaim, name string) error {
	dir := filepath.Join(cfg.dir, "volumes", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	size, ok := pvc.Spec.Resources.Requests[v1.ResourceStorage]
	if !ok {
		return fmt.Errorf("the claim requests no storage size")
	}
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": provisionerName},
		},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: size},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: v1.PersistentVolumeReclaimDelete,
			StorageClassName:              cfg.storage,
			VolumeMode:                    pvc.Spec.VolumeMode,
			ClaimRef: &v1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID,
			},
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: dir, Type: ptr.To(v1.HostPathDirectory)},
			},
		},
	}
	_, err := client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if err == nil {
		log.Printf("provisioned %s for %s/%s at %s", name, pvc.Namespace, pvc.Name, dir)
	}
	return err
}
