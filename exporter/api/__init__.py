"""The task API (/api/v1/) and the status page (/status), mounted on the exporter's server.

- `auth.py`        the bearer token: where it comes from, constant-time checks
- `validation.py`  pure parsing of requests: bodies, query strings, IDs
- `app.py`         the WSGI app of /api/v1/ (register, list, show, forget tasks)
- `openapi.py`     the OpenAPI 3 document served at /api/v1/openapi.json
- `status_page.py` the HTML page at /status
- `mounts.py`      what `serve.serve` calls: the token from the config, the mounts

User documentation: docs/api.md.
"""
