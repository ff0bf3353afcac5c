package containerdsuite

import (
	"context"
	"net"
	"path/filepath"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay"
	"google.golang.org/grpc"
)

// overlayThroughProxy is the reference: containerd's overlayfs snapshotter served over gRPC
// on a unix socket, as a proxy snapshotter would be, and reached through the same proxy
// client as imagecached. What it passes is what imagecached must pass.
func overlayThroughProxy(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	sn, err := overlay.NewSnapshotter(filepath.Join(root, "overlay"))
	if err != nil {
		return nil, nil, err
	}
	socket := filepath.Join(root, "snap.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		sn.Close()
		return nil, nil, err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	go srv.Serve(l)
	client, conn, err := dialProxy(ctx, socket, "overlayfs")
	if err != nil {
		srv.Stop()
		sn.Close()
		return nil, nil, err
	}
	cleanup := func() error {
		connErr := conn.Close()
		srv.Stop()
		if err := sn.Close(); err != nil {
			return err
		}
		return connErr
	}
	return client, cleanup, nil
}
