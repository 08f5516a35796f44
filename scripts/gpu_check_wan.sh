#!/usr/bin/env bash
# Wan 2.1 costs measured on one GPU (issue 28, "Cost"): the whole 81 × 480 × 832 edit on Wan 2.1 1.3B
# (RAD on 25 of 50 steps + IRJS, two objects, gradient checkpointing, the text encoder off the GPU
# after encoding: the issue's configuration) against plain WanPipeline sampling of the same clip,
# random weights in bf16 (umT5-XXL's architecture as the text encoder). Prints each stage's seconds
# and peak GB, the edit / plain time against 1.6× and the edit's peak against 24 GB.
#
#   bash scripts/gpu_check_wan.sh                 # from the repository root; reports in $OUT (default gpu-check-wan/)
#   NO_CHECKPOINTING=1 bash scripts/gpu_check_wan.sh   # also the RAD pass's peak without checkpointing (4 steps: +2 min)
#
# Planned to take 6–7 min on one H100 (counted from FLOPs: ~0.8 s a 1.3B forward at 32,760
# tokens; not yet run on a GPU), within the 8 allowed; each run is cut off by `timeout` before that.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-wan}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| diffusers', diffusers.__version__)"
SECONDS=0
timeout 450 python -m reatco.commands.bench_wan --device cuda --arch 1.3B --steps 50 --warmup_steps 1 \
    --gradient_checkpointing --offload_text_encoder --out "$out/wan13b_checkpointed.json"
echo "[${SECONDS} s]"
if [[ "${NO_CHECKPOINTING:-0}" == 1 ]]; then
  # memory only: the un-checkpointed RAD pass keeps every block's activations up to block 14
  timeout 150 python -m reatco.commands.bench_wan --device cuda --arch 1.3B --steps 4 --warmup_steps 1 \
      --offload_text_encoder --out "$out/wan13b_not_checkpointed.json"
  echo "[${SECONDS} s]"
fi
