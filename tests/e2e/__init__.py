"""End-to-end tests: the chat example over HTTP and WebSocket, and in a real browser."""
