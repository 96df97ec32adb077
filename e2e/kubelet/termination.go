package main

import (
	"bytes"
	"io"
	"os"

	v1 "k8s.io/api/core/v1"
)

// The kubelet's bounds on a termination message: the file is read up to
// 4096 bytes; the log fallback takes the last 80 lines, at most 2048 bytes.
const (
	maxTerminationMessageBytes = 4096
	fallbackLogLines           = 80
	fallbackLogBytes           = 2048
)

func terminationMessagePath(c *v1.Container) string {
	if c.TerminationMessagePath != "" {
		return c.TerminationMessagePath
	}
	return v1.TerminationMessagePathDefault
}

// newTerminationLog makes an empty termination log for one run of a
// container. Writable by anyone, as the kubelet makes it: the container may
// run as any user.
func newTerminationLog(path string) error {
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		return err
	}
	return os.Chmod(path, 0o666) // the umask narrowed the mode above
}

// terminationMessage is what the kubelet reports as state.terminated.message:
// the container's termination log, or with FallbackToLogsOnError and a
// failed, silent run, the tail of that run's output.
func terminationMessage(c *v1.Container, exitCode int32, terminationLog, containerLog string, logOffset int64) string {
	msg := readAtMost(terminationLog, 0, maxTerminationMessageBytes)
	if len(msg) > 0 || exitCode == 0 || c.TerminationMessagePolicy != v1.TerminationMessageFallbackToLogsOnError {
		return string(msg)
	}
	return string(logTail(readAtMost(containerLog, logOffset, -1), fallbackLogLines, fallbackLogBytes))
}

// readAtMost reads path from offset, at most limit bytes (all with a
// negative limit); a missing or unreadable file reads as empty, as the
// kubelet treats it.
func readAtMost(path string, offset, limit int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	var r io.Reader = f
	if limit >= 0 {
		r = io.LimitReader(f, limit)
	}
	data, _ := io.ReadAll(r)
	return data
}

// logTail is the last `lines` lines of log, then at most its last
// `maxBytes` bytes.
func logTail(log []byte, lines, maxBytes int) []byte {
	end := len(log)
	start := end
	if end > 0 && log[end-1] == '\n' {
		start-- // the final newline ends the last line, it starts none
	}
	for n := 0; n < lines && start > 0; n++ {
		i := bytes.LastIndexByte(log[:start], '\n')
		if i < 0 {
			start = 0
			break
		}
		if n == lines-1 {
			start = i + 1
			break
		}
		start = i
	}
	if end-start > maxBytes {
		start = end - maxBytes
	}
	return log[start:end]
}
