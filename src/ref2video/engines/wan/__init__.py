"""The open-weights engine: Wan VACE through diffusers (docs/engines.md, "Running open weights").

Importing this package imports neither torch nor diffusers; loading the engine does.
"""

from .engine import WanEngine

__all__ = ["WanEngine"]
