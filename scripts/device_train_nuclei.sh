#!/usr/bin/env bash
# Train one nuclei-network member on a bare GPU machine that has python3 with torch, numpy, scipy, scikit-image and
# Pillow but no network and no installed pathasst (the `device` tool's H200, or any CUDA box). Two steps:
#
#   bash scripts/device_train_nuclei.sh prepare   # here, with the package registry reachable: copies the CoNSeP
#                                                  # tiles to .data/ and the pydantic wheels to .whl/ (both ignored)
#   bash scripts/device_train_nuclei.sh train      # there, from the repository root (carry .data and .whl);
#                                                  # writes $OUT/nuclei_net.pt, $OUT/last.pt and $OUT/train.log
#
# Then, back here: tune the post-processing on the CPU and score it on the tuning tiles,
#   python -m pathasst.finetune.nuclei_net --data ../shared/data/consep_train --tune-only OUT/nuclei_net.pt
# Settings (environment): MINUTES (default 7), WIDTHS ("48 96 192 384 512", ~6.5 M parameters, a 13 MB fp16
# checkpoint: the device tool returns files up to 16 MB), BATCH (16), LR (2e-3), SEED (0), WORKERS (cores - 2),
# DEVICE (auto), VAL_EVERY (minutes, 1), DATA (.data/consep_train), OUT ($OUT or runs/gpu), PYTHON (python3),
# EXTRA (more trainer flags, e.g. "--max-steps 5 --limit 8" for a smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

case "${1:-}" in
prepare)
    src=${SHARED_DATA:-../shared/data}/consep_train
    [ -d "$src/instances" ] || { echo "no CoNSeP tiles at $src (set SHARED_DATA)" >&2; exit 2; }
    mkdir -p .git/info
    for d in /.data/ /.whl/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
    rm -rf .data/consep_train && mkdir -p .data && cp -r "$src" .data/consep_train
    rm -rf .whl && mkdir -p .whl
    pkgs=$($PY - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection",
                                              "typing-extensions")))
EOF
)
    # shellcheck disable=SC2086
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $pkgs
    du -sh .data .whl
    echo "prepared: run 'bash scripts/device_train_nuclei.sh train' there, carrying .data and .whl"
    ;;
train)
    DATA=${DATA:-.data/consep_train}
    OUTDIR=${OUT:-runs/gpu}
    [ -d "$DATA/instances" ] || { echo "no CoNSeP tiles at $DATA (run 'prepare' here and carry .data)" >&2; exit 2; }
    mkdir -p "$OUTDIR"
    # pathasst importable from this checkout without installing it: a namespace package of links to its folders
    pkg=$(mktemp -d)
    mkdir -p "$pkg/pathasst"
    for d in agent tools graphs memory finetune ui; do ln -s "$PWD/$d" "$pkg/pathasst/$d"; done
    export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    if ! $PY -c "import pydantic" 2>/dev/null; then
        ls .whl/*.whl >/dev/null 2>&1 || { echo "pydantic is missing and there is no .whl folder" >&2; exit 2; }
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$pkg/site" .whl/*.whl
        export PYTHONPATH="$pkg/site:$PYTHONPATH"
    fi
    cores=$(nproc)
    workers=${WORKERS:-$(( cores > 3 ? cores - 2 : 1 ))}
    $PY -c "import pathasst.finetune.nuclei_net as m, torch; print('trainer', m.__file__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())" \
        | tee "$OUTDIR/train.log"
    # shellcheck disable=SC2086
    $PY -m pathasst.finetune.nuclei_net --data "$DATA" --out "$OUTDIR" --minutes "${MINUTES:-7}" \
        --device "${DEVICE:-auto}" --workers "$workers" --batch "${BATCH:-16}" --lr "${LR:-2e-3}" \
        --seed "${SEED:-0}" --widths ${WIDTHS:-48 96 192 384 512} --val-every "${VAL_EVERY:-1}" --bf16 --no-tune \
        --threads 2 ${EXTRA:-} 2>&1 | tee -a "$OUTDIR/train.log"
    ls -la "$OUTDIR"
    ;;
*)
    echo "usage: bash scripts/device_train_nuclei.sh prepare|train" >&2
    exit 2
    ;;
esac
