"""Liveness and readiness probe for an exporter behind --web.config.file.

    python probe.py PATH CA_FILE USERNAME_FILE PASSWORD_FILE [PORT]

GETs https://127.0.0.1:PORT/PATH (PORT 9847) with basic auth read from the two
files, verifying the server's certificate against CA_FILE; the host name is
not checked, since this runs in the exporter's own pod. Exit 0 on a 2xx answer,
1 otherwise. Standard library only: it runs in the exporter's image.
"""

import base64
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path


def main(argv: list[str]) -> int:
    path, ca_file, username_file, password_file = argv[:4]
    port = int(argv[4]) if len(argv) > 4 else 9847
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    username = Path(username_file).read_text(encoding="utf-8").strip()
    password = Path(password_file).read_text(encoding="utf-8").strip()
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}{path}", headers={"Authorization": f"Basic {credentials}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=4, context=context) as response:
            return 0 if 200 <= response.status < 300 else 1
    except urllib.error.HTTPError as exc:
        print(f"{path}: HTTP {exc.code}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{path}: {type(exc).__name__}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
