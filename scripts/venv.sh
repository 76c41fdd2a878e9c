# Sourced by demo.sh and test.sh: enter the project's .venv (made on first use) with the CPU
# build of torch that this machine kind keeps on disk; an unpinned `torch` would pull several GB
# of CUDA wheels from the registry.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" || python -m pip install -q torch
