"""`ref2video.client.__all__` is exactly its public names (httpx's test_exported_members)."""

from __future__ import annotations

import inspect

import ref2video.client as client
from ref2video.client import APIError, ClientError


def test_all_matches_the_public_names() -> None:
    public = {name for name in dir(client) if not name.startswith("_")}
    assert set(client.__all__) == public
    assert len(client.__all__) == len(set(client.__all__))


def test_the_error_tree() -> None:
    exported = {name: getattr(client, name) for name in client.__all__}
    errors = {name: obj for name, obj in exported.items() if isinstance(obj, type) and issubclass(obj, Exception)}
    assert set(errors) == {"ClientError", "APIError", "AuthenticationError", "InvalidRequest", "NotFound",
                           "RateLimited", "ServerError", "TransportError", "TaskFailed", "WaitTimeout",
                           "TaskNotFound", "AmbiguousTaskId"}
    for name, cls in errors.items():
        assert issubclass(cls, ClientError), name
    api = {name for name, cls in errors.items() if issubclass(cls, APIError) and cls is not APIError}
    assert api == {"AuthenticationError", "InvalidRequest", "NotFound", "RateLimited", "ServerError"}


def test_the_clients_mirror_each_other() -> None:
    def methods(cls: type) -> dict[str, inspect.Signature]:
        return {name: inspect.signature(fn) for name, fn in vars(cls).items()
                if callable(fn) and not name.startswith("_")}

    sync, asynchronous = methods(client.Client), methods(client.AsyncClient)
    assert set(sync) - {"close"} == set(asynchronous) - {"aclose"}
    for name, signature in sync.items():
        if name == "close":
            continue
        assert inspect.iscoroutinefunction(getattr(client.AsyncClient, name)), name
        assert list(signature.parameters) == list(asynchronous[name].parameters), name
    assert client.Client.__doc__ and ">>>" not in client.Client.__doc__ and "with Client(" in client.Client.__doc__
