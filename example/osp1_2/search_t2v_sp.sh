#!/bin/bash
# Search sampling timesteps (ReStep) for Open-Sora-Plan v1.2 from calibration videos made by an uncached
# sample_t2v_sp run (its --save_img_path holds prompts.json beside the videos). Paths in osp_model.sh.
source "$(dirname "$0")/osp_model.sh"
torchrun --nnodes=1 --nproc_per_node 1 --master_port 29503 \
    -m example.osp1_2.search_t2v_sp "${OSP_ARGS[@]}" \
    --num_sampling_steps 50 \
    --search_type restep \
    --videos_path ./sample_video_test \
    --save_dir ./searched_results \
    --neighbour_type uniform \
    --monte_carlo_iters 5 \
    "$@"
