package containerdsuite

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/snapshots"
)

// freshImagecached starts one imagecached per suite test, everything it makes under the
// test's root: its state root, its config, its API and snapshotter sockets, its log. The
// cleanup stops it and fails when a mount or loop device it made outlives it.
func freshImagecached(binary string) func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	return func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		// The sockets get a short directory of their own: a unix socket's path must fit in
		// 108 bytes, the daemon binds each one at a longer staging path beside it first
		// (src/root_socket.rs), and the suite's root is already deep in TMPDIR.
		sockets, err := os.MkdirTemp("/tmp", "ic-suite-")
		if err != nil {
			return nil, nil, err
		}
		snapSocket := filepath.Join(sockets, "snap.sock")
		apiSocket := filepath.Join(sockets, "api.sock")
		config := filepath.Join(root, "imagecached.toml")
		logPath := filepath.Join(root, "imagecached.log")
		// Only the snapshotter: no containerd to forward CRI calls or publish images to,
		// and no pulls of its own (the suite names no image).
		text := fmt.Sprintf(`root = %q
socket = %q
snapshotter_socket = %q
cri_image_socket = ""
containerd_socket = %q
snapshotter_pulls = false
publish_images = false
secrets_dir = %q
`, filepath.Join(root, "state"), apiSocket, snapSocket,
			filepath.Join(root, "no-containerd.sock"), filepath.Join(root, "secrets"))
		if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
			os.RemoveAll(sockets)
			return nil, nil, err
		}
		logFile, err := os.Create(logPath)
		if err != nil {
			os.RemoveAll(sockets)
			return nil, nil, err
		}
		defer logFile.Close()
		cmd := exec.Command(binary, "--config", config)
		cmd.Env = append(os.Environ(), "IMAGECACHE_LOG=info,imagecache=debug", "NO_COLOR=1")
		cmd.Stderr = logFile
		// A suite that dies (its timeout) takes its daemons with it: a daemon left running
		// would hold its sockets and state on the caller's scratch filesystem.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			os.RemoveAll(sockets)
			return nil, nil, fmt.Errorf("start %s: %w", binary, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() error {
			defer os.RemoveAll(sockets)
			return stopDaemon(ctx, cmd, exited, root, logPath)
		}

		if err := waitForSocket(snapSocket, exited); err != nil {
			stop()
			return nil, nil, fmt.Errorf("%w\n%s", err, readLog(logPath))
		}
		client, conn, err := dialProxy(ctx, snapSocket, "imagecache")
		if err != nil {
			stop()
			return nil, nil, err
		}
		cleanup := func() error {
			connErr := conn.Close()
			if err := stop(); err != nil {
				return err
			}
			return connErr
		}
		return client, cleanup, nil
	}
}

// waitForSocket waits until something listens on socket, or the daemon ends first.
func waitForSocket(socket string, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("imagecached ended before listening on %s: %v", socket, err)
		default:
		}
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("imagecached did not listen on %s within 30 s", socket)
}

// stopDaemon stops it as systemd would (SIGTERM), then checks that nothing it mounted or
// attached under root is left; the daemon's warnings and errors go to the test's log.
func stopDaemon(ctx context.Context, cmd *exec.Cmd, exited <-chan error, root, logPath string) error {
	var waitErr error
	if err := cmd.Process.Signal(syscall.SIGTERM); err == nil {
		select {
		case waitErr = <-exited:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-exited
			waitErr = fmt.Errorf("imagecached did not stop within 60 s of SIGTERM")
		}
	}
	for _, line := range strings.Split(readLog(logPath), "\n") {
		if strings.Contains(line, "WARN") || strings.Contains(line, "ERROR") {
			log.G(ctx).Warnf("imagecached: %s", line)
		}
	}
	if waitErr != nil {
		return fmt.Errorf("imagecached: %v\n%s", waitErr, readLog(logPath))
	}
	if left := leftovers(root); len(left) > 0 {
		return fmt.Errorf("imagecached left behind under %s: %s", root, strings.Join(left, ", "))
	}
	return nil
}

func readLog(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// leftovers names every mount point and loop device backing file under root.
func leftovers(root string) []string {
	// mountinfo and sysfs name resolved paths.
	if resolved, err := filepath.EvalSymlinks(root); err == nil {
		root = resolved
	}
	var left []string
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			fields := strings.Fields(s.Text())
			if len(fields) > 4 && under(unescape(fields[4]), root) {
				left = append(left, "mount "+fields[4])
			}
		}
		f.Close()
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil && under(strings.TrimSpace(string(b)), root) {
			left = append(left, "loop device "+filepath.Base(filepath.Dir(filepath.Dir(file))))
		}
	}
	return left
}

func under(path, root string) bool {
	return path == root || strings.HasPrefix(path, root+"/")
}

// unescape undoes mountinfo's octal escapes (space, tab, newline, backslash).
func unescape(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}
