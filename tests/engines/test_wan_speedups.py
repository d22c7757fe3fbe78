"""The wan engine's speed-up settings on the CPU (ref2video.engines.wan.speedups), on a tiny
random WanVACEPipeline built here and loaded by the production loader: bfloat16 weights, a
step-distillation LoRA, an attention backend, the first-block cache, and wan_cpu_offload
refused without CUDA. Each test checks that the setting took effect in the loaded pipeline
and that a bad value stops the start-up; how much faster each makes a real model only a GPU
shows (docs/engines.md). Skipped when torch or diffusers is absent (`pip install -e '.[wan]'`)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from ref2video.config import Settings
from ref2video.engines.base import GenerationRequest
from ref2video.engines.registry import EngineRegistry
from ref2video.errors import EngineError, TaskCanceled
from ref2video.media.probe import probe
from ref2video.media.reference import Reference
from ref2video.spec import TaskSpec
from tests.live import LiveServer

MODEL = "wan2.6-r2v-flash"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the engine, not the store, is under test here."""
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


@pytest.fixture(scope="session")
def lora_file(wan_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-2 LoRA for the tiny transformer in the layout lightx2v's and CausVid's Wan2.1
    LoRAs have (original Wan names, lora_down/lora_up, alpha), which diffusers converts."""
    import torch
    from safetensors.torch import save_file

    from ref2video.engines.wan.random_pipeline import TINY

    dim, ffn, rank = TINY["num_attention_heads"] * TINY["attention_head_dim"], TINY["ffn_dim"], 2
    generator = torch.Generator().manual_seed(0)
    tensors: dict[str, Any] = {}

    def layer(name: str, inputs: int, outputs: int) -> None:
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, inputs, generator=generator)
        tensors[f"{name}.lora_up.weight"] = torch.randn(outputs, rank, generator=generator)
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))

    for i in range(TINY["num_layers"]):
        for attention in ("self_attn", "cross_attn"):
            for projection in "qkvo":
                layer(f"diffusion_model.blocks.{i}.{attention}.{projection}", dim, dim)
        layer(f"diffusion_model.blocks.{i}.ffn.0", dim, ffn)
        layer(f"diffusion_model.blocks.{i}.ffn.2", ffn, dim)
    path = tmp_path_factory.mktemp("lora") / "tiny-distill.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="session")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    path = tmp_path_factory.mktemp("refs") / "a.png"
    Image.new("RGB", (320, 240), (200, 40, 40)).save(path)
    return Reference.from_info(1, path.name, path, probe(path))


class Context:
    """A worker's context that cancels once `cancel_at` steps are reported."""

    def __init__(self, cancel_at: int | None = None) -> None:
        self.steps, self.cancel_at = 0, cancel_at

    def report_step(self, step: int, total: int) -> None:
        self.steps += 1

    def should_cancel(self) -> bool:
        return self.cancel_at is not None and self.steps >= self.cancel_at

    def raise_if_canceled(self) -> None:
        if self.should_cancel():
            raise TaskCanceled()


class Calls:
    """Counts forward calls of modules, with the dtype of each call's first tensor."""

    def __init__(self, **modules: Any) -> None:
        self.counts = dict.fromkeys(modules, 0)
        self.dtypes: dict[str, set[Any]] = {name: set() for name in modules}
        self._handles = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True)
                         for name, m in modules.items()]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.counts[name] += 1
            tensors = [a for a in (*args, *kwargs.values()) if hasattr(a, "dtype")]
            self.dtypes[name].update(t.dtype for t in tensors[:1])
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class Wrapped:
    """The pipeline with its call replaced; every other attribute is the pipeline's."""

    def __init__(self, pipe: Any, call: Callable[..., Any]) -> None:
        self._wrapped, self._call = pipe, call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def __call__(self, **kwargs: Any) -> Any:
        return self._call(**kwargs)


def _settings(tmp_path: Path, wan_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(data_dir=tmp_path / "data", models={MODEL: "wan"}, wan_model_dir=wan_dir,
                                  wan_device="cpu", wan_steps=2, wan_area="32*32")
    values.update(overrides)
    return Settings(**values)


def _engine(tmp_path: Path, wan_dir: Path, **overrides: Any) -> Any:
    """The engine as a worker gets it: built from the settings by the registry, and loaded."""
    return EngineRegistry.from_settings(_settings(tmp_path, wan_dir, **overrides)).get(MODEL)


def _generate(engine: Any, picture: Reference, scratch: Path, context: Context | None = None,
              size: str = "960*960", seed: int = 1) -> np.ndarray:
    spec = TaskSpec(model=MODEL, prompt="character1 waves", reference_urls=(picture.url,), size=size, duration=2,
                    audio=False, seed=seed)
    scratch.mkdir(parents=True, exist_ok=True)
    result = engine.generate(GenerationRequest("t", spec, scratch, references=(picture,)), context or Context())
    with av.open(str(result.video_path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _server(make_server: Callable[..., LiveServer], wan_dir: Path, **overrides: Any) -> LiveServer:
    values: dict[str, Any] = dict(models={MODEL: "wan"}, wan_model_dir=wan_dir, wan_device="cpu", wan_steps=2,
                                  wan_area="32*32", lease_seconds=30.0)
    values.update(overrides)
    return make_server(**values)


def _run(server: LiveServer, **parameters: Any) -> np.ndarray:
    """One task over HTTP; the decoded frames of its video."""
    params = dict(prompt="character1 waves", size="960*960", duration=2, audio=False, seed=3)
    params.update(parameters)
    body = server.wait(server.create(model=MODEL, **params), timeout=240)
    assert body["output"]["task_status"] == "SUCCEEDED", body
    video = httpx.get(body["output"]["video_url"], timeout=60)
    with av.open(io.BytesIO(video.content)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (960, 960)
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _refused_at_start_up(make_server: Callable[..., LiveServer], wan_dir: Path, **overrides: Any) -> str:
    with pytest.raises(EngineError) as caught:
        _server(make_server, wan_dir, **overrides)
    return caught.value.message


# -- wan_dtype = bfloat16 -------------------------------------------------------------------


def test_bfloat16_weights_run_with_the_vae_kept_in_float32(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    server = _server(make_server, wan_dir, wan_dtype="bfloat16")
    pipe = server.service.registry.get(MODEL)._pipe  # type: ignore[attr-defined]  # loaded, as the worker would
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    calls = Calls(transformer=pipe.transformer, decoder=pipe.vae.decoder)
    frames = _run(server)
    calls.remove()
    assert len(frames) == 60
    assert calls.dtypes == {"transformer": {torch.bfloat16}, "decoder": {torch.float32}}


# -- wan_lora -------------------------------------------------------------------------------


def test_a_distillation_lora_is_loaded_and_runs_its_own_steps_without_guidance(  # type: ignore[no-untyped-def]
        make_server, wan_dir: Path, lora_file: Path) -> None:
    server = _server(make_server, wan_dir, wan_lora=lora_file, wan_lora_steps=3, wan_lora_guidance=1.0,
                     wan_guidance=5.0)
    pipe = server.service.registry.get(MODEL)._pipe  # type: ignore[attr-defined]
    assert pipe.get_list_adapters() == {"transformer": ["distill"]}
    adapted = [name for name, m in pipe.transformer.named_modules() if "distill" in getattr(m, "lora_A", {})]
    assert len(adapted) == 3 * (8 + 2)  # every block: self and cross attention q, k, v, o and the two ffn layers
    steps: list[int] = []
    original = pipe.__call__

    def counting(**kwargs: Any) -> Any:
        inner = kwargs["callback_on_step_end"]
        kwargs["callback_on_step_end"] = lambda p, i, t, k: steps.append(i) or inner(p, i, t, k)
        return original(**kwargs)

    server.service.registry.get(MODEL)._pipe = Wrapped(pipe, counting)  # type: ignore[attr-defined]
    calls = Calls(transformer=pipe.transformer)
    with_lora = _run(server)
    calls.remove()
    assert steps == [0, 1, 2]  # wan_lora_steps, not wan_steps
    assert calls.counts["transformer"] == 3  # guidance 1: one transformer pass a step, no negative pass

    # The same schedule without the LoRA makes other frames: its weights are in the transformer.
    plain = _server(make_server, wan_dir, wan_steps=3, wan_guidance=1.0)
    assert not np.array_equal(with_lora, _run(plain))


def test_a_lora_file_that_is_not_a_lora_stops_the_start_up(make_server, wan_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    text = tmp_path / "notes.safetensors"
    text.write_text("not a safetensors file at all")
    weights = wan_dir / "transformer" / "diffusion_pytorch_model.safetensors"  # real tensors, no LoRA among them
    assert weights.is_file()
    for path, says in [(tmp_path / "missing.safetensors", "is not a file"),
                       (text, "is not a LoRA in safetensors format"),
                       (weights, "is not a LoRA: none of its")]:
        message = _refused_at_start_up(make_server, wan_dir, wan_lora=path)
        assert "wan_lora" in message and str(path) in message and says in message, message


# -- wan_attention --------------------------------------------------------------------------


@pytest.fixture
def attention_registry() -> Iterator[Any]:
    """diffusers' attention backend registry; its process-wide active backend, which setting a
    model's backend also sets, is put back afterwards."""
    pytest.importorskip("diffusers")
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    yield _AttentionBackendRegistry
    _AttentionBackendRegistry.set_active_backend(active)


def test_the_attention_backend_set_is_the_one_every_attention_layer_runs(  # type: ignore[no-untyped-def]
        tmp_path: Path, wan_dir: Path, picture: Reference, attention_registry, monkeypatch) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    math = AttentionBackendName._NATIVE_MATH  # PyTorch's own math kernel: on every machine, and not the default
    engine = _engine(tmp_path, wan_dir, wan_attention="_native_math")
    processors = [m.processor for m in engine._pipe.transformer.modules() if hasattr(m, "processor")]
    assert processors and {p._attention_backend for p in processors} == {math}
    ran: list[int] = []
    kernel = attention_registry._backends[math]
    monkeypatch.setitem(attention_registry._backends, math, lambda **kw: ran.append(1) or kernel(**kw))
    assert len(_generate(engine, picture, tmp_path / "run")) == 60
    # self and cross attention of 3 blocks and 2 VACE blocks, conditional and negative, 2 steps
    assert len(ran) == 2 * 5 * 2 * 2


def test_an_attention_backend_that_cannot_run_stops_the_start_up(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("diffusers")
    message = _refused_at_start_up(make_server, wan_dir, wan_attention="warp_drive")
    assert "wan_attention 'warp_drive' is not an attention backend" in message and "native" in message
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        message = _refused_at_start_up(make_server, wan_dir, wan_attention="flash")
        assert "wan_attention 'flash' cannot run here" in message and "flash-attn" in message, message


# -- wan_first_block_cache ------------------------------------------------------------------


def test_the_first_block_cache_hooks_the_transformer_and_skips_the_rest_of_it(  # type: ignore[no-untyped-def]
        tmp_path: Path, wan_dir: Path, picture: Reference) -> None:
    engine = _engine(tmp_path, wan_dir, wan_first_block_cache=0.5, wan_steps=4)
    blocks = engine._pipe.transformer.blocks
    assert blocks[0]._diffusers_hook.get_hook("fbc_leader_block_hook") is not None
    assert all(b._diffusers_hook.get_hook("fbc_block_hook") is not None for b in blocks[1:])
    calls = Calls(first=blocks[0].ffn, last=blocks[-1].ffn)
    _generate(engine, picture, tmp_path / "run")
    calls.remove()
    # The first block runs in every pass (4 steps, conditional and negative); on these random
    # weights its output changes by less than half from step to step, so the rest of the
    # transformer runs in the first step only and its result is reused after.
    assert calls.counts == {"first": 8, "last": 2}


def test_a_canceled_task_leaves_no_cached_state_to_the_next(  # type: ignore[no-untyped-def]
        tmp_path: Path, wan_dir: Path, picture: Reference) -> None:
    engine = _engine(tmp_path, wan_dir, wan_first_block_cache=0.5, wan_steps=3)
    square = _generate(engine, picture, tmp_path / "a")
    with pytest.raises(TaskCanceled):
        _generate(engine, picture, tmp_path / "b", Context(cancel_at=2), size="1280*720")
    # Without a reset the next pass compared its first block with the canceled task's (another
    # size: a failure) or reused its cached blocks (the same size: other frames).
    assert np.array_equal(_generate(engine, picture, tmp_path / "c"), square)


# -- wan_cpu_offload ------------------------------------------------------------------------


def test_cpu_offload_on_the_cpu_stops_the_start_up(make_server, wan_dir: Path) -> None:  # type: ignore[no-untyped-def]
    message = _refused_at_start_up(make_server, wan_dir, wan_cpu_offload=True)
    assert "wan_cpu_offload needs a CUDA wan_device (wan_device is 'cpu')" in message, message


# -- all of them ----------------------------------------------------------------------------


def test_the_speed_ups_work_together(tmp_path: Path, wan_dir: Path, lora_file: Path, picture: Reference,  # type: ignore[no-untyped-def]
                                     attention_registry) -> None:
    import torch

    engine = _engine(tmp_path, wan_dir, wan_dtype="bfloat16", wan_lora=lora_file, wan_attention="native",
                     wan_first_block_cache=0.05)
    assert engine._pipe.transformer.dtype == torch.bfloat16
    assert engine._pipe.transformer.blocks[0].attn1.to_q.lora_A["distill"].weight.dtype == torch.bfloat16
    frames = _generate(engine, picture, tmp_path / "run")
    assert len(frames) == 60 and np.array_equal(frames, _generate(engine, picture, tmp_path / "again"))
