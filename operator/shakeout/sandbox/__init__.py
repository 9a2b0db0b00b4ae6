"""A local, real Kubernetes control plane for development and the e2e tests.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as plain
processes on loopback, built from Go modules by tools/controlplane/build.sh.
"""
