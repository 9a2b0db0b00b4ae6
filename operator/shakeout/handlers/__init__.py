"""kopf handlers: thin adapters that gather observations, ask the engine, and act."""
