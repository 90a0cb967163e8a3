#!/usr/bin/env bash
# The prepared device check (issue 21): the torch attribution backend on a CUDA device against
# the C core on the host, then a timing table, printed as markdown. At most ~8 minutes on one
# H100 from a bare machine.
#
#   bash benchmarks/device_check.sh                 # on the device machine: install, check, time
#   DEVICE=cpu bash benchmarks/device_check.sh --quick   # here: the correctness half on the CPU
#   bash benchmarks/device_check.sh --fetch-wheels  # here, before: fill benchmarks/wheels/
#
# Installing on a bare machine (no network there): the machine's own Python with a CUDA torch
# is used (a venv with --system-site-packages in $VENV, default /tmp/ltt-device-venv); the other
# packages come from the wheel folder $WHEELS (default benchmarks/wheels, git-ignored: carry it
# with the tree, e.g. run(carry=["benchmarks/wheels"])), which --fetch-wheels fills here with
# `pip download` (torch excluded: the device has its own CUDA build). The tree itself is then
# installed from source (`pip install --no-build-isolation --no-deps -e .`, needs a C compiler).
# The wheels are for CPython 3.12 (--python-version; change it to the device's). Without the
# demo model's wheel (too large to carry) the demo rows use random weights of its shape.
# Where the venv of this tree (.venv) already exists and imports a CUDA torch, it is used as is.
#
# Options: --quick (correctness on the tiny families only), DEVICE (default cuda),
# DEMO_LENGTHS / LENGTHS_7B (default "512 2048 8192" / "2048 4096").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WHEELS=${WHEELS:-$ROOT/benchmarks/wheels}
VENV=${VENV:-/tmp/ltt-device-venv}
DEVICE=${DEVICE:-cuda}
PKGS="transformers>=4.56,<6 tokenizers safetensors accelerate>=1.0 gguf>=0.10 scipy-openblas32==0.3.34.481.3 tqdm anywidget>=0.9 traitlets numpy setuptools wheel"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p "$WHEELS"
    # everything but torch and its CUDA libraries (the device machine brings its own)
    python3 -m pip download -q -d "$WHEELS" --only-binary=:all: --python-version 3.12 $PKGS --no-deps
    python3 -m pip download -q -d "$WHEELS" --only-binary=:all: --python-version 3.12 \
        huggingface_hub pyyaml regex filelock packaging fsspec typing-extensions requests idna certifi \
        charset-normalizer urllib3 psutil ipywidgets widgetsnbextension jupyterlab-widgets comm \
        psygnal httpx httpcore h11 anyio sniffio hf-xet click typer shellingham rich markdown-it-py mdurl \
        pygments tokenizers --no-deps
    # the demo model's wheel (93 MB) is over the 64 MiB a run may carry: without it the check
    # times a random model of the demo's shape (SmolLM2-135M: 30 layers, 9 heads, 3 kv, d=576)
    du -sh "$WHEELS"
    exit 0
fi

QUICK=()
[[ "${1:-}" == "--quick" ]] && QUICK=(--quick)

start=$(date +%s)
py=""
if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch, ltt._core" 2>/dev/null; then
    py=.venv/bin/python
    if [[ "$DEVICE" == cuda* ]] && ! $py -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        py=""   # the CPU venv of this machine is of no use on the device
    fi
fi
if [[ -z "$py" ]]; then
    SYS=${PYTHON:-python3}
    $SYS -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || {
        echo "device_check: no torch in $SYS; install a CUDA torch or set PYTHON" >&2; exit 2; }
    [[ -x "$VENV/bin/python" ]] || $SYS -m venv --system-site-packages "$VENV"
    py="$VENV/bin/python"
    if [[ -d "$WHEELS" ]]; then
        $py -m pip install -q --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl 2>&1 | tail -3 || true
    else
        echo "device_check: no wheel folder $WHEELS (bash benchmarks/device_check.sh --fetch-wheels, then carry it);" \
             "using what the machine has" >&2
    fi
    $py -m pip install -q --no-index --no-build-isolation --no-deps -e . 2>&1 | tail -3
fi
echo "device_check: python $py, set up in $(( $(date +%s) - start )) s"
$py -c "import ltt, torch, transformers; print('ltt', ltt.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"

ARGS=(--device "$DEVICE" "${QUICK[@]}")
[[ -n "${DEMO_LENGTHS:-}" ]] && ARGS+=(--demo-lengths $DEMO_LENGTHS)
[[ -n "${LENGTHS_7B:-}" ]] && ARGS+=(--7b-lengths $LENGTHS_7B)
export LTT_QUIET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
set +e
$py benchmarks/device_check.py "${ARGS[@]}" 2>&1 | grep -v '^\[transformers\]\|^WARNING\|^Loading weights\|^Writing model'
rc=${PIPESTATUS[0]}
echo "device_check: done in $(( $(date +%s) - start )) s (exit $rc)"
exit "$rc"
