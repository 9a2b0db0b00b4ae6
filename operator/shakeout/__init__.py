"""shakeout: a Kubernetes operator that runs chaos-engineering experiments safely."""

__version__ = "0.1.0"
