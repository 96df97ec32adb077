#!/usr/bin/env python3
"""Turns the chart's PodMonitor and ServiceMonitor into a Prometheus config.

The e2e suite has no Prometheus Operator: this does its job for the subset
the chart uses, the way the operator generates scrape jobs (one job per
monitor endpoint; keep by selector labels and port name; namespace, pod,
container, endpoint, job labels; then the endpoint's own relabelings), so
that the suite scrapes exactly what the chart's monitors describe.

    helm template ... | monitors.py KUBECONFIG > prometheus.yml

Anything outside that subset (matchExpressions, other endpoint fields) is
refused with a message, never silently ignored.
"""
import re
import sys

import yaml

SUPPORTED_ENDPOINT_KEYS = {"port", "path", "interval", "relabelings"}


def fail(message):
    sys.exit(f"monitors.py: {message}")


def sanitize(name):
    """A Kubernetes label name as Prometheus meta label suffix."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def selector_keeps(selector, kind):
    """Relabel rules keeping targets whose `kind` (pod, service) labels match."""
    if set(selector) - {"matchLabels"}:
        fail(f"selector {selector}: only matchLabels is supported")
    rules = []
    for key, value in sorted(selector.get("matchLabels", {}).items()):
        rules.append({
            "action": "keep",
            "source_labels": [f"__meta_kubernetes_{kind}_label_{sanitize(key)}",
                              f"__meta_kubernetes_{kind}_labelpresent_{sanitize(key)}"],
            "regex": f"({re.escape(value)});true",
        })
    return rules


def namespaces(monitor):
    selector = monitor["spec"].get("namespaceSelector")
    if selector is None:  # the monitor's own namespace, as the operator does
        return {"names": [monitor["metadata"]["namespace"]]}
    if selector.get("any"):
        return None
    if "matchNames" in selector:
        return {"names": selector["matchNames"]}
    fail(f"namespaceSelector {selector}: only any and matchNames are supported")


def endpoint_job(monitor, index, endpoint, role, kubeconfig):
    kind = monitor["kind"]
    if set(endpoint) - SUPPORTED_ENDPOINT_KEYS:
        fail(f"{kind} endpoint keys {sorted(set(endpoint) - SUPPORTED_ENDPOINT_KEYS)} are not supported")
    meta = monitor["metadata"]
    sd = {"role": role, "kubeconfig_file": kubeconfig}
    ns = namespaces(monitor)
    if ns:
        sd["namespaces"] = ns
    rules = []
    if role == "pod":
        # Finished pods are never scraped.
        rules.append({"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
                      "regex": "(Failed|Succeeded)"})
        rules += selector_keeps(monitor["spec"]["selector"], "pod")
        rules.append({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                      "regex": endpoint["port"]})
        job = [{"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"}]
    else:
        rules += selector_keeps(monitor["spec"]["selector"], "service")
        rules.append({"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                      "regex": endpoint["port"]})
        rules.append({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"})
        job = [{"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"}]
    rules += [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    ] + job + [{"target_label": "endpoint", "replacement": endpoint["port"]}]
    for r in endpoint.get("relabelings", []):
        rule = {"source_labels" if k == "sourceLabels" else
                "target_label" if k == "targetLabel" else k: v for k, v in r.items()}
        rules.append(rule)
    scrape = {
        "job_name": f"{kind[0].lower()}{kind[1:]}/{meta['namespace']}/{meta['name']}/{index}",
        "metrics_path": endpoint.get("path", "/metrics"),
        "kubernetes_sd_configs": [sd],
        "relabel_configs": rules,
    }
    if "interval" in endpoint:
        scrape["scrape_interval"] = endpoint["interval"]
        scrape["scrape_timeout"] = endpoint["interval"]
    return scrape


def main():
    if len(sys.argv) != 2:
        fail("usage: helm template ... | monitors.py KUBECONFIG")
    kubeconfig = sys.argv[1]
    jobs = []
    try:
        docs = list(yaml.safe_load_all(sys.stdin))
    except yaml.YAMLError as e:
        fail(f"the input is not YAML: {e}")
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        try:
            if doc.get("kind") == "PodMonitor":
                for i, e in enumerate(doc["spec"]["podMetricsEndpoints"]):
                    jobs.append(endpoint_job(doc, i, e, "pod", kubeconfig))
            elif doc.get("kind") == "ServiceMonitor":
                for i, e in enumerate(doc["spec"]["endpoints"]):
                    jobs.append(endpoint_job(doc, i, e, "endpoints", kubeconfig))
        except (KeyError, TypeError, AttributeError) as e:
            fail(f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}: malformed, missing or wrong field {e}")
    if not jobs:
        fail("no PodMonitor or ServiceMonitor in the input")
    yaml.safe_dump({"scrape_configs": jobs}, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
