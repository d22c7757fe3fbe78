"""The wan engine's optional speed-ups: a step-distillation LoRA, an attention backend and the
first-block cache (docs/engines.md, "Speed-ups").

Each is checked when the engine is built, at start-up, as far as it can be without loading
the model (`check`), and applied when the model loads (`apply`). A value that cannot work is
a configuration error either way: `check` raises ValueError, which the registry reports at
start-up; `apply` raises EngineError("InvalidConfiguration"), which fails the task.

    check(lora=Path("/models/lightx2v.safetensors"), attention="sage")  # at start-up
    apply(pipe, lora=..., attention="sage", first_block_cache=0.05)        # at load
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from ...errors import EngineError

__all__ = ["check", "apply", "safetensors_names", "ADAPTER"]

log = logging.getLogger(__name__)

ADAPTER = "distill"  # the LoRA's adapter name in the transformer
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on a header's size


def check(*, lora: Path | None, attention: str) -> None:
    """Refuse, with a ValueError naming the setting, a `wan_lora` that is not a LoRA file (or
    that this install cannot load) and a `wan_attention` that diffusers does not have or
    cannot run here."""
    if lora is not None:
        _check_lora(Path(lora))
    if attention:
        _check_attention(attention)


def apply(pipe: Any, *, lora: Path | None, attention: str, first_block_cache: float) -> None:
    """Load the LoRA, set the attention backend, enable the cache on the loaded pipeline."""
    if lora is not None:
        try:
            pipe.load_lora_weights(str(lora), adapter_name=ADAPTER, local_files_only=True)
        except Exception as exc:
            raise EngineError(f"wan_lora could not be loaded: {exc}", code="InvalidConfiguration") from exc
        layers = sum(1 for m in pipe.transformer.modules() if ADAPTER in getattr(m, "lora_A", {}))
        log.info("wan_lora %s adapts %d transformer layers", lora, layers)
    if attention:
        setter = getattr(pipe.transformer, "set_attention_backend", None)
        if setter is None:
            raise EngineError("wan_attention needs a diffusers with attention backends (0.35 or newer)",
                              code="InvalidConfiguration")
        try:
            setter(attention)
        except Exception as exc:
            raise EngineError(f"wan_attention {attention!r} is not available: {exc}",
                              code="InvalidConfiguration") from exc
    if first_block_cache:
        try:
            from diffusers.hooks import FirstBlockCacheConfig

            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=first_block_cache))
        except Exception as exc:
            raise EngineError(f"wan_first_block_cache is not supported here: {exc}",
                              code="InvalidConfiguration") from exc


def safetensors_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file, read from its header (8 bytes of little-endian
    length, then JSON) without loading a tensor; ValueError if it is not such a file."""
    with path.open("rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        if not 2 <= size <= min(_MAX_HEADER, path.stat().st_size - 8):
            raise ValueError("not a safetensors file")
        try:
            header = json.loads(f.read(size))
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            raise ValueError("not a safetensors file: its header is not JSON") from exc
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: its header is not a JSON object")
    return [name for name in header if name != "__metadata__"]


def _check_lora(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"wan_lora {str(path)!r} is not a file")
    try:
        names = safetensors_names(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"wan_lora {str(path)!r} is not a LoRA in safetensors format: {exc}") from exc
    # diffusers' own test of a LoRA checkpoint: its weights are named lora_A/lora_B (diffusers,
    # peft) or lora_down/lora_up (lightx2v, CausVid, kohya); alpha and diff keys may come beside.
    if not any("lora" in name for name in names):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(f"wan_lora {str(path)!r} is not a LoRA: none of its {len(names)} tensors is a LoRA "
                         f"weight ({shown or 'no tensors'}); give a Wan2.1 step-distillation LoRA such as "
                         "lightx2v's or CausVid's")
    if importlib.util.find_spec("peft") is None:
        raise ValueError("wan_lora needs the peft package (pip install 'ref2video[wan]')")


def _check_attention(name: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # diffusers and the hub client read it when imported
    try:
        from diffusers.models import attention_dispatch
    except ImportError:
        return  # no torch or diffusers (or too old a diffusers): load() says which
    backends = attention_dispatch.AttentionBackendName
    names = sorted(b.value for b in backends)
    if name.lower() not in names:
        raise ValueError(f"wan_attention {name!r} is not an attention backend of this diffusers; it has "
                         + ", ".join(names))
    # What set_attention_backend itself checks first: that the backend's package is installed.
    requirements = getattr(attention_dispatch, "_check_attention_backend_requirements", None)
    if requirements is not None:
        try:
            requirements(backends(name.lower()))
        except (RuntimeError, ImportError) as exc:
            raise ValueError(f"wan_attention {name!r} cannot run here: {exc}") from exc
