"""The HTTP session every leg to the upstream API uses."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


def upstream_session(max_connections: int) -> requests.Session:
    """A session with a bounded pool that never retries, redirects or reads the env.

    Retries are scheduled by the caller (backoff per task, within the budget);
    a redirect could carry the API key to another host; proxies and `.netrc`
    credentials from the environment must not apply.
    """
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=1,
        pool_maxsize=max_connections,
        pool_block=True,
        # read=False: a read timeout comes out as requests.ReadTimeout, not wrapped in
        # a "max retries" ConnectionError, so it is counted as a timeout.
        max_retries=Retry(
            total=0, read=False, redirect=0, raise_on_redirect=False, raise_on_status=False
        ),
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False
    return session
