package main

import "testing"

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "x", "NAME": "kv-0"}
	lookup := func(n string) (string, bool) { v, ok := vars[n]; return v, ok }
	for in, want := range map[string]string{
		"$(NAME).kv-peer.ns.svc": "kv-0.kv-peer.ns.svc",
		"$(MISSING)":             "$(MISSING)",
		"$$(A)":                  "$(A)",
		"a$b":                    "a$b",
		"$(A":                    "$(A",
		"$":                      "$",
		"$(A)$(A)":               "xx",
	} {
		if got := expand(in, lookup); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}
