"""Peer servers that ``bench.compare`` measures realtime against.

- ``bare_server``: the floor for writing each message to each socket separately in
  Python (one pre-encoded frame written to every transport of a room).
- ``socketio_server``: python-socketio as its users deploy it (needs
  ``requirements-bench.txt``).
"""
