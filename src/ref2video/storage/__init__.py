"""Where finished videos live. `base.Storage` is the interface; `local` keeps them in a folder."""

from .base import Storage
from .local import LocalStorage

__all__ = ["Storage", "LocalStorage"]
