"""The admission webhooks, one module per kind."""
