#!/bin/bash
# Sourced by the scripts beside it: where the Open-Sora-Plan v1.2 checkpoint, VAE and text encoder are,
# and the 29x480p setting. Set these paths once here (or export them before running a script).
OSP_MODEL_PATH=${OSP_MODEL_PATH:-/path/to/checkpoint-xxx/model_ema}
OSP_AE_PATH=${OSP_AE_PATH:-/path/to/causalvideovae}
OSP_TEXT_ENCODER=${OSP_TEXT_ENCODER:-google/mt5-xxl}
OSP_PROMPTS=${OSP_PROMPTS:-examples/prompt_list_0.txt}
NPROC=${NPROC:-8}
OSP_ARGS=(
    --model_path "$OSP_MODEL_PATH"
    --model_type dit
    --ae CausalVAEModel_4x8x8
    --ae_path "$OSP_AE_PATH"
    --text_encoder_name "$OSP_TEXT_ENCODER"
    --num_frames 29
    --height 480
    --width 640
    --text_prompt "$OSP_PROMPTS"
    --guidance_scale 7.5
    --sample_method EulerAncestralDiscrete
)
