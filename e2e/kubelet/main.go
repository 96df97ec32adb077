// Command witan-e2e-kubelet is test tooling for witan's end-to-end tests: a
// kubelet that runs the pods bound to its Node as local processes, each in
// its own network, mount and UTS namespace, instead of as containers. It
// also provisions PersistentVolumes for its StorageClass as directories.
//
// Everything it writes into the API (Node and Pod status, PersistentVolumes)
// describes what it really did. What it does not do is listed in
// docs/e2e.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

type config struct {
	kubeconfig  string
	node        string
	dir         string
	bridge      string
	subnet      string // the first three octets, e.g. 10.213.7
	netnsPrefix string
	apiHost     string
	apiPort     string
	images      map[string]string // image name (last path element, no tag) -> binary
	storage     string            // StorageClass name
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == podExecCommand {
		podExec(os.Args[2:]) // never returns
	}
	var cfg config
	var images string
	flag.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig of this kubelet")
	flag.StringVar(&cfg.node, "node", "e2e-node", "the Node name")
	flag.StringVar(&cfg.dir, "dir", "", "directory for pods and volumes")
	flag.StringVar(&cfg.bridge, "bridge", "", "bridge the pods' veths join")
	flag.StringVar(&cfg.subnet, "subnet", "", "the bridge's /24 as three octets, e.g. 10.213.7 (the bridge is .1)")
	flag.StringVar(&cfg.netnsPrefix, "netns-prefix", "wte2e-", "prefix of the pods' network namespace names")
	flag.StringVar(&cfg.apiHost, "api-host", "", "API server address reachable from pods (KUBERNETES_SERVICE_HOST)")
	flag.StringVar(&cfg.apiPort, "api-port", "", "API server port (KUBERNETES_SERVICE_PORT)")
	flag.StringVar(&images, "image", "", "comma-separated image=binary pairs, e.g. witan=/path/to/witan")
	flag.StringVar(&cfg.storage, "storage-class", "witan-e2e-local", "name of the StorageClass this kubelet provisions")
	flag.Parse()
	cfg.images = map[string]string{}
	for _, pair := range strings.Split(images, ",") {
		if pair == "" {
			continue
		}
		name, bin, ok := strings.Cut(pair, "=")
		if !ok {
			log.Fatalf("--image %q: want name=binary", pair)
		}
		cfg.images[name] = bin
	}
	for _, required := range []string{cfg.kubeconfig, cfg.dir, cfg.bridge, cfg.subnet, cfg.apiHost, cfg.apiPort} {
		if required == "" {
			log.Fatal("--kubeconfig, --dir, --bridge, --subnet, --api-host and --api-port are required")
		}
	}
	if err := run(cfg); err != nil {
		log.Fatal(err)
	}
}

func run(cfg config) error {
	rest, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("reading the kubeconfig: %w", err)
	}
	rest.UserAgent = "witan-e2e-kubelet"
	client, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	k := newKubelet(cfg, client, factory)
	if err := k.registerNode(ctx); err != nil {
		return fmt.Errorf("registering node %s: %w", cfg.node, err)
	}
	if err := ensureStorageClass(ctx, client, cfg.storage); err != nil {
		return fmt.Errorf("creating StorageClass %s: %w", cfg.storage, err)
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer for %v did not sync", typ)
		}
	}
	go k.podInformer.Run(ctx.Done())
	go k.heartbeat(ctx)
	go runProvisioner(ctx, client, factory, cfg)
	log.Printf("node %s running pods as processes (subnet %s.0/24 on %s)", cfg.node, cfg.subnet, cfg.bridge)
	<-ctx.Done()
	log.Printf("stopping: terminating every pod")
	k.shutdown()
	return nil
}
