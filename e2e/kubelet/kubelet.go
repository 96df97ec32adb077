package main

import (
	"bytes"
	"fmt"
	"log"
	"net"
	"sort"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

const maxPods = 200 // addresses .2 to .254 of the bridge's /24, minus headroom

var everything = labels.Everything()

type kubelet struct {
	cfg    config
	client kubernetes.Interface

	podInformer cache.SharedIndexInformer
	services    corelisters.ServiceLister
	slices      discoverylisters.EndpointSliceLister
	configMaps  corelisters.ConfigMapLister
	secrets     corelisters.SecretLister
	claims      corelisters.PersistentVolumeClaimLister
	volumes     corelisters.PersistentVolumeLister

	mu       sync.Mutex
	workers  map[types.UID]*podWorker
	ips      map[string]types.UID // pod IP -> pod
	finished map[types.UID]bool   // pods this kubelet ran to the end
	stopping bool
}

func newKubelet(cfg config, client kubernetes.Interface, factory informers.SharedInformerFactory) *kubelet {
	k := &kubelet{
		cfg:        cfg,
		client:     client,
		services:   factory.Core().V1().Services().Lister(),
		slices:     factory.Discovery().V1().EndpointSlices().Lister(),
		configMaps: factory.Core().V1().ConfigMaps().Lister(),
		secrets:    factory.Core().V1().Secrets().Lister(),
		claims:     factory.Core().V1().PersistentVolumeClaims().Lister(),
		volumes:    factory.Core().V1().PersistentVolumes().Lister(),
		workers:    map[types.UID]*podWorker{},
		ips:        map[string]types.UID{},
		finished:   map[types.UID]bool{},
	}
	// Only the pods bound to this node.
	k.podInformer = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.node).String()
		})).Core().V1().Pods().Informer()
	_, _ = k.podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.podChanged(o.(*v1.Pod)) },
		UpdateFunc: func(_, o any) { k.podChanged(o.(*v1.Pod)) },
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			if p, ok := o.(*v1.Pod); ok {
				k.podRemoved(p)
			}
		},
	})
	// Any change to a Service's endpoints rewrites the pods' hosts files.
	_, _ = factory.Discovery().V1().EndpointSlices().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { k.refreshHosts() },
		UpdateFunc: func(any, any) { k.refreshHosts() },
		DeleteFunc: func(any) { k.refreshHosts() },
	})
	return k
}

func (k *kubelet) podChanged(pod *v1.Pod) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopping {
		return
	}
	w, ok := k.workers[pod.UID]
	if !ok && k.finished[pod.UID] {
		return
	}
	if !ok {
		if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
			return // finished before this kubelet started; nothing to run
		}
		w = newPodWorker(k, pod)
		k.workers[pod.UID] = w
		go w.run()
	}
	w.update(pod, false)
}

func (k *kubelet) podRemoved(pod *v1.Pod) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if w, ok := k.workers[pod.UID]; ok {
		w.update(pod, true)
	}
}

func (k *kubelet) workerDone(uid types.UID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.workers, uid)
	for ip, owner := range k.ips {
		if owner == uid {
			delete(k.ips, ip)
		}
	}
}

// allocateIP gives the pod the lowest free address of the bridge's subnet.
func (k *kubelet) allocateIP(uid types.UID) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for ip, owner := range k.ips {
		if owner == uid {
			return ip, nil
		}
	}
	for host := 2; host <= 254; host++ {
		ip := fmt.Sprintf("%s.%d", k.cfg.subnet, host)
		if _, used := k.ips[ip]; !used {
			k.ips[ip] = uid
			return ip, nil
		}
	}
	return "", fmt.Errorf("no free address in %s.0/24", k.cfg.subnet)
}

// shutdown terminates every pod (SIGTERM, then SIGKILL after a bounded
// grace period) and removes their namespaces. The API objects are left
// alone: the node simply stops heartbeating.
func (k *kubelet) shutdown() {
	k.mu.Lock()
	k.stopping = true
	workers := make([]*podWorker, 0, len(k.workers))
	for _, w := range k.workers {
		workers = append(workers, w)
	}
	k.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() { defer wg.Done(); w.stopForShutdown() }()
	}
	wg.Wait()
}

// dnsRecords emulates cluster DNS the way CoreDNS answers from
// EndpointSlices. Headless Services: `<hostname>.<service>.<namespace>.svc`
// and `<service>.<namespace>.svc` for every ready endpoint (a Service with
// publishNotReadyAddresses has every endpoint marked ready by the
// EndpointSlice controller). ClusterIP Services: no proxy here makes a
// ClusterIP reachable, so `<service>.<namespace>.svc` names one ready
// endpoint instead (see clusterIPTarget), which is where kube-proxy would
// have sent the connection.
type dnsRecord struct {
	ip        string
	namespace string
	service   string
	hostname  string // empty for the Service-wide record
}

func (k *kubelet) dnsRecords() []dnsRecord {
	slices, err := k.slices.List(everything)
	if err != nil {
		return nil
	}
	byService := map[types.NamespacedName][]*discoveryv1.EndpointSlice{}
	for _, s := range slices {
		svcName := s.Labels[discoveryv1.LabelServiceName]
		if svcName == "" || s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		key := types.NamespacedName{Namespace: s.Namespace, Name: svcName}
		byService[key] = append(byService[key], s)
	}
	var records []dnsRecord
	for key, slices := range byService {
		svc, err := k.services.Services(key.Namespace).Get(key.Name)
		if err != nil {
			continue
		}
		records = append(records, serviceRecords(svc, slices)...)
	}
	return records
}

// serviceRecords are the hosts records of one Service from its
// EndpointSlices (see dnsRecords).
func serviceRecords(svc *v1.Service, slices []*discoveryv1.EndpointSlice) []dnsRecord {
	var records []dnsRecord
	switch {
	case svc.Spec.ClusterIP == v1.ClusterIPNone:
		for _, s := range slices {
			for _, e := range s.Endpoints {
				if !endpointReady(e) {
					continue
				}
				for _, ip := range e.Addresses {
					records = append(records, dnsRecord{ip: ip, namespace: svc.Namespace, service: svc.Name})
					if e.Hostname != nil && *e.Hostname != "" {
						records = append(records, dnsRecord{ip: ip, namespace: svc.Namespace, service: svc.Name, hostname: *e.Hostname})
					}
				}
			}
		}
	case svc.Spec.Type == v1.ServiceTypeClusterIP || svc.Spec.Type == "":
		if ip, ok := clusterIPTarget(svc, slices); ok {
			records = append(records, dnsRecord{ip: ip, namespace: svc.Namespace, service: svc.Name})
		}
	}
	return records
}

// endpointReady follows the EndpointSlice API: an unset ready condition
// means ready.
func endpointReady(e discoveryv1.Endpoint) bool {
	return e.Conditions.Ready == nil || *e.Conditions.Ready
}

// clusterIPTarget picks the endpoint a ClusterIP Service's name stands for
// here: the lowest ready address (stable while it stays ready), and only
// when every Service port reaches the same port number on the endpoint. A
// client dials the Service's port; with no proxy to translate a different
// targetPort, that name would lead to the wrong port, so it is left
// unresolved (failing at once) rather than made to lie.
func clusterIPTarget(svc *v1.Service, slices []*discoveryv1.EndpointSlice) (string, bool) {
	var best string
	for _, s := range slices {
		if !portsMatch(svc.Spec.Ports, s.Ports) {
			continue
		}
		for _, e := range s.Endpoints {
			if !endpointReady(e) {
				continue
			}
			for _, ip := range e.Addresses {
				if best == "" || ipLess(ip, best) {
					best = ip
				}
			}
		}
	}
	return best, best != ""
}

// portsMatch: every Service port appears in the slice (by name) with the
// same number as the Service's port.
func portsMatch(ports []v1.ServicePort, slicePorts []discoveryv1.EndpointPort) bool {
	for _, p := range ports {
		found := false
		for _, sp := range slicePorts {
			if ptr.Deref(sp.Name, "") == p.Name && sp.Port != nil && *sp.Port == p.Port {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// ipLess orders dotted IPv4 addresses numerically.
func ipLess(a, b string) bool {
	pa, pb := net.ParseIP(a).To4(), net.ParseIP(b).To4()
	if pa == nil || pb == nil {
		return a < b
	}
	return bytes.Compare(pa, pb) < 0
}

// hostsFile is the pod's /etc/hosts: what a kubelet writes (localhost and
// the pod's own names) followed by the Service records, each under
// every name a pod of that namespace could look up through the search path
// `<ns>.svc.cluster.local svc.cluster.local cluster.local`.
func hostsFile(pod *v1.Pod, ip string, records []dnsRecord) string {
	var b strings.Builder
	b.WriteString("# Written by witan-e2e-kubelet: the kubelet's entries, then Service records (cluster DNS emulated).\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	hostname := podHostname(pod)
	if pod.Spec.Subdomain != "" {
		fmt.Fprintf(&b, "%s\t%s.%s.%s.svc.cluster.local\t%s\n", ip, hostname, pod.Spec.Subdomain, pod.Namespace, hostname)
	} else {
		fmt.Fprintf(&b, "%s\t%s\n", ip, hostname)
	}
	lines := map[string]bool{}
	for _, r := range records {
		name := r.service
		if r.hostname != "" {
			name = r.hostname + "." + r.service
		}
		full := name + "." + r.namespace + ".svc"
		names := []string{full + ".cluster.local", full}
		if r.namespace == pod.Namespace {
			names = append(names, name+"."+r.namespace, name)
		}
		lines[r.ip+"\t"+strings.Join(names, " ")] = true
	}
	sorted := make([]string, 0, len(lines))
	for l := range lines {
		sorted = append(sorted, l)
	}
	sort.Strings(sorted)
	for _, l := range sorted {
		b.WriteString(l + "\n")
	}
	return b.String()
}

func podHostname(pod *v1.Pod) string {
	if pod.Spec.Hostname != "" {
		return pod.Spec.Hostname
	}
	return pod.Name
}

func (k *kubelet) refreshHosts() {
	k.mu.Lock()
	workers := make([]*podWorker, 0, len(k.workers))
	for _, w := range k.workers {
		workers = append(workers, w)
	}
	k.mu.Unlock()
	records := k.dnsRecords()
	for _, w := range workers {
		if err := w.writeHosts(records); err != nil {
			log.Printf("%s: writing /etc/hosts: %v", w.key(), err)
		}
	}
}

func sortStrings(s []string) { sort.Strings(s) }
