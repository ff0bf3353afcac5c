// containerd's own snapshotter test suite (snapshots/testsuite of containerd 1.6.20, from
// Debian's golang-github-containerd-containerd-dev), run twice in one `go test`: against
// containerd's overlayfs snapshotter, the reference, and against imagecached. Both are
// reached the way containerd reaches a proxy plugin: its snapshots/proxy client over a unix
// socket. tests/containerd_snapshotter_suite.rs runs this and compares the two runs test by
// test; every test that passes on overlayfs must pass on imagecache.
//
// Built in GOPATH mode against Debian's packaged sources, offline:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode IMAGECACHED=target/release/imagecached \
//	    go test -v -count=1 ./tests/containerd_suite
package containerdsuite

import (
	"os"
	"testing"

	"github.com/containerd/containerd/snapshots/testsuite"
)

func TestSnapshotterSuite(t *testing.T) {
	// Each suite test mounts what its snapshotter returns: root only, as in containerd.
	if os.Getuid() != 0 {
		t.Fatal("containerd's snapshotter suite mounts overlayfs: run it as root")
	}
	daemon := os.Getenv("IMAGECACHED")
	if daemon == "" {
		t.Fatal("IMAGECACHED must name the imagecached binary under test")
	}
	t.Run("overlayfs", func(t *testing.T) {
		testsuite.SnapshotterSuite(t, "overlayfs", overlayThroughProxy)
	})
	t.Run("imagecache", func(t *testing.T) {
		testsuite.SnapshotterSuite(t, "imagecache", freshImagecached(daemon))
	})
}
