package main

import (
	"fmt"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// containerEnv builds the environment the way the kubelet does: envFrom
// first, then env in order (each value may use `$(NAME)` of the variables
// before it), then the variables of the `kubernetes` Service, which every
// pod gets whatever enableServiceLinks says. The Service points at the API
// server's real address: there is no ClusterIP routing without kube-proxy.
func (w *podWorker) containerEnv(c *v1.Container) ([]string, map[string]string, error) {
	pod := w.pod
	k := w.k
	env := map[string]string{}
	var order []string
	set := func(name, value string) {
		if _, seen := env[name]; !seen {
			order = append(order, name)
		}
		env[name] = value
	}
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.ConfigMapRef != nil:
			cm, err := k.configMaps.ConfigMaps(pod.Namespace).Get(from.ConfigMapRef.Name)
			if err != nil {
				if from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
					continue
				}
				return nil, nil, fmt.Errorf("configmap %q not found", from.ConfigMapRef.Name)
			}
			data = cm.Data
		case from.SecretRef != nil:
			s, err := k.secrets.Secrets(pod.Namespace).Get(from.SecretRef.Name)
			if err != nil {
				if from.SecretRef.Optional != nil && *from.SecretRef.Optional {
					continue
				}
				return nil, nil, fmt.Errorf("secret %q not found", from.SecretRef.Name)
			}
			data = map[string]string{}
			for key, value := range s.Data {
				data[key] = string(value)
			}
		}
		for _, key := range sortedKeys(data) {
			name := from.Prefix + key
			if len(validation.IsEnvVarName(name)) > 0 {
				continue // the kubelet skips invalid names too
			}
			set(name, data[key])
		}
	}
	service := map[string]string{
		"KUBERNETES_SERVICE_HOST":       k.cfg.apiHost,
		"KUBERNETES_SERVICE_PORT":       k.cfg.apiPort,
		"KUBERNETES_SERVICE_PORT_HTTPS": k.cfg.apiPort,
		"KUBERNETES_PORT":               "tcp://" + k.cfg.apiHost + ":" + k.cfg.apiPort,
	}
	lookup := func(name string) (string, bool) {
		if v, ok := env[name]; ok {
			return v, true
		}
		v, ok := service[name]
		return v, ok
	}
	for _, e := range c.Env {
		value := e.Value
		if e.ValueFrom == nil {
			value = expand(value, lookup)
		} else {
			var err error
			if value, err = w.envValueFrom(e.ValueFrom); err != nil {
				return nil, nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
		}
		set(e.Name, value)
	}
	for _, name := range sortedKeys(service) {
		if _, ok := env[name]; !ok {
			set(name, service[name])
		}
	}
	if _, ok := env["HOSTNAME"]; !ok {
		set("HOSTNAME", podHostname(pod))
	}
	if _, ok := env["PATH"]; !ok {
		// What a Debian base image sets; the pod's root is this machine's /usr.
		set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	list := make([]string, 0, len(order))
	for _, name := range order {
		list = append(list, name+"="+env[name])
	}
	return list, env, nil
}

func (w *podWorker) envValueFrom(from *v1.EnvVarSource) (string, error) {
	pod := w.pod
	switch {
	case from.FieldRef != nil:
		return w.fieldValue(from.FieldRef.FieldPath)
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		cm, err := w.k.configMaps.ConfigMaps(pod.Namespace).Get(ref.Name)
		if err == nil {
			if v, ok := cm.Data[ref.Key]; ok {
				return v, nil
			}
		}
		if ref.Optional != nil && *ref.Optional {
			return "", nil
		}
		return "", fmt.Errorf("key %q of configmap %q not found", ref.Key, ref.Name)
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		s, err := w.k.secrets.Secrets(pod.Namespace).Get(ref.Name)
		if err == nil {
			if v, ok := s.Data[ref.Key]; ok {
				return string(v), nil
			}
		}
		if ref.Optional != nil && *ref.Optional {
			return "", nil
		}
		return "", fmt.Errorf("key %q of secret %q not found", ref.Key, ref.Name)
	}
	return "", fmt.Errorf("unsupported by the process kubelet (only fieldRef, configMapKeyRef, secretKeyRef)")
}

// fieldValue answers a downward-API fieldRef.
func (w *podWorker) fieldValue(path string) (string, error) {
	pod := w.pod
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return w.ip, nil
	case "status.hostIP", "status.hostIPs":
		return w.k.cfg.subnet + ".1", nil
	}
	if key, ok := subscript(path, "metadata.labels"); ok {
		return pod.Labels[key], nil
	}
	if key, ok := subscript(path, "metadata.annotations"); ok {
		return pod.Annotations[key], nil
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

// subscript parses `prefix['key']`.
func subscript(path, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(path, prefix+"['")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "']")
}

// expand implements the kubelet's `$(VAR)` syntax: `$(NAME)` becomes the
// variable's value when it is defined and stays as written otherwise;
// `$$` is a literal `$`.
func expand(input string, lookup func(string) (string, bool)) string {
	var b strings.Builder
	for i := 0; i < len(input); i++ {
		if input[i] != '$' || i+1 >= len(input) {
			b.WriteByte(input[i])
			continue
		}
		switch input[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(input[i+2:], ')')
			if end < 0 {
				b.WriteString(input[i:])
				return b.String()
			}
			name := input[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	return keys
}
