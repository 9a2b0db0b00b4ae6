// pause: the process that holds a pod's namespaces on the sandbox's real node.
//
// It sleeps until SIGINT or SIGTERM, and reaps the zombies it inherits as PID 1 of a pod
// whose containers share its PID namespace. Built by tools/controlplane/build.sh
// --real-node into the pause image (localhost/shakeout/pause:3.10).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("shakeout pause")
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
