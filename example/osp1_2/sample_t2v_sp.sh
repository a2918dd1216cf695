#!/bin/bash
# Sample Open-Sora-Plan v1.2 videos with a searched timestep schedule (ReStep). Paths in osp_model.sh.
source "$(dirname "$0")/osp_model.sh"
torchrun --nnodes=1 --nproc_per_node "$NPROC" --master_port 29503 \
    -m example.osp1_2.sample_t2v_sp "${OSP_ARGS[@]}" \
    --save_img_path ./sample_video_test_restep \
    --fps 24 \
    --schedule_timestep ./searched_results/searched_schedule.txt \
    "$@"
