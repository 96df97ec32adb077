package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// volume is a pod volume as a directory (or, for subPath mounts, a path
// inside one) on this machine.
type volume struct {
	path     string
	readOnly bool // ConfigMaps, Secrets and projections are read-only, as with a kubelet
}

// prepare gives the pod its address, network namespace, /etc files and
// volumes. It is repeated until it succeeds (a claim may not be bound yet).
func (w *podWorker) prepare() error {
	pod := w.pod
	volumes := map[string]volume{}
	for _, v := range pod.Spec.Volumes {
		vol, err := w.volume(v)
		if err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		volumes[v.Name] = vol
	}
	ip, err := w.k.allocateIP(w.uid)
	if err != nil {
		return err
	}
	w.ip = ip
	w.netns = w.k.cfg.netnsPrefix + string(w.uid)[:8]
	if err := createNetns(w.netns, w.k.cfg.bridge, ip, w.k.cfg.subnet); err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	etc := filepath.Join(w.dir, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return err
	}
	// No name server answers inside the pod: every name it may look up is in
	// /etc/hosts, and other lookups fail at once instead of timing out.
	resolv := fmt.Sprintf("search %s.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n", pod.Namespace)
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte(resolv), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(etc, "hostname"), []byte(podHostname(pod)+"\n"), 0o644); err != nil {
		return err
	}
	w.volumes = volumes
	if err := os.WriteFile(filepath.Join(etc, "hosts"), nil, 0o644); err != nil {
		return err
	}
	w.mu.Lock()
	w.hostIP = ip
	w.mu.Unlock()
	if err := w.writeHosts(w.k.dnsRecords()); err != nil {
		return err
	}
	now := metav1.Now()
	w.startTime = &now
	return nil
}

// writeHosts rewrites the pod's /etc/hosts in place (a bind mount follows
// the inode, so the file is truncated and written, never replaced).
func (w *podWorker) writeHosts(records []dnsRecord) error {
	w.mu.Lock()
	defer w.mu.Unlock() // one writer at a time: the worker and refreshHosts
	if w.hostIP == "" {
		return nil
	}
	path := filepath.Join(w.dir, "etc", "hosts")
	content := hostsFile(w.latest, w.hostIP, records)
	if old, err := os.ReadFile(path); err == nil && string(old) == content {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (w *podWorker) volume(v v1.Volume) (volume, error) {
	pod := w.pod
	dir := filepath.Join(w.dir, "volumes", v.Name)
	switch {
	case v.EmptyDir != nil:
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return volume{}, err
		}
		return volume{path: dir}, w.applyFSGroup(dir)
	case v.HostPath != nil:
		return volume{path: v.HostPath.Path}, nil
	case v.PersistentVolumeClaim != nil:
		claim, err := w.k.claims.PersistentVolumeClaims(pod.Namespace).Get(v.PersistentVolumeClaim.ClaimName)
		if err != nil {
			return volume{}, fmt.Errorf("claim %q: %w", v.PersistentVolumeClaim.ClaimName, err)
		}
		if claim.Status.Phase != v1.ClaimBound || claim.Spec.VolumeName == "" {
			return volume{}, fmt.Errorf("claim %q is not bound yet", claim.Name)
		}
		pv, err := w.k.volumes.Get(claim.Spec.VolumeName)
		if err != nil {
			return volume{}, err
		}
		if pv.Spec.HostPath == nil {
			return volume{}, fmt.Errorf("volume %s is not a directory on this machine", pv.Name)
		}
		return volume{path: pv.Spec.HostPath.Path, readOnly: v.PersistentVolumeClaim.ReadOnly}, w.applyFSGroup(pv.Spec.HostPath.Path)
	case v.ConfigMap != nil:
		files, err := w.configMapFiles(v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
		if err != nil {
			return volume{}, err
		}
		return volume{path: dir, readOnly: true}, writeFiles(dir, files, v.ConfigMap.DefaultMode)
	case v.Secret != nil:
		files, err := w.secretFiles(v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
		if err != nil {
			return volume{}, err
		}
		return volume{path: dir, readOnly: true}, writeFiles(dir, files, v.Secret.DefaultMode)
	case v.DownwardAPI != nil:
		files, err := w.downwardFiles(v.DownwardAPI.Items)
		if err != nil {
			return volume{}, err
		}
		return volume{path: dir, readOnly: true}, writeFiles(dir, files, v.DownwardAPI.DefaultMode)
	case v.Projected != nil:
		files := map[string]file{}
		for _, src := range v.Projected.Sources {
			var part map[string]file
			var err error
			switch {
			case src.ConfigMap != nil:
				part, err = w.configMapFiles(src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional)
			case src.Secret != nil:
				part, err = w.secretFiles(src.Secret.Name, src.Secret.Items, src.Secret.Optional)
			case src.DownwardAPI != nil:
				part, err = w.downwardFiles(src.DownwardAPI.Items)
			case src.ServiceAccountToken != nil:
				part, err = w.token(src.ServiceAccountToken)
			default:
				err = fmt.Errorf("projected source not supported by the process kubelet")
			}
			if err != nil {
				return volume{}, err
			}
			for k, f := range part {
				files[k] = f
			}
		}
		return volume{path: dir, readOnly: true}, writeFiles(dir, files, v.Projected.DefaultMode)
	}
	return volume{}, fmt.Errorf("volume type not supported by the process kubelet")
}

type file struct {
	data []byte
	mode *int32
}

func (w *podWorker) configMapFiles(name string, items []v1.KeyToPath, optional *bool) (map[string]file, error) {
	cm, err := w.k.configMaps.ConfigMaps(w.pod.Namespace).Get(name)
	if err != nil {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, fmt.Errorf("configmap %q: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return selectItems(data, items)
}

func (w *podWorker) secretFiles(name string, items []v1.KeyToPath, optional *bool) (map[string]file, error) {
	s, err := w.k.secrets.Secrets(w.pod.Namespace).Get(name)
	if err != nil {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return selectItems(s.Data, items)
}

func selectItems(data map[string][]byte, items []v1.KeyToPath) (map[string]file, error) {
	files := map[string]file{}
	if len(items) == 0 {
		for k, v := range data {
			files[k] = file{data: v}
		}
		return files, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("key %q not found", it.Key)
		}
		files[it.Path] = file{data: v, mode: it.Mode}
	}
	return files, nil
}

func (w *podWorker) downwardFiles(items []v1.DownwardAPIVolumeFile) (map[string]file, error) {
	files := map[string]file{}
	for _, it := range items {
		if it.FieldRef == nil {
			return nil, fmt.Errorf("downwardAPI %q: only fieldRef is supported by the process kubelet", it.Path)
		}
		var value string
		switch it.FieldRef.FieldPath {
		case "metadata.labels", "metadata.annotations":
			m := w.pod.Labels
			if it.FieldRef.FieldPath == "metadata.annotations" {
				m = w.pod.Annotations
			}
			var b strings.Builder
			for _, k := range sortedKeys(m) {
				fmt.Fprintf(&b, "%s=%q\n", k, m[k])
			}
			value = b.String()
		default:
			var err error
			if value, err = w.fieldValue(it.FieldRef.FieldPath); err != nil {
				return nil, err
			}
		}
		files[it.Path] = file{data: []byte(value), mode: it.Mode}
	}
	return files, nil
}

// token asks the API server for a token bound to this pod, as the kubelet
// does for projected serviceAccountToken sources. It is not refreshed: the
// API server's default expiry outlasts any test.
func (w *podWorker) token(src *v1.ServiceAccountTokenProjection) (map[string]file, error) {
	pod := w.pod
	req := &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: src.ExpirationSeconds,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := w.k.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for serviceaccount %q: %w", sa, err)
	}
	return map[string]file{src.Path: {data: []byte(tr.Status.Token)}}, nil
}

func writeFiles(dir string, files map[string]file, defaultMode *int32) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	mode := int32(0o644)
	if defaultMode != nil {
		mode = *defaultMode
	}
	for name, f := range files {
		path := filepath.Join(dir, name)
		if !strings.HasPrefix(path, dir+string(filepath.Separator)) {
			return fmt.Errorf("path %q leaves the volume", name)
		}
		m := mode
		if f.mode != nil {
			m = *f.mode
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, f.data, os.FileMode(m)); err != nil {
			return err
		}
		if err := os.Chmod(path, os.FileMode(m)); err != nil {
			return err
		}
	}
	return nil
}

// applyFSGroup gives a writable volume to the pod's fsGroup, as the kubelet
// does: group-owned, group-writable, setgid directories.
func (w *podWorker) applyFSGroup(dir string) error {
	sc := w.pod.Spec.SecurityContext
	if sc == nil || sc.FSGroup == nil {
		return nil
	}
	gid := int(*sc.FSGroup)
	if st, err := os.Stat(dir); err == nil && statGid(st) == gid && ptr.Deref(sc.FSGroupChangePolicy, v1.FSGroupChangeAlways) == v1.FSGroupChangeOnRootMismatch {
		return nil
	}
	return filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, -1, gid); err != nil {
			return err
		}
		if info.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		mode := info.Mode().Perm() | 0o060
		if info.IsDir() {
			mode |= 0o010 | os.ModeSetgid
		}
		return os.Chmod(path, mode)
	})
}

func createNetns(name, bridge, ip, subnet string) error {
	deleteNetns(name) // a previous attempt may have left one half made
	host, peer := "v"+name[len(name)-8:], "p"+name[len(name)-8:]
	steps := [][]string{
		{"netns", "add", name},
		{"link", "add", host, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", name},
		{"link", "set", host, "master", bridge},
		{"link", "set", host, "up"},
		{"-n", name, "link", "set", peer, "name", "eth0"},
		{"-n", name, "addr", "add", ip + "/24", "dev", "eth0"},
		{"-n", name, "link", "set", "eth0", "up"},
		{"-n", name, "link", "set", "lo", "up"},
		{"-n", name, "route", "add", "default", "via", subnet + ".1"},
	}
	for _, args := range steps {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// deleteNetns removes the namespace; its veth pair goes with it.
func deleteNetns(name string) {
	_ = exec.Command("ip", "netns", "del", name).Run()
	_ = exec.Command("ip", "link", "del", "v"+name[len(name)-8:]).Run()
}

func statGid(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Gid)
	}
	return -1
}
