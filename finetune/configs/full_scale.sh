#!/usr/bin/env bash
# Full-scale PathAsst training (8 x 80 GB GPUs, one node). Paths are examples; see finetune/README.md.
set -euo pipefail
PATHCAP=${PATHCAP:-/data/pathcap}                 # data.json + images/ (207k pairs)
PATHINSTRUCT=${PATHINSTRUCT:-/data/pathinstruct/pathinstruct.json}
IMAGES=${IMAGES:-/data/pathinstruct/images}
VICUNA=${VICUNA:-/models/vicuna-13b-v1.5}
OUT=${OUT:-/runs/pathasst}
ACC="accelerate launch --config_file finetune/configs/accelerate_zero3_8gpu.yaml"

# 0. tool-invocation data (CPU, seconds) and data checks
pathasst-train data tools --out "$OUT/tooldata"
pathasst-train data check-pathcap "$PATHCAP"
pathasst-train data check-conversations "$PATHINSTRUCT" --image-root "$IMAGES"

# 1. PathCLIP: contrastive fine-tuning of ViT-B-16 (QuickGELU) from a CLIP/PathCLIP checkpoint
#    (reference loop; for multi-node runs use open_clip_train with the same data exported to CSV)
python -m pathasst.finetune.clip --data "$PATHCAP" --out "$OUT/pathclip" --model ViT-B-16 \
  --checkpoint /models/pathclip-base.pt --epochs 10 --batch-size 256 --lr 1e-5 --augment --val-fraction 0.01

# 2. Stage 1: projector alignment on captions (LM and vision frozen), 1 epoch, lr 1e-3
$ACC -m pathasst.finetune.vlm.train --stage 1 --out "$OUT/stage1" --data "$PATHCAP" --lm "$VICUNA" --bf16 \
  --vision-checkpoint "$OUT/pathclip/pathclip.pt" --projector mlp2x_gelu \
  --epochs 1 --batch-size 4 --grad-accum 4 --lr 1e-3 --max-length 2048

# 3. Stage 2: instruction tuning on PathInstruct + tool-invocation data; full fine-tuning (lr 2e-5) ...
$ACC -m pathasst.finetune.vlm.train --stage 2 --from "$OUT/stage1" --out "$OUT/stage2" --bf16 \
  --conversations "$PATHINSTRUCT" --image-root "$IMAGES" --data "$PATHCAP" --tool-samples 20000 \
  --epochs 3 --batch-size 4 --grad-accum 4 --lr 2e-5 --max-length 2048
#    ... or LoRA (r=64, lr 2e-4): add --lora --lora-r 64 and use --out "$OUT/stage2-lora"

# 4. Export the language model for llama.cpp (merge LoRA if any) and serve it with the llamacpp/openai planners
pathasst-train export --vlm "$OUT/stage2" --gguf "$OUT/pathasst-13b-f32.gguf" --merged-dir "$OUT/merged"
