"""Command-line entry points: `shakeout` and the kubectl plugin `kubectl-shakeout`."""
