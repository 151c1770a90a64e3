"""The server edge: the HTTP protocol, the middleware (request log and metrics, root path,
API keys, body limit), assembled in one place."""
