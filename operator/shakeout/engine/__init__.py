"""The pure core: decisions without I/O and without a clock of its own.

Handlers gather observations, call in here, and carry out what comes back. Nothing in
this package imports kopf or kubernetes (checked by import-linter).
"""
