"""Reads from the cluster: the run facts, the targets, the switch, the agents, state checks."""
