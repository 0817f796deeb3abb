"""Peer servers that ``bench.compare`` measures realtime against.

- ``bare_server``: the floor for writing each message to each socket separately in
  Python (one pre-encoded frame written to every transport of a room).
- ``socketio_server``: python-socketio as its users deploy it (needs
  ``requirements-bench.txt``).
- ``socketio-node/server.js``: Node Socket.IO 4 as its users deploy it (Node.js >= 20;
  ``npm ci`` installs what its lock file pins, on first use).

The two Socket.IO peers speak the same events as realtime's ``/socket.io/``.
"""
