package main

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func slice(port int32, endpoints ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		Ports:     []discoveryv1.EndpointPort{{Name: ptr.To("client"), Port: ptr.To(port)}},
		Endpoints: endpoints,
	}
}

func endpoint(ip string, ready *bool, hostname string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
	if hostname != "" {
		e.Hostname = ptr.To(hostname)
	}
	return e
}

func service(clusterIP string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kv-client", Namespace: "ns"},
		Spec: v1.ServiceSpec{
			ClusterIP: clusterIP,
			Type:      v1.ServiceTypeClusterIP,
			Ports:     []v1.ServicePort{{Name: "client", Port: 2379}},
		},
	}
}

func TestClusterIPServiceNamesTheLowestReadyEndpoint(t *testing.T) {
	slices := []*discoveryv1.EndpointSlice{
		slice(2379, endpoint("10.0.0.10", ptr.To(true), "kv-0"), endpoint("10.0.0.2", ptr.To(false), "kv-1")),
		slice(2379, endpoint("10.0.0.9", nil, "kv-2")), // unset means ready
	}
	got := serviceRecords(service("10.96.0.7"), slices)
	want := []dnsRecord{{ip: "10.0.0.9", namespace: "ns", service: "kv-client"}}
	if len(got) != 1 || got[0] != want[0] {
		t.Fatalf("records %+v, want %+v", got, want)
	}
}

func TestClusterIPServiceWithoutReadyEndpointOrMatchingPortStaysUnresolved(t *testing.T) {
	notReady := []*discoveryv1.EndpointSlice{slice(2379, endpoint("10.0.0.2", ptr.To(false), ""))}
	if got := serviceRecords(service("10.96.0.7"), notReady); len(got) != 0 {
		t.Errorf("no ready endpoint, records %+v", got)
	}
	// targetPort 12379 behind port 2379: nothing translates the port here.
	otherPort := []*discoveryv1.EndpointSlice{slice(12379, endpoint("10.0.0.2", ptr.To(true), ""))}
	if got := serviceRecords(service("10.96.0.7"), otherPort); len(got) != 0 {
		t.Errorf("mismatched port, records %+v", got)
	}
}

func TestHeadlessServiceNamesEveryReadyEndpoint(t *testing.T) {
	slices := []*discoveryv1.EndpointSlice{
		slice(2379, endpoint("10.0.0.3", ptr.To(true), "kv-0"), endpoint("10.0.0.4", ptr.To(false), "kv-1")),
	}
	got := serviceRecords(service(v1.ClusterIPNone), slices)
	if len(got) != 2 || got[0].ip != "10.0.0.3" || got[0].hostname != "" || got[1].hostname != "kv-0" {
		t.Fatalf("records %+v", got)
	}
}

func TestIPLessIsNumeric(t *testing.T) {
	if !ipLess("10.0.0.9", "10.0.0.10") || ipLess("10.0.0.10", "10.0.0.9") {
		t.Error("10.0.0.9 sorts before 10.0.0.10")
	}
}
