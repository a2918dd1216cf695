#!/bin/bash
# Sample Open-Sora-Plan v1.2 videos with a searched timestep schedule (ReStep).
NPROC=${NPROC:-8}
torchrun --nnodes=1 --nproc_per_node "$NPROC" --master_port 29503 \
    -m example.osp1_2.sample_t2v_sp \
    --model_path /path/to/checkpoint-xxx/model_ema \
    --ae CausalVAEModel_4x8x8 \
    --ae_path /path/to/causalvideovae \
    --text_encoder_name google/mt5-xxl \
    --num_frames 29 \
    --height 480 \
    --width 640 \
    --text_prompt examples/prompt_list_0.txt \
    --save_img_path ./sample_video_test \
    --fps 24 \
    --guidance_scale 7.5 \
    --num_sampling_steps 50 \
    --sample_method EulerAncestralDiscrete \
    --schedule_timestep ./searched_results/searched_schedule.txt \
    "$@"
