// Command k8s-mock-csi serves the in-memory CSI mock driver that Kubernetes'
// own e2e tests use (k8s.io/kubernetes/test/e2e/storage/drivers/csi-test) on a
// unix socket. It needs no root and no mounts, so it can stand in for the
// hostpath driver on a kwok cluster (see e2e/README.md).
//
// Node ID = driver name; ControllerPublishVolume answers NotFound for any other
// node ID, so every fake node's CSINode must carry nodeID=<driver name>.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"k8s.io/klog/v2"
	"k8s.io/kubernetes/test/e2e/storage/drivers/csi-test/driver"
	"k8s.io/kubernetes/test/e2e/storage/drivers/csi-test/mock/service"
)

func main() {
	endpoint := flag.String("endpoint", "unix:///tmp/k8s-mock-csi.sock", "CSI endpoint: unix:///path or a bare path")
	name := flag.String("drivername", service.Name, "CSI driver name (also the node ID)")
	disableAttach := flag.Bool("disable-attach", false, "do not advertise PUBLISH_UNPUBLISH_VOLUME")
	attachLimit := flag.Int64("attach-limit", 0, "max volumes per node (0 = unlimited)")
	nodeExpansion := flag.Bool("node-expansion-required", false, "ControllerExpandVolume answers NodeExpansionRequired=true")
	topology := flag.Bool("enable-topology", false, "advertise VOLUME_ACCESSIBILITY_CONSTRAINTS ("+service.TopologyKey+"="+service.TopologyValue+")")
	disableCtrlExpansion := flag.Bool("disable-controller-expansion", false, "do not advertise controller EXPAND_VOLUME")
	klog.InitFlags(nil)
	flag.Parse()

	path := strings.TrimPrefix(*endpoint, "unix://")
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		klog.Fatalf("removing stale socket %s: %v", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		klog.Fatalf("listen on %s: %v", path, err)
	}

	svc := service.New(service.Config{
		DriverName:                 *name,
		DisableAttach:              *disableAttach,
		AttachLimit:                *attachLimit,
		NodeExpansionRequired:      *nodeExpansion,
		EnableTopology:             *topology,
		DisableControllerExpansion: *disableCtrlExpansion,
		PermissiveTargetPath:       true,
	})
	d := driver.NewCSIDriver(&driver.CSIDriverServers{Controller: svc, Identity: svc, Node: svc})
	if err := d.Start(l, nil); err != nil {
		klog.Fatalf("start: %v", err)
	}
	fmt.Fprintf(os.Stderr, "k8s-mock-csi: driver %s (node ID %s) serving on %s\n", *name, *name, path)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	d.Stop()
	_ = os.Remove(path)
}
