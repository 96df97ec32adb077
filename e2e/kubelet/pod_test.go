package main

import (
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
