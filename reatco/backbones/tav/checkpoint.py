"""Tune-A-Video checkpoint format: `*3D` config names, fp32 `diffusion_pytorch_model.bin`
(or safetensors), and file resolution for local folders and hub ids."""

from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from ...errors import ReAtCoError

logger = logging.getLogger(__name__)

TAV_CLASS_NAME = "UNet3DConditionModel"  # what the original code writes (not diffusers' ModelScope model)
BLOCKS_2D_TO_3D = {
    "CrossAttnDownBlock2D": "CrossAttnDownBlock3D",
    "DownBlock2D": "DownBlock3D",
    "UNetMidBlock2DCrossAttn": "UNetMidBlock3DCrossAttn",
    "UpBlock2D": "UpBlock3D",
    "CrossAttnUpBlock2D": "CrossAttnUpBlock3D",
}
BLOCKS_3D_TO_2D = {v: k for k, v in BLOCKS_2D_TO_3D.items()}
_BLOCK_KEYS = ("down_block_types", "up_block_types", "mid_block_type")
WEIGHTS_BIN = "diffusion_pytorch_model.bin"
WEIGHTS_SAFE = "diffusion_pytorch_model.safetensors"
_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")


class CheckpointError(ReAtCoError, ValueError):
    """A UNet checkpoint that does not match the model (keys, block types, missing files)."""


def is_temporal_key(key: str) -> bool:
    return ".attn_temp." in key or ".norm_temp." in key


# ----------------------------------------------------------------------------- config

def _map_blocks(config: dict, mapping: dict, what: str) -> dict:
    out = dict(config)
    for key in _BLOCK_KEYS:
        value = config.get(key)
        if value is None:
            continue
        names = [value] if isinstance(value, str) else list(value)
        unknown = [n for n in names if n not in mapping]
        if unknown:
            raise CheckpointError(f"{key} has block types {unknown} with no {what} counterpart; supported: {sorted(mapping)}")
        mapped = [mapping[n] for n in names]
        out[key] = mapped[0] if isinstance(value, str) else mapped
    return out


def to_tav_config(config: dict) -> dict:
    """A 2-D UNet config as the original Tune-A-Video code saves it."""
    out = {k: v for k, v in config.items() if not k.startswith("_")}
    out = _map_blocks(out, BLOCKS_2D_TO_3D, "Tune-A-Video (*3D)")
    import diffusers

    return {"_class_name": TAV_CLASS_NAME, "_diffusers_version": diffusers.__version__, **out}


def is_tav_config(config: dict) -> bool:
    names = [config.get("mid_block_type") or ""] + list(config.get("down_block_types") or []) + list(config.get("up_block_types") or [])
    return config.get("_class_name") == TAV_CLASS_NAME or any(n in BLOCKS_3D_TO_2D for n in names)


def to_2d_config(config: dict) -> tuple[dict, bool]:
    """(UNet2DConditionModel config, whether the file was a Tune-A-Video checkpoint).

    Keys UNet2DConditionModel does not take (an old diffusers' extras, `_name_or_path`…) are dropped."""
    tav = is_tav_config(config)
    if tav:
        config = _map_blocks(config, BLOCKS_3D_TO_2D, "2-D")
    elif config.get("_class_name") not in (None, "UNet2DConditionModel", "TuneAVideoUNet"):
        raise CheckpointError(f"expected a UNet2DConditionModel or a Tune-A-Video UNet3DConditionModel, got {config.get('_class_name')!r}")
    accepted = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    dropped = sorted(k for k in config if k not in accepted and not k.startswith("_"))
    if dropped:
        logger.info("ignoring UNet config keys this diffusers version does not take: %s", dropped)
    return {k: v for k, v in config.items() if k in accepted}, tav


# ----------------------------------------------------------------------------- files

def split_hub_kwargs(kwargs: dict) -> dict:
    """The hub download options among the keyword arguments (diffusers passes many others)."""
    return {k: kwargs[k] for k in _HUB_KWARGS if kwargs.get(k) is not None}


def resolve_file(location: str, filename: str, subfolder: str | None, hub_kwargs: dict) -> str | None:
    """Path of `filename` in a local folder, or downloaded from a hub repo; None if it is absent."""
    location = os.fspath(location)
    if os.path.isdir(location):
        path = os.path.join(location, subfolder or "", filename)
        return path if os.path.isfile(path) else None
    if os.path.exists(location) or location.startswith((".", "/", "~")) or location.count("/") > 1:  # hub ids: owner/name
        raise CheckpointError(f"{location} is not a folder (expected a UNet folder or a hub id like 'owner/name')")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(location, filename, subfolder=subfolder or None, **hub_kwargs)
    except EntryNotFoundError as err:
        if not isinstance(err, LocalEntryNotFoundError):  # the repo has no such file
            return None
        raise OSError(f"{filename} of {location!r} is not in the local hub cache and the hub cannot be reached "
                      f"(offline or local_files_only); give a local folder") from err
    except Exception as err:  # offline, unknown repo, gated, network
        where = f"{location}/{subfolder}" if subfolder else location
        raise OSError(f"cannot fetch {filename} of {where!r} from the Hugging Face hub ({type(err).__name__}: {err}); "
                      f"give a local folder or check the id and the connection") from err


def weight_candidates(variant: str | None = None, use_safetensors: bool | None = None) -> list[str]:
    def name(base: str) -> str:
        stem, ext = base.rsplit(".", 1)
        return f"{stem}.{variant}.{ext}" if variant else base

    safe = [name(WEIGHTS_SAFE), name(WEIGHTS_SAFE) + ".index.json"]
    pickle = [name(WEIGHTS_BIN), name(WEIGHTS_BIN) + ".index.json"]
    if use_safetensors is True:
        return safe
    if use_safetensors is False:
        return pickle
    return safe + pickle


def read_state_dict(path: str, fetch=None) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .bin file (pickles with weights_only=True), or of the shards an
    index.json names (`fetch(shard_name) -> path` resolves them)."""
    if path.endswith(".index.json"):
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        fetch = fetch or (lambda shard: os.path.join(os.path.dirname(path), shard))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(fetch(shard)))
        return state
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or damaged files raise many types (zip, pickle, safetensors)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is damaged or truncated ({first}); copy or save it again") from err


def load_weights(location: str, subfolder: str | None, hub_kwargs: dict, variant=None, use_safetensors=None) -> tuple[dict, str]:
    """(state dict, file) of the first weight file present."""
    tried = weight_candidates(variant, use_safetensors)
    for name in tried:
        path = resolve_file(location, name, subfolder, hub_kwargs)
        if path is not None:
            fetch = lambda shard: resolve_file(location, shard, subfolder, hub_kwargs)  # noqa: E731
            return read_state_dict(path, fetch), path
    where = os.path.join(os.fspath(location), subfolder or "")
    raise CheckpointError(f"no UNet weights in {where}: tried {tried}")


def check_keys(expected: set[str], found: set[str], source: str) -> None:
    """Strict key match with a readable report."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if not (missing or unexpected):
        return

    def show(keys):
        return ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")

    lines = [f"{source} does not match the Tune-A-Video UNet:"]
    if missing:
        lines.append(f"  missing keys: {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys: {show(unexpected)}")
    if any("temp_conv" in k or "transformer_in" in k for k in unexpected):
        lines.append("  (these look like diffusers' ModelScope UNet3DConditionModel, a different network)")
    raise CheckpointError("\n".join(lines))


def write_checkpoint(save_directory: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor], safe_serialization: bool) -> str:
    """config.json + fp32 weights; a weight file of the other format is removed so that a later
    load cannot pick up stale weights."""
    os.makedirs(save_directory, exist_ok=True)
    with open(os.path.join(save_directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    fp32 = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    name, stale = (WEIGHTS_SAFE, WEIGHTS_BIN) if safe_serialization else (WEIGHTS_BIN, WEIGHTS_SAFE)
    path = os.path.join(save_directory, name)
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(fp32, path, metadata={"format": "pt"})
    else:
        torch.save(fp32, path)
    if os.path.exists(os.path.join(save_directory, stale)):
        os.remove(os.path.join(save_directory, stale))
    return path
