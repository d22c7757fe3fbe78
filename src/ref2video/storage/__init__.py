"""Where finished videos live. `base.Storage` is the interface; `local` keeps them in a folder."""

from .base import Storage, StoredObject
from .local import LocalStorage

__all__ = ["Storage", "StoredObject", "LocalStorage"]
