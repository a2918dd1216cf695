#!/bin/bash
# Search a DiT cache config for Open-Sora-Plan v1.2 (29x480p). Set the paths; NPROC processes on one node.
# Without --model_path (and the Open-Sora-Plan flags) it runs on the bundled model instead.
NPROC=${NPROC:-8}
torchrun --nnodes=1 --nproc_per_node "$NPROC" --master_port 29503 \
    -m example.osp1_2.search_t2v_sp \
    --model_path /path/to/checkpoint-xxx/model_ema \
    --ae CausalVAEModel_4x8x8 \
    --ae_path /path/to/causalvideovae \
    --text_encoder_name google/mt5-xxl \
    --num_frames 29 \
    --height 480 \
    --width 640 \
    --num_sampling_steps 100 \
    --guidance_scale 7.5 \
    --sample_method EulerAncestralDiscrete \
    --text_prompt examples/prompt_list_0.txt \
    --search_type dit_cache \
    --cache_ratio 1.3 \
    --cache_save_path ./dit_cache_config.json \
    "$@"
