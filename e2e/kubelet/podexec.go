package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// podExecCommand is the hidden subcommand that becomes a container's
// process: started in new mount and UTS namespaces, it joins the pod's
// network namespace, builds the container's root and execs the command.
const podExecCommand = "pod-exec"

type bind struct {
	Src      string
	Dst      string // inside the container
	ReadOnly bool
}

type execSpec struct {
	Netns        string // path of the pod's network namespace
	Hostname     string
	Rootfs       string // an empty directory for the container's root (a tmpfs)
	Binary       string // the image's binary on this machine
	Entry        string // where the binary appears inside (/usr/local/bin/<image>)
	Binds        []bind
	Argv         []string
	Env          []string
	Dir          string
	UID, GID     *int64
	Groups       []int64
	ReadOnlyRoot bool
	NoNewPrivs   bool
}

// execSpec resolves the container's mounts, user and root.
func (w *podWorker) execSpec(c *container, entry, binary, terminationLog string, argv, env []string) (*execSpec, error) {
	pod := w.pod
	s := &execSpec{
		Netns:    "/run/netns/" + w.netns,
		Hostname: podHostname(pod),
		Rootfs:   filepath.Join(w.dir, "rootfs", c.spec.Name),
		Binary:   binary,
		Entry:    entry,
		Argv:     argv,
		Env:      env,
		Dir:      c.spec.WorkingDir,
	}
	if s.Dir == "" {
		s.Dir = "/"
	}
	etc := filepath.Join(w.dir, "etc")
	s.Binds = append(s.Binds,
		bind{Src: filepath.Join(etc, "hosts"), Dst: "/etc/hosts"},
		bind{Src: filepath.Join(etc, "resolv.conf"), Dst: "/etc/resolv.conf"},
		bind{Src: filepath.Join(etc, "hostname"), Dst: "/etc/hostname"},
	)
	for _, m := range c.spec.VolumeMounts {
		vol, ok := w.volumes[m.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %q: no such volume", m.Name)
		}
		src := vol.path
		if m.SubPath != "" {
			src = filepath.Join(src, m.SubPath)
			if !strings.HasPrefix(src, vol.path+"/") {
				return nil, fmt.Errorf("volumeMount %q: subPath leaves the volume", m.Name)
			}
			if err := makeSubPath(vol.path, src); err != nil {
				return nil, fmt.Errorf("volumeMount %q: subPath: %w", m.Name, err)
			}
		}
		s.Binds = append(s.Binds, bind{Src: src, Dst: m.MountPath, ReadOnly: m.ReadOnly || vol.readOnly})
	}
	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &v1.PodSecurityContext{}
	}
	csc := c.spec.SecurityContext
	if csc == nil {
		csc = &v1.SecurityContext{}
	}
	s.UID, s.GID = psc.RunAsUser, psc.RunAsGroup
	if csc.RunAsUser != nil {
		s.UID = csc.RunAsUser
	}
	if csc.RunAsGroup != nil {
		s.GID = csc.RunAsGroup
	}
	nonRoot := psc.RunAsNonRoot
	if csc.RunAsNonRoot != nil {
		nonRoot = csc.RunAsNonRoot
	}
	if nonRoot != nil && *nonRoot && (s.UID == nil || *s.UID == 0) {
		// The "image" (a binary of this workspace) names no user, so like a
		// kubelet with a root image we refuse.
		return nil, fmt.Errorf("container has runAsNonRoot and image will run as root")
	}
	if psc.FSGroup != nil {
		s.Groups = append(s.Groups, *psc.FSGroup)
	}
	s.Groups = append(s.Groups, psc.SupplementalGroups...)
	s.ReadOnlyRoot = csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem
	s.NoNewPrivs = csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation
	// After the volumes: like a kubelet's, a termination log path inside a
	// volume is this container's own file mounted over the volume's.
	s.Binds = append(s.Binds, bind{Src: terminationLog, Dst: terminationMessagePath(c.spec)})
	c.mu.Lock()
	c.uid, c.gid = s.UID, s.GID
	c.mu.Unlock()
	return s, nil
}

// makeSubPath creates a missing subPath directory as the kubelet does: with
// the mode of the volume's root (so a volume the pod's fsGroup may write
// stays writable below the subPath), its group inherited through the
// root's setgid bit.
func makeSubPath(volumeRoot, path string) error {
	if _, err := os.Stat(path); err == nil || !os.IsNotExist(err) {
		return err
	}
	root, err := os.Stat(volumeRoot)
	if err != nil {
		return err
	}
	mode := root.Mode() & (os.ModePerm | os.ModeSetgid | os.ModeSticky)
	rel, err := filepath.Rel(volumeRoot, path)
	if err != nil {
		return err
	}
	dir := volumeRoot
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, mode.Perm()); err != nil {
			if os.IsExist(err) {
				continue
			}
			return err
		}
		// Mkdir honours neither the umask-free mode nor setgid/sticky bits.
		if err := os.Chmod(dir, mode); err != nil {
			return err
		}
	}
	return nil
}

func podExec(args []string) {
	// Namespaces and credentials belong to threads: stay on this one until exec.
	runtime.LockOSThread()
	if err := podExecMain(args); err != nil {
		fmt.Fprintf(os.Stderr, "witan-e2e-kubelet pod-exec: %v\n", err)
		os.Exit(128)
	}
}

func podExecMain(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: pod-exec SPEC.json")
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var s execSpec
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	// Nothing mounted from here on is seen outside this mount namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	fd, err := unix.Open(s.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", s.Netns, err)
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("joining %s: %w", s.Netns, err)
	}
	unix.Close(fd)
	if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
		return err
	}
	if err := buildRoot(&s); err != nil {
		return err
	}
	if err := unix.Chdir(s.Dir); err != nil {
		return fmt.Errorf("workingDir %s: %w", s.Dir, err)
	}
	if s.GID != nil || s.UID != nil || len(s.Groups) > 0 {
		groups := make([]int, 0, len(s.Groups))
		for _, g := range s.Groups {
			groups = append(groups, int(g))
		}
		if err := unix.Setgroups(groups); err != nil {
			return err
		}
	}
	if s.GID != nil {
		if err := unix.Setresgid(int(*s.GID), int(*s.GID), int(*s.GID)); err != nil {
			return err
		}
	}
	if s.UID != nil {
		if err := unix.Setresuid(int(*s.UID), int(*s.UID), int(*s.UID)); err != nil {
			return err
		}
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return err
		}
	}
	// Changing credentials cleared the parent-death signal: set it again, so
	// the process dies with the kubelet whatever happens.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return err
	}
	path := s.Argv[0]
	if !strings.Contains(path, "/") {
		if path, err = lookPath(path, s.Env); err != nil {
			return err
		}
	}
	return unix.Exec(path, s.Argv, s.Env)
}

// buildRoot makes a tmpfs the container's root: this machine's /usr and
// /etc read-only, /proc, a private /dev (buildDev) and /sys, the image's binary at its entry
// path, the pod's /etc files and volumes; then pivots into it.
func buildRoot(s *execSpec) error {
	root := s.Rootfs
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "mode=755"); err != nil {
		return fmt.Errorf("tmpfs root: %w", err)
	}
	bindRO := func(src, dst string) error {
		if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", src, err)
		}
		return unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
	}
	for _, d := range []string{"usr", "etc", "opt", "bin", "sbin", "lib", "lib32", "lib64", "libx32"} {
		fi, err := os.Lstat("/" + d)
		if err != nil {
			continue
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink("/" + d)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, filepath.Join(root, d)); err != nil {
				return err
			}
			continue
		}
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
		if err := bindRO("/"+d, filepath.Join(root, d)); err != nil {
			return err
		}
	}
	for _, d := range []string{"proc", "dev", "sys", "tmp", "var", "run", "root", ".oldroot"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := os.Symlink("../run", filepath.Join(root, "var", "run")); err != nil {
		return err
	}
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("proc: %w", err)
	}
	if err := buildDev(filepath.Join(root, "dev")); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if err := bindRO("/sys", filepath.Join(root, "sys")); err != nil {
		return err
	}
	// The image's binary: a fresh /usr/local/bin holding only it.
	bin := filepath.Join(root, filepath.Dir(s.Entry))
	if err := unix.Mount("tmpfs", bin, "tmpfs", 0, "mode=755"); err != nil {
		return fmt.Errorf("tmpfs %s: %w", s.Entry, err)
	}
	binds := append([]bind{{Src: s.Binary, Dst: s.Entry, ReadOnly: true}}, s.Binds...)
	for _, b := range binds {
		dst := filepath.Join(root, b.Dst)
		fi, err := os.Stat(b.Src)
		if err != nil {
			return err
		}
		if _, statErr := os.Stat(dst); statErr == nil {
			err = nil // the mount point exists (e.g. /etc/hosts in the read-only /etc)
		} else if fi.IsDir() {
			err = os.MkdirAll(dst, 0o755)
		} else if err = os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("mount point %s: %w (it must lie under a writable path of the root: /var, /run, /tmp, /root or a volume)", b.Dst, err)
		}
		if err := unix.Mount(b.Src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s at %s: %w", b.Src, b.Dst, err)
		}
		if b.ReadOnly {
			if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				return err
			}
		}
	}
	if s.ReadOnlyRoot {
		if err := unix.Mount("", root, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only root: %w", err)
		}
		if err := unix.Mount("", bin, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return err
		}
	}
	if err := unix.PivotRoot(root, filepath.Join(root, ".oldroot")); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	return unix.Unmount("/.oldroot", unix.MNT_DETACH)
}

func lookPath(name string, env []string) (string, error) {
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH", name)
}

// devNodes are the device nodes a container runtime gives every container
// (runc's default set), bound from this machine's /dev.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// buildDev makes the container's own /dev, as a runtime does: a tmpfs with
// the usual device nodes, a private devpts instance, /dev/shm and the fd
// links. Being private, files written there (the termination log) are the
// container's alone.
func buildDev(dev string) error {
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_STRICTATIME, "mode=755,size=65536k"); err != nil {
		return fmt.Errorf("tmpfs: %w", err)
	}
	for _, name := range devNodes {
		dst := filepath.Join(dev, name)
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			return err
		}
		f.Close()
		if err := unix.Mount("/dev/"+name, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", name, err)
		}
	}
	pts := filepath.Join(dev, "pts")
	if err := os.Mkdir(pts, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("devpts", pts, "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("devpts: %w", err)
	}
	shm := filepath.Join(dev, "shm")
	if err := os.Mkdir(shm, 0o1777); err != nil {
		return err
	}
	if err := unix.Mount("shm", shm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
		return fmt.Errorf("shm: %w", err)
	}
	for name, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd",
		"stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	return nil
}
