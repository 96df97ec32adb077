"""Unit tests of monitors.py: python3 -m unittest discover e2e/prometheus"""
import subprocess
import sys
import unittest
from pathlib import Path

import yaml

SCRIPT = Path(__file__).with_name("monitors.py")

POD_MONITOR = """
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata: {name: members, namespace: witan-system}
spec:
  namespaceSelector: {any: true}
  selector: {matchLabels: {app.kubernetes.io/name: witan}}
  podMetricsEndpoints:
    - port: client
      interval: 2s
      relabelings:
        - {sourceLabels: [__meta_kubernetes_pod_label_witan_io_tls], regex: "true", action: drop}
"""

SERVICE_MONITOR = """
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: operator, namespace: witan-system}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: witan-operator}}
  endpoints: [{port: http-metrics, path: /metrics}]
"""


def run(manifests):
    return subprocess.run([sys.executable, str(SCRIPT), "/kubeconfig"], input=manifests,
                          capture_output=True, text=True)


class MonitorsTest(unittest.TestCase):
    def test_pod_monitor_keeps_by_label_and_port_then_its_relabelings(self):
        out = run(POD_MONITOR)
        self.assertEqual(out.returncode, 0, out.stderr)
        (job,) = yaml.safe_load(out.stdout)["scrape_configs"]
        self.assertEqual(job["kubernetes_sd_configs"], [{"role": "pod", "kubeconfig_file": "/kubeconfig"}])
        self.assertEqual(job["scrape_interval"], "2s")
        rules = job["relabel_configs"]
        self.assertIn({"action": "keep",
                       "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name",
                                         "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name"],
                       "regex": "(witan);true"}, rules)
        self.assertIn({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                       "regex": "client"}, rules)
        # The endpoint's own relabeling comes last, in Prometheus's spelling.
        self.assertEqual(rules[-1], {"source_labels": ["__meta_kubernetes_pod_label_witan_io_tls"],
                                     "regex": "true", "action": "drop"})

    def test_service_monitor_defaults_to_its_own_namespace(self):
        out = run(SERVICE_MONITOR)
        self.assertEqual(out.returncode, 0, out.stderr)
        (job,) = yaml.safe_load(out.stdout)["scrape_configs"]
        sd = job["kubernetes_sd_configs"][0]
        self.assertEqual(sd["role"], "endpoints")
        self.assertEqual(sd["namespaces"], {"names": ["witan-system"]})

    def test_unsupported_fields_are_refused(self):
        out = run(SERVICE_MONITOR.replace("matchLabels", "matchExpressions"))
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("only matchLabels is supported", out.stderr)
        out = run(POD_MONITOR.replace("interval: 2s", "scheme: https"))
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("['scheme'] are not supported", out.stderr)

    def test_malformed_input_is_an_error_not_a_traceback(self):
        for bad in ["kind: PodMonitor\nmetadata: {name: x, namespace: y}\nspec: {}\n", "a: [b\n"]:
            out = run(bad)
            self.assertNotEqual(out.returncode, 0)
            self.assertNotIn("Traceback", out.stderr)
            self.assertTrue(out.stderr.startswith("monitors.py: "), out.stderr)

    def test_no_monitor_is_an_error(self):
        out = run("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("no PodMonitor or ServiceMonitor", out.stderr)


if __name__ == "__main__":
    unittest.main()
