package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// container is one container of a pod: at most one process at a time.
type container struct {
	spec *v1.Container

	mu        sync.Mutex
	proc      *os.Process
	done      chan struct{} // closed when proc has exited
	startedAt time.Time
	exit      *v1.ContainerStateTerminated // the current run's end, once it ended
	last      *v1.ContainerStateTerminated // the run before
	restarts  int32
	waiting   *v1.ContainerStateWaiting
	imageRef  string
	uid, gid  *int64 // the process's user, for exec probes

	backoff   time.Duration
	nextStart time.Time
	started   bool // the startup probe passed (or there is none)
	ready     bool
	probes    map[string]*prober
}

func newContainer(spec *v1.Container) *container {
	return &container{
		spec:    spec,
		waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"},
	}
}

func (c *container) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc != nil && c.exit == nil
}

func (c *container) exited() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exit != nil
}

func (c *container) lastExitCode() int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exit == nil {
		return 0
	}
	return c.exit.ExitCode
}

func (c *container) setWaiting(reason, message string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waiting = &v1.ContainerStateWaiting{Reason: reason, Message: message}
}

func (c *container) nextBackoff() time.Duration {
	if c.backoff == 0 {
		c.backoff = initialBackoff
	} else if c.backoff < maxBackoff {
		c.backoff = min(2*c.backoff, maxBackoff)
	}
	return c.backoff
}

func (c *container) status() v1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := v1.ContainerStatus{
		Name:         c.spec.Name,
		Image:        c.spec.Image,
		ImageID:      c.imageRef,
		RestartCount: c.restarts,
		Ready:        c.ready,
		Started:      ptrBool(c.proc != nil && c.exit == nil && c.started),
		LastTerminationState: v1.ContainerState{
			Terminated: c.last,
		},
	}
	switch {
	case c.proc != nil && c.exit == nil:
		s.ContainerID = fmt.Sprintf("process://%d", c.proc.Pid)
		s.State.Running = &v1.ContainerStateRunning{StartedAt: metav1.NewTime(c.startedAt)}
	case c.exit != nil && c.waiting != nil:
		s.State.Waiting = c.waiting
		s.LastTerminationState.Terminated = c.exit
	case c.exit != nil:
		s.State.Terminated = c.exit
		s.LastTerminationState.Terminated = c.last
	default:
		s.State.Waiting = c.waiting
	}
	return s
}

func ptrBool(b bool) *bool { return &b }

// binaryFor maps an image to a binary of this workspace by its name: the
// last path element without tag or digest (`ghcr.io/x/witan:0.1` -> witan).
func (k *kubelet) binaryFor(image string) (name, path string, err error) {
	name = image
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	if i := strings.IndexAny(name, ":@"); i >= 0 {
		name = name[:i]
	}
	path, ok := k.cfg.images[name]
	if !ok {
		return name, "", fmt.Errorf("no binary for image %q (known: %v)", image, sortedKeys(k.cfg.images))
	}
	if _, err := os.Stat(path); err != nil {
		return name, "", fmt.Errorf("image %q: %w", image, err)
	}
	return name, path, nil
}

// start runs the container's process through `witan-e2e-kubelet pod-exec`
// in fresh mount and UTS namespaces; pod-exec joins the pod's network
// namespace, builds the root, drops privileges and execs the command.
func (w *podWorker) start(c *container) error {
	name, binary, err := w.k.binaryFor(c.spec.Image)
	if err != nil {
		c.setWaiting("ErrImagePull", err.Error())
		return err
	}
	env, vars, err := w.containerEnv(c.spec)
	if err != nil {
		return err
	}
	lookup := func(n string) (string, bool) { v, ok := vars[n]; return v, ok }
	// The image's entrypoint is the binary itself, at /usr/local/bin/<name>
	// as in the project's Dockerfile.
	entry := "/usr/local/bin/" + name
	var argv []string
	if len(c.spec.Command) > 0 {
		for _, a := range c.spec.Command {
			argv = append(argv, expand(a, lookup))
		}
	} else {
		argv = []string{entry}
	}
	for _, a := range c.spec.Args {
		argv = append(argv, expand(a, lookup))
	}
	specPath := filepath.Join(w.dir, "exec", c.spec.Name+".json")
	if err := os.MkdirAll(filepath.Dir(specPath), 0o700); err != nil {
		return err
	}
	// Each run gets an empty termination log, read when it exits.
	terminationLog := filepath.Join(w.dir, "exec", c.spec.Name+".termination-log")
	if err := newTerminationLog(terminationLog); err != nil {
		return err
	}
	spec, err := w.execSpec(c, entry, binary, terminationLog, argv, env)
	if err != nil {
		return err
	}
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(specPath, data, 0o600); err != nil {
		return err
	}
	// Logs live outside the pod's directory so that they outlive the pod.
	logPath := filepath.Join(w.k.cfg.dir, "logs", filepath.Base(w.dir), c.spec.Name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	// Where this run's output starts: the log fallback of the termination
	// message reads this run only.
	logOffset, err := logFile.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, podExecCommand, specPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	c.mu.Lock()
	if c.exit != nil { // a restart
		c.restarts++
		c.last = c.exit
	}
	c.proc, c.done, c.exit, c.waiting = cmd.Process, done, nil, nil
	c.startedAt = time.Now()
	c.imageRef = "file://" + binary
	c.started, c.ready = false, false
	c.probes = newProbers(c.spec)
	if c.probes["startup"] == nil {
		c.started = true
	}
	c.mu.Unlock()
	log.Printf("%s: started %s (pid %d): %q", w.key(), c.spec.Name, cmd.Process.Pid, argv)
	go func() {
		err := cmd.Wait()
		end := &v1.ContainerStateTerminated{
			ExitCode:    0,
			Reason:      "Completed",
			StartedAt:   metav1.NewTime(c.startedAt),
			FinishedAt:  metav1.Now(),
			ContainerID: fmt.Sprintf("process://%d", cmd.Process.Pid),
		}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Signaled():
				end.ExitCode, end.Signal = 128+int32(ws.Signal()), int32(ws.Signal())
				end.Reason = "Error"
			case ws.ExitStatus() != 0:
				end.ExitCode, end.Reason = int32(ws.ExitStatus()), "Error"
			}
		} else if err != nil {
			end.ExitCode, end.Reason, end.Message = 128, "Error", err.Error()
		}
		if msg := terminationMessage(c.spec, end.ExitCode, terminationLog, logPath, logOffset); msg != "" {
			end.Message = msg
		}
		c.mu.Lock()
		c.exit = end
		c.ready = false
		if time.Since(c.startedAt) > 10*time.Minute {
			c.backoff = 0 // ran long enough: restart without waiting
		}
		c.mu.Unlock()
		close(done)
		log.Printf("%s: %s (pid %d) exited with %d", w.key(), c.spec.Name, cmd.Process.Pid, end.ExitCode)
		w.update(w.latestPod(), false)
	}()
	return nil
}

// onExit decides when an exited container starts again.
func (w *podWorker) latestPod() *v1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest
}
