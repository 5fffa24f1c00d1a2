"""Central side of Bluezone gateways: collect every office's events, heal gaps, trace F0 visits.

``bluezone-central collect`` consumes the gateways' MQTT contract (docs/mqtt.md) into
PostgreSQL or SQLite; ``trace`` and ``report`` answer from that database. The event model,
schemas and the trace query are the gateway package's own (`gateway.schemas`,
`gateway.trace`).
"""
