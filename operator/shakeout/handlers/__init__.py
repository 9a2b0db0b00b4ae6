"""The kopf wiring only: each handler hands its object to gather/, engine/ and execution/;
operator.py imports these modules by name."""
