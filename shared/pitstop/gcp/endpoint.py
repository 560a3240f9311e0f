"""Same code, two worlds: a Google API client for GCP, or for a local stand-in at an endpoint."""

from __future__ import annotations

from typing import Any, TypeVar

C = TypeVar("C")


def google_client(client_class: type[C], endpoint: str | None, **kwargs: Any) -> C:
    """GCP with default credentials; or, given `endpoint`, the local stand-in there over REST, anonymously
    (the stand-ins serve the REST transport's paths and JSON, so the production client talks to them as is)."""
    if not endpoint:
        return client_class(**kwargs)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return client_class(credentials=AnonymousCredentials(), transport="rest",
                        client_options=ClientOptions(api_endpoint=endpoint), **kwargs)
