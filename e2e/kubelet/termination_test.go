package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestLogTail(t *testing.T) {
	for _, tc := range []struct {
		log      string
		lines    int
		maxBytes int
		want     string
	}{
		{"", 80, 2048, ""},
		{"a\nb\nc\n", 2, 2048, "b\nc\n"},
		{"a\nb\nc", 2, 2048, "b\nc"},
		{"a\nb\nc\n", 5, 2048, "a\nb\nc\n"},
		{"a\nb\nc\n", 1, 2048, "c\n"},
		{"abcdef\n", 80, 3, "ef\n"},
	} {
		if got := string(logTail([]byte(tc.log), tc.lines, tc.maxBytes)); got != tc.want {
			t.Errorf("logTail(%q, %d, %d) = %q, want %q", tc.log, tc.lines, tc.maxBytes, got, tc.want)
		}
	}
}

func TestTerminationMessage(t *testing.T) {
	dir := t.TempDir()
	tlog, clog := filepath.Join(dir, "termination"), filepath.Join(dir, "container.log")
	if err := newTerminationLog(tlog); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(tlog); fi.Mode().Perm() != 0o666 {
		t.Errorf("termination log mode %v, want 0666", fi.Mode().Perm())
	}
	if err := os.WriteFile(clog, []byte("previous run\nfailed: no backup\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fallback := &v1.Container{TerminationMessagePolicy: v1.TerminationMessageFallbackToLogsOnError}
	file := &v1.Container{TerminationMessagePolicy: v1.TerminationMessageReadFile}
	offset := int64(len("previous run\n"))
	// Empty log: the failed run's own output, not the run before.
	if got := terminationMessage(fallback, 1, tlog, clog, offset); got != "failed: no backup\n" {
		t.Errorf("fallback = %q", got)
	}
	if got := terminationMessage(fallback, 0, tlog, clog, offset); got != "" {
		t.Errorf("success falls back to the log: %q", got)
	}
	if got := terminationMessage(file, 1, tlog, clog, offset); got != "" {
		t.Errorf("File policy falls back to the log: %q", got)
	}
	// A written message wins, bounded at 4096 bytes.
	if err := os.WriteFile(tlog, []byte(strings.Repeat("x", 5000)), 0o666); err != nil {
		t.Fatal(err)
	}
	if got := terminationMessage(fallback, 1, tlog, clog, offset); len(got) != maxTerminationMessageBytes {
		t.Errorf("message of %d bytes, want %d", len(got), maxTerminationMessageBytes)
	}
	if got := terminationMessagePath(&v1.Container{}); got != "/dev/termination-log" {
		t.Errorf("default path %q", got)
	}
}
