"""The node agent: applies node-level attacks to the target pods of its node."""
