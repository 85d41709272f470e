// Command pause is the sandbox ("pause") container of the test node's pods: it holds the pod's
// namespaces open and does nothing else until it is told to stop.
//
// Kubernetes' own pause image is a C program built by its release tooling and pulled from a registry;
// neither is available here, so this is the same contract in Go, built by build.sh with no
// dependencies: sleep until SIGINT or SIGTERM, then exit 0.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
