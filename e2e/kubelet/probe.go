package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// prober runs one of a container's probes with the kubelet's semantics:
// first run after initialDelaySeconds, then every periodSeconds; the result
// flips after successThreshold successes or failureThreshold failures.
type prober struct {
	kind      string
	probe     *v1.Probe
	next      time.Time
	successes int32
	failures  int32
}

func newProbers(spec *v1.Container) map[string]*prober {
	probes := map[string]*prober{}
	now := time.Now()
	for kind, p := range map[string]*v1.Probe{"startup": spec.StartupProbe, "liveness": spec.LivenessProbe, "readiness": spec.ReadinessProbe} {
		if p != nil {
			probes[kind] = &prober{kind: kind, probe: p, next: now.Add(time.Duration(p.InitialDelaySeconds) * time.Second)}
		}
	}
	return probes
}

func orDefault(v, d int32) int32 {
	if v == 0 {
		return d
	}
	return v
}

// due runs the probe when its time has come and returns the new verdict:
// +1 passed (threshold reached), -1 failed (threshold reached), 0 no verdict.
func (p *prober) due(now time.Time, run func(*v1.Probe) error) int {
	if now.Before(p.next) {
		return 0
	}
	p.next = now.Add(time.Duration(orDefault(p.probe.PeriodSeconds, 10)) * time.Second)
	if err := run(p.probe); err != nil {
		p.successes = 0
		p.failures++
		if p.failures >= orDefault(p.probe.FailureThreshold, 3) {
			return -1
		}
		return 0
	}
	p.failures = 0
	p.successes++
	if p.successes >= orDefault(p.probe.SuccessThreshold, 1) {
		return 1
	}
	return 0
}

func (w *podWorker) runProbes(c *container, now time.Time) {
	run := func(p *v1.Probe) error { return w.probe(c, p) }
	c.mu.Lock()
	probes, started := c.probes, c.started
	c.mu.Unlock()
	if !started {
		switch probes["startup"].due(now, run) {
		case 1:
			c.mu.Lock()
			c.started = true
			c.mu.Unlock()
		case -1:
			w.probeKill(c, "startup")
		}
		return
	}
	if p := probes["liveness"]; p != nil && p.due(now, run) == -1 {
		w.probeKill(c, "liveness")
		return
	}
	ready := true // no readiness probe: ready once started
	if p := probes["readiness"]; p != nil {
		switch p.due(now, run) {
		case 1:
			ready = true
		case -1:
			ready = false
		default:
			c.mu.Lock()
			ready = c.ready
			c.mu.Unlock()
		}
	}
	c.mu.Lock()
	c.ready = ready && c.exit == nil
	c.mu.Unlock()
}

// probeKill restarts a container whose liveness or startup probe failed.
func (w *podWorker) probeKill(c *container, kind string) {
	log.Printf("%s: %s probe of %s failed: killing it", w.key(), kind, c.spec.Name)
	grace := 30 * time.Second
	if w.pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*w.pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	c.mu.Lock()
	c.ready = false
	c.probes = map[string]*prober{} // no more verdicts for this run
	c.mu.Unlock()
	go c.kill(grace)
}

func (w *podWorker) probe(c *container, p *v1.Probe) error {
	timeout := time.Duration(orDefault(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := containerPort(c.spec, g.Port)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = w.ip
		}
		scheme := "http"
		if g.Scheme == v1.URISchemeHTTPS {
			scheme = "https"
		}
		url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), g.Path)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		req.Header.Set("User-Agent", "kube-probe/witan-e2e")
		client := &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // as the kubelet does
			DisableKeepAlives: true,
		}}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := containerPort(c.spec, p.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = w.ip
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		c.mu.Lock()
		pid, uid, gid := c.proc.Pid, c.uid, c.gid
		c.mu.Unlock()
		// Inside the container's namespaces (mount, network, UTS), as its user.
		args := []string{"-t", strconv.Itoa(pid), "-m", "-n", "-u"}
		if uid != nil {
			args = append(args, "-S", strconv.FormatInt(*uid, 10))
		}
		if gid != nil {
			args = append(args, "-G", strconv.FormatInt(*gid, 10))
		}
		args = append(append(args, "--"), p.Exec.Command...)
		return exec.CommandContext(ctx, "nsenter", args...).Run()
	}
	return fmt.Errorf("probe kind not supported by the process kubelet (grpc)")
}

func containerPort(c *v1.Container, port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("no container port named %q", port.StrVal)
}
