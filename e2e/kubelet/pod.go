package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

const (
	syncPeriod     = 500 * time.Millisecond
	initialBackoff = time.Second // a real kubelet starts at 10s; see docs/e2e.md
	maxBackoff     = 5 * time.Minute
	shutdownGrace  = 10 * time.Second // bound on the grace of pods when the kubelet itself stops
)

// podWorker owns one pod: its network namespace, volumes and processes, and
// its status in the API. One goroutine runs it; update() hands it the
// newest pod object.
type podWorker struct {
	k   *kubelet
	uid types.UID

	mu     sync.Mutex
	latest *v1.Pod
	gone   bool   // deleted from the API
	hostIP string // the pod IP once its /etc/hosts exists (refreshHosts may write it)

	wake     chan struct{}
	shutdown chan struct{}
	done     chan struct{} // closed when run has returned
	once     sync.Once

	pod         *v1.Pod // the worker's copy for this sync
	dir         string
	ip          string
	netns       string
	prepared    bool
	terminating bool
	prepareErr  string
	mounts      []bind // the pod's volumes, by mount
	volumes     map[string]volume
	inits       []*container // init containers, run one after another before containers
	containers  []*container
	startTime   *metav1.Time
	written     *v1.PodStatus
	conditions  map[v1.PodConditionType]v1.PodCondition
}

func newPodWorker(k *kubelet, pod *v1.Pod) *podWorker {
	w := &podWorker{
		k: k, uid: pod.UID, latest: pod,
		wake: make(chan struct{}, 1), shutdown: make(chan struct{}), done: make(chan struct{}),
		dir:        filepath.Join(k.cfg.dir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID)),
		conditions: map[v1.PodConditionType]v1.PodCondition{},
	}
	for i := range pod.Spec.InitContainers {
		w.inits = append(w.inits, newContainer(&pod.Spec.InitContainers[i]))
	}
	for i := range pod.Spec.Containers {
		c := newContainer(&pod.Spec.Containers[i])
		if len(w.inits) > 0 {
			c.waiting.Reason = "PodInitializing" // what a kubelet reports until the inits are done
		}
		w.containers = append(w.containers, c)
	}
	return w
}

// all is every container of the pod, init containers first.
func (w *podWorker) all() []*container {
	return append(append([]*container{}, w.inits...), w.containers...)
}

// unsupported says why the process kubelet cannot run the pod, if it cannot.
func unsupported(pod *v1.Pod) string {
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == v1.ContainerRestartPolicyAlways {
			return fmt.Sprintf("init container %q is a sidecar (restartPolicy Always): the process kubelet does not run sidecars", c.Name)
		}
	}
	return ""
}

func (w *podWorker) key() string {
	return w.latest.Namespace + "/" + w.latest.Name
}

func (w *podWorker) update(pod *v1.Pod, gone bool) {
	w.mu.Lock()
	w.latest = pod
	w.gone = w.gone || gone
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *podWorker) stopForShutdown() {
	w.once.Do(func() { close(w.shutdown) })
	<-w.done
}

func (w *podWorker) run() {
	defer close(w.done)
	defer w.k.workerDone(w.uid)
	tick := time.NewTicker(syncPeriod)
	defer tick.Stop()
	for {
		select {
		case <-w.shutdown:
			var wg sync.WaitGroup
			for _, c := range w.all() {
				wg.Add(1)
				go func() { defer wg.Done(); c.kill(shutdownGrace) }()
			}
			wg.Wait()
			w.cleanup()
			return
		case <-w.wake:
		case <-tick.C:
		}
		w.mu.Lock()
		w.pod = w.latest.DeepCopy()
		gone := w.gone
		w.mu.Unlock()
		if gone || w.pod.DeletionTimestamp != nil {
			w.terminate(gone)
			return
		}
		if w.syncPod() {
			w.cleanup()
			w.k.markFinished(w.uid)
			return
		}
	}
}

// syncPod moves the pod one step and reports whether it has finished
// (Succeeded or Failed, nothing left to run).
func (w *podWorker) syncPod() bool {
	pod := w.pod
	if !w.prepared {
		if why := unsupported(pod); why != "" {
			w.prepareErr = why
		} else if err := w.prepare(); err != nil {
			w.prepareErr = err.Error()
			log.Printf("%s: preparing: %v", w.key(), err)
		} else {
			w.prepared, w.prepareErr = true, ""
		}
	}
	if w.prepared && w.syncInits() == initsDone {
		for _, c := range w.containers {
			w.syncContainer(c)
		}
	}
	status := w.status()
	w.writeStatus(status)
	return status.Phase == v1.PodSucceeded || status.Phase == v1.PodFailed
}

type initState int

const (
	initsRunning initState = iota // an init container runs or waits to (re)start
	initsDone                     // every init container exited 0
	initsFailed                   // one failed and the pod's restartPolicy is Never
)

// initProgress is where a pod's init containers stand: each must exit 0,
// in order, before the next starts (pure, for the decision alone).
func initProgress(exited []bool, exitCodes []int32, policy v1.RestartPolicy) (state initState, next int) {
	for i := range exited {
		switch {
		case !exited[i]:
			return initsRunning, i
		case exitCodes[i] != 0 && policy == v1.RestartPolicyNever:
			return initsFailed, i
		case exitCodes[i] != 0:
			return initsRunning, i
		}
	}
	return initsDone, len(exited)
}

func (w *podWorker) initState() (initState, int) {
	exited := make([]bool, len(w.inits))
	codes := make([]int32, len(w.inits))
	for i, c := range w.inits {
		exited[i], codes[i] = c.exited() && !c.running(), c.lastExitCode()
	}
	return initProgress(exited, codes, w.pod.Spec.RestartPolicy)
}

// syncInits starts, restarts (after a back-off) or waits for the next init
// container, and reports where the init containers stand.
func (w *podWorker) syncInits() initState {
	state, next := w.initState()
	if state == initsRunning && !w.terminating {
		w.syncContainer(w.inits[next])
	}
	return state
}

func (w *podWorker) syncContainer(c *container) {
	now := time.Now()
	if c.running() {
		w.runProbes(c, now)
		return
	}
	if c.exited() {
		if !w.shouldRestart(c) {
			return
		}
		c.mu.Lock()
		first := c.waiting == nil
		c.mu.Unlock()
		if first {
			delay := c.nextBackoff()
			c.nextStart = now.Add(delay)
			c.setWaiting("CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed container %s", delay, c.spec.Name))
		}
	}
	if now.Before(c.nextStart) {
		return
	}
	if err := w.start(c); err != nil {
		log.Printf("%s: starting %s: %v", w.key(), c.spec.Name, err)
		c.setWaiting("CreateContainerConfigError", err.Error())
		c.nextStart = now.Add(c.nextBackoff())
	}
}

func (w *podWorker) shouldRestart(c *container) bool {
	if w.terminating {
		return false // a pod being deleted ends Succeeded or Failed, as with a kubelet
	}
	if w.isInit(c) {
		// An init container that succeeded is done for good; a failed one
		// runs again unless the pod never restarts.
		return c.lastExitCode() != 0 && w.pod.Spec.RestartPolicy != v1.RestartPolicyNever
	}
	switch w.pod.Spec.RestartPolicy {
	case v1.RestartPolicyNever:
		return false
	case v1.RestartPolicyOnFailure:
		return c.lastExitCode() != 0
	}
	return true
}

func (w *podWorker) isInit(c *container) bool {
	for _, i := range w.inits {
		if i == c {
			return true
		}
	}
	return false
}

// terminate stops every container (SIGTERM, SIGKILL after the deletion's
// grace period), records their end, removes the namespaces and, for a pod
// still in the API, deletes it for good as a kubelet does.
func (w *podWorker) terminate(gone bool) {
	grace := 30 * time.Second
	if w.pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*w.pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	if w.pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*w.pod.DeletionGracePeriodSeconds) * time.Second
	}
	if gone {
		grace = 2 * time.Second // force-deleted: the API no longer waits for us
	}
	w.terminating = true
	log.Printf("%s: terminating (grace %s)", w.key(), grace)
	var wg sync.WaitGroup
	for _, c := range w.all() {
		wg.Add(1)
		go func() { defer wg.Done(); c.kill(grace) }()
	}
	wg.Wait()
	if !gone {
		w.writeStatus(w.status())
	}
	w.cleanup()
	w.k.markFinished(w.uid)
	if gone {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := w.k.client.CoreV1().Pods(w.pod.Namespace).Delete(ctx, w.pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      &metav1.Preconditions{UID: &w.uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		log.Printf("%s: deleting the terminated pod: %v", w.key(), err)
	}
}

func (w *podWorker) cleanup() {
	w.mu.Lock()
	w.hostIP = "" // refreshHosts must not recreate what is removed below
	w.mu.Unlock()
	for _, c := range w.all() {
		c.kill(0)
	}
	if w.netns != "" {
		deleteNetns(w.netns)
	}
	// Volumes of kinds that die with the pod; PersistentVolumes live on.
	if err := os.RemoveAll(w.dir); err != nil {
		log.Printf("%s: removing %s: %v", w.key(), w.dir, err)
	}
}

// status is the pod status as this kubelet really sees it.
func (w *podWorker) status() v1.PodStatus {
	pod := w.pod
	s := v1.PodStatus{
		Phase:     v1.PodPending,
		QOSClass:  pod.Status.QOSClass,
		StartTime: w.startTime,
	}
	if w.ip != "" {
		s.PodIP, s.PodIPs = w.ip, []v1.PodIP{{IP: w.ip}}
		hostIP := w.k.cfg.subnet + ".1"
		s.HostIP, s.HostIPs = hostIP, []v1.HostIP{{IP: hostIP}}
	}
	allReady, running, succeeded, failed, restarting := true, 0, 0, 0, 0
	for _, c := range w.containers {
		cs := c.status()
		s.ContainerStatuses = append(s.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		switch {
		case c.running():
			running++
		case c.exited() && w.shouldRestart(c):
			restarting++
		case c.exited() && c.lastExitCode() == 0:
			succeeded++
		case c.exited():
			failed++
		}
	}
	for _, c := range w.inits {
		cs := c.status()
		// An init container counts as ready once it has succeeded, as the kubelet reports it.
		cs.Ready = cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0
		s.InitContainerStatuses = append(s.InitContainerStatuses, cs)
	}
	inits, _ := w.initState()
	n := len(w.containers)
	switch {
	case w.prepareErr != "" && !w.prepared:
		s.Reason, s.Message = "", w.prepareErr
		if unsupported(pod) != "" {
			s.Phase, s.Reason = v1.PodFailed, "Unsupported"
		}
	case inits == initsFailed:
		s.Phase = v1.PodFailed
	case inits == initsRunning:
		// Pending while initializing, as with a kubelet.
	case running > 0 || restarting > 0:
		if running+restarting+succeeded+failed == n {
			s.Phase = v1.PodRunning
		}
	case succeeded == n:
		s.Phase = v1.PodSucceeded
	case succeeded+failed == n:
		s.Phase = v1.PodFailed
	}
	boolCond := func(b bool) v1.ConditionStatus {
		if b {
			return v1.ConditionTrue
		}
		return v1.ConditionFalse
	}
	gatesOK := true
	for _, gate := range pod.Spec.ReadinessGates {
		found := false
		for _, c := range pod.Status.Conditions {
			if c.Type == gate.ConditionType && c.Status == v1.ConditionTrue {
				found = true
			}
		}
		gatesOK = gatesOK && found
	}
	ready := allReady && s.Phase == v1.PodRunning
	w.setCondition(v1.PodReadyToStartContainers, boolCond(w.prepared))
	w.setCondition(v1.PodInitialized, boolCond(inits == initsDone))
	w.setCondition(v1.ContainersReady, boolCond(ready))
	w.setCondition(v1.PodReady, boolCond(ready && gatesOK))
	// Conditions others own (PodScheduled, readiness gates) stay as they are.
	ours := map[v1.PodConditionType]bool{v1.PodReadyToStartContainers: true, v1.PodInitialized: true, v1.ContainersReady: true, v1.PodReady: true}
	for _, c := range pod.Status.Conditions {
		if !ours[c.Type] {
			s.Conditions = append(s.Conditions, c)
		}
	}
	for _, t := range []v1.PodConditionType{v1.PodReadyToStartContainers, v1.PodInitialized, v1.ContainersReady, v1.PodReady} {
		s.Conditions = append(s.Conditions, w.conditions[t])
	}
	sort.SliceStable(s.ContainerStatuses, func(i, j int) bool { return s.ContainerStatuses[i].Name < s.ContainerStatuses[j].Name })
	return s
}

func (w *podWorker) setCondition(t v1.PodConditionType, status v1.ConditionStatus) {
	if c, ok := w.conditions[t]; ok && c.Status == status {
		return
	}
	w.conditions[t] = v1.PodCondition{Type: t, Status: status, LastTransitionTime: metav1.Now()}
}

func (w *podWorker) writeStatus(s v1.PodStatus) {
	if w.written != nil && equality.Semantic.DeepEqual(*w.written, s) {
		return
	}
	pod := w.pod.DeepCopy()
	pod.Status = s
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := w.k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			log.Printf("%s: writing status: %v", w.key(), err)
		}
		return // the next sync retries with a newer object
	}
	w.written = &s
}

// kill stops the container's process: SIGTERM to its process group, then
// SIGKILL once grace has passed. Returns when the process has exited.
func (c *container) kill(grace time.Duration) {
	c.mu.Lock()
	proc, done := c.proc, c.done
	c.mu.Unlock()
	if proc == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	if grace > 0 {
		_ = syscall.Kill(-proc.Pid, syscall.SIGTERM)
		select {
		case <-done:
			return
		case <-time.After(grace):
		}
	}
	_ = syscall.Kill(-proc.Pid, syscall.SIGKILL)
	<-done
}

func (k *kubelet) markFinished(uid types.UID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.finished[uid] = true
}
