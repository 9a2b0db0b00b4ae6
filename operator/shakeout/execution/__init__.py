"""Running what the engine decided: the run executor, the lock, live runs, schedules."""
