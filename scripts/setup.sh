#!/usr/bin/env bash
# Install voxlink and everything it needs on a Debian machine (Python 3.11), into ./.venv.
#   bash scripts/setup.sh            # system packages + venv + voxlink (+ pytest)
# Idempotent: a second run only checks. Needs root or sudo for the system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# System libraries: OSMesa (headless OpenGL for the renderer), OpenJPEG (JPEG 2000 via glymur),
# libGL, Chromium and its driver (the viewer's browser test), and venv support for Debian's python3.
PKGS="libosmesa6 libopenjp2-7 libgl1 libglib2.0-0 chromium chromium-driver"
if ! python3 -m venv --help >/dev/null 2>&1; then PKGS="$PKGS python3-venv"; fi
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing system packages:$missing"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
PY=.venv/bin/python
"$PY" -m pip install -q --upgrade pip >/dev/null
# torch is pinned to the CPU build's version: an unpinned torch would pull CUDA packages.
"$PY" -m pip install -q "torch==2.13.0"
# everything: the runtime core + the edge, ground and lab extras + the test tools (a drone needs only
# `pip install "voxlink[edge]"`, which brings no PyTorch)
"$PY" -m pip install -q -e ".[all,test]"
# pyrender pins PyOpenGL==3.1.0, which cannot create an OSMesa context; its other dependencies are
# in pyproject.toml, so it goes in without its own pins.
"$PY" -m pip install -q --no-deps "pyrender==0.1.45"
"$PY" - <<'PYCHECK'
import os
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
import torch, voxlink
from voxlink.data.render import Renderer
Renderer(16).close()
print(f"voxlink {voxlink.__version__} ready (torch {torch.__version__}, OSMesa renderer OK)")
PYCHECK
