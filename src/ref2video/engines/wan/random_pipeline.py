"""Random-weight Wan VACE pipelines, built offline: for tests (tiny) and the bench (the real
1.3B architecture). Random weights measure plumbing and speed, never quality.

    build_pipeline(folder, TINY)          # a few MB, seconds on a CPU
    build_pipeline(folder, VACE_1_3B)     # the published Wan2.1-VACE-1.3B transformer config
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TINY", "VACE_1_3B", "make_pipeline", "build_pipeline"]

# diffusers' own test config (tests/pipelines/wan/test_wan_vace.py), with room for more latent
# frames (rope_max_seq_len) so 5 s videos and several references fit.
TINY: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=256, ffn_dim=32, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64, vace_layers=[0, 2], vace_in_channels=96,
)

# Wan2.1-VACE-1.3B as diffusers' conversion script writes it: 30 layers, 12 heads x 128.
VACE_1_3B: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, vace_layers=list(range(0, 30, 2)),
    vace_in_channels=96,
)


def build_pipeline(folder: Path, transformer: dict[str, Any], *, seed: int = 0, real_vae: bool = False) -> Path:
    """Save a random pipeline (`make_pipeline`) under `folder`, in diffusers layout."""
    pipe = make_pipeline(transformer, seed=seed, real_vae=real_vae)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(folder))
    return folder


def make_pipeline(transformer: dict[str, Any], *, seed: int = 0, real_vae: bool = False) -> Any:
    """A random WanVACEPipeline: the given transformer config, a tiny UMT5 text encoder with
    the right output width (transformer `text_dim`), a byte-level tokenizer that needs no
    vocabulary file, and a tiny VAE (or, with `real_vae`, Wan2.1's VAE architecture). Nothing
    is downloaded."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACEPipeline, WanVACETransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    if real_vae:
        vae = AutoencoderKLWan()
    else:
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
    torch.manual_seed(seed)
    tokenizer = ByT5Tokenizer()
    text_config = UMT5Config(vocab_size=len(tokenizer), d_model=transformer["text_dim"], d_kv=8, d_ff=64,
                             num_layers=2, num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0)
    text_encoder = UMT5EncoderModel(text_config).eval()
    torch.manual_seed(seed)
    model = WanVACETransformer3DModel(**transformer)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return WanVACEPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                           transformer=model)
