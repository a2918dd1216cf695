#!/bin/bash
# Search a DiT cache config for Open-Sora-Plan v1.2 (paths in osp_model.sh).
source "$(dirname "$0")/osp_model.sh"
torchrun --nnodes=1 --nproc_per_node "$NPROC" --master_port 29503 \
    -m example.osp1_2.search_t2v_sp "${OSP_ARGS[@]}" \
    --num_sampling_steps 100 \
    --search_type dit_cache \
    --cache_ratio 1.3 \
    --cache_save_path ./dit_cache_config.json \
    "$@"
