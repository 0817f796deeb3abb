"""The demo page at ``/demo/``: a chat and a notification bell built on the JS client.

Off unless ``demo.enabled``; see docs/demo.md. The static files beside this module are
served as they are (``realtime.js`` is clients/js/realtime.js, byte for byte).
"""

from .routes import add_demo_routes

__all__ = ["add_demo_routes"]
