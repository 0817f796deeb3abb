"""Notifications made from other services' events (``[[ingest]]`` rules).

``rules``: the rules and what an event becomes (pure); ``pubsub`` and ``streams``:
the two Redis sources; ``service``: builds the consumers and owns their tasks.
"""
