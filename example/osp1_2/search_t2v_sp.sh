#!/bin/bash
# Search sampling timesteps (ReStep) for Open-Sora-Plan v1.2 from calibration videos made by an
# uncached sample_t2v_sp run (its --save_img_path, which holds prompts.json beside the videos).
NPROC=${NPROC:-1}
torchrun --nnodes=1 --nproc_per_node "$NPROC" --master_port 29503 \
    -m example.osp1_2.search_t2v_sp \
    --model_path /path/to/checkpoint-xxx/model_ema \
    --ae CausalVAEModel_4x8x8 \
    --ae_path /path/to/causalvideovae \
    --text_encoder_name google/mt5-xxl \
    --num_frames 29 \
    --height 480 \
    --width 640 \
    --text_prompt examples/prompt_list_0.txt \
    --num_sampling_steps 50 \
    --search_type restep \
    --videos_path /path/of/your/calibration_videos \
    --save_dir ./searched_results \
    --neighbour_type uniform \
    --monte_carlo_iters 5 \
    "$@"
