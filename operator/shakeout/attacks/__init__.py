"""Acting on the cluster: the executors of the attack catalogue."""
