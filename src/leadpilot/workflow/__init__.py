"""The workflow engine: rules triggered by events or time, durable timers, idempotent actions, webhooks."""
