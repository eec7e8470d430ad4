"""Endpoints: the ways events leave the bridge (WebSocket, SSE, HTTP poll, REST)."""
