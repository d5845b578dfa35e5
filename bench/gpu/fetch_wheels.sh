#!/usr/bin/env bash
# Run HERE (a machine with the package registry), before a device call: downloads into .gpu-wheels/ the
# few pure dependencies of the scoring engine and the bench that the GPU machine's image lacks, built for
# its Python (3.12, x86-64). torch, transformers, tokenizers, safetensors, peft, pytest and httpx come
# from the image itself. .gpu-wheels/ is git-ignored: name it in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
rm -rf .gpu-wheels
"$PY" -m pip download --quiet --dest .gpu-wheels --only-binary=:all: --no-deps \
    --python-version 3.12 --platform manylinux2014_x86_64 --implementation cp \
    "pydantic==$("$PY" -c 'import pydantic; print(pydantic.VERSION)')" \
    "pydantic-core==$("$PY" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
    "pydantic-settings==$("$PY" -c 'import importlib.metadata as m; print(m.version("pydantic-settings"))')" \
    annotated-types typing-inspection python-dotenv
ls -l .gpu-wheels
