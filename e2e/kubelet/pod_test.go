package main

import (
	"os"
	"path/filepath"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestInitProgress(t *testing.T) {
	for _, tc := range []struct {
		name      string
		exited    []bool
		codes     []int32
		policy    v1.RestartPolicy
		wantState initState
		wantNext  int
	}{
		{"none", nil, nil, v1.RestartPolicyAlways, initsDone, 0},
		{"first not run", []bool{false, false}, []int32{0, 0}, v1.RestartPolicyAlways, initsRunning, 0},
		{"first done, second next", []bool{true, false}, []int32{0, 0}, v1.RestartPolicyAlways, initsRunning, 1},
		{"all done", []bool{true, true}, []int32{0, 0}, v1.RestartPolicyAlways, initsDone, 2},
		{"failed retries", []bool{true, false}, []int32{1, 0}, v1.RestartPolicyOnFailure, initsRunning, 0},
		{"first succeeded with Never", []bool{true, false}, []int32{0, 0}, v1.RestartPolicyNever, initsRunning, 1},
		{"second failed with Never", []bool{true, true}, []int32{0, 2}, v1.RestartPolicyNever, initsFailed, 1},
	} {
		state, next := initProgress(tc.exited, tc.codes, tc.policy)
		if state != tc.wantState || next != tc.wantNext {
			t.Errorf("%s: got (%d, %d), want (%d, %d)", tc.name, state, next, tc.wantState, tc.wantNext)
		}
	}
}

func TestSidecarsAreRefused(t *testing.T) {
	always := v1.ContainerRestartPolicyAlways
	pod := &v1.Pod{Spec: v1.PodSpec{InitContainers: []v1.Container{{Name: "fetch"}, {Name: "proxy", RestartPolicy: &always}}}}
	if unsupported(pod) == "" {
		t.Error("a sidecar init container is accepted")
	}
	pod.Spec.InitContainers = pod.Spec.InitContainers[:1]
	if why := unsupported(pod); why != "" {
		t.Errorf("a plain init container is refused: %s", why)
	}
}

func TestSubPathTakesTheVolumeRootsMode(t *testing.T) {
	root := t.TempDir()
	if err := os.Chmod(root, 0o775|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(root, "kvb", "daily")
	if err := makeSubPath(root, sub); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(root, "kvb"), sub} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o775 || fi.Mode()&os.ModeSetgid == 0 {
			t.Errorf("%s: mode %v, want group-writable setgid like the root", dir, fi.Mode())
		}
	}
	if err := makeSubPath(root, sub); err != nil { // existing: nothing to do
		t.Error(err)
	}
}
