"""The node agent's fault layer: locate a pod, apply and roll back faults, keep them safe.

Imports nothing but the standard library and `shakeout.api` (the attack catalogue), so that the
keeper process and the stress program start fast and never depend on a cluster.
"""
