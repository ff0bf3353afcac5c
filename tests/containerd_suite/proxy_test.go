package containerdsuite

import (
	"context"
	"fmt"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"google.golang.org/grpc"
)

// dialProxy returns the snapshotter containerd would make of the proxy plugin `name` at
// `socket`: the same client and dial options as containerd's proxy_plugins
// (services/server/server.go), blocking until the socket answers.
func dialProxy(ctx context.Context, socket, name string) (snapshots.Snapshotter, *grpc.ClientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, dialer.DialAddress(socket),
		grpc.WithInsecure(),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithBlock(),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("dial snapshotter %s at %s: %w", name, socket, err)
	}
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name), conn, nil
}
