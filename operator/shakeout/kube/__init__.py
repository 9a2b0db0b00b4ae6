"""Cluster access: one client, one error vocabulary, URL descriptors, leases."""
