"""The realtime server: connections, rooms, auth, REST and fan-out."""
