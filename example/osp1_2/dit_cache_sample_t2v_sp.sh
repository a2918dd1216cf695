#!/bin/bash
# Sample Open-Sora-Plan v1.2 videos with a searched DiT cache config (paths in osp_model.sh).
source "$(dirname "$0")/osp_model.sh"
torchrun --nnodes=1 --nproc_per_node "$NPROC" --master_port 29503 \
    -m example.osp1_2.sample_t2v_sp "${OSP_ARGS[@]}" \
    --num_sampling_steps 100 \
    --save_img_path ./sample_video_test \
    --fps 24 \
    --dit_cache_config ./dit_cache_config.json \
    "$@"
