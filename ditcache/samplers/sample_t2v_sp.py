"""Sample videos, optionally with a DiT cache config or a searched timestep schedule.

    torchrun --nproc_per_node 2 -m ditcache.samplers.sample_t2v_sp --text_prompt "a red circle moving right" \
        --dit_cache_config dit_cache_config.json --save_img_path out/

Several processes split each video's tokens (bundled model, Open-Sora-Plan) or
the prompts (diffusers pipelines); rank 0 writes the outputs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import List, Optional

from ditcache import dit_cache
from ditcache.distributed import barrier, destroy, init_distributed
from ditcache.timing import synchronize

from .args import parse
from .backends import make_backend
from .outputs import output_names, record_timing, write_outputs

logger = logging.getLogger("ditcache.samplers")


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse("sample", argv)
    cache_config, timesteps = args.cache_config, args.timesteps
    context = init_distributed(args.device, args.timeout)
    try:
        backend = make_backend(args, context)
        caching = dit_cache(backend.pipeline, cache_config, backend.block_path) if cache_config else contextlib.nullcontext()
        with backend.parallel(), caching:
            synchronize(context.device)
            started = time.perf_counter()
            videos = backend.generate_all(args.prompts, timesteps)
            synchronize(context.device)
            seconds = time.perf_counter() - started
        if context.is_main:
            tag = ("_dit_cache" if cache_config else "") + ("_restep" if timesteps is not None else "")
            guidance = args.guidance_scale if args.guidance_scale is not None else getattr(backend, "guidance", 0.0)
            names = output_names(args.sample_method, guidance, args.num_sampling_steps, len(videos), tag)
            paths = write_outputs(args.save_img_path, names, videos, args.prompts, args.fps)
            key = json.dumps([args.model_path, args.backend, args.sample_method, args.num_sampling_steps,
                              guidance, args.num_frames, args.height, args.width, args.prompts, timesteps is not None,
                              context.world_size])
            speedup = record_timing(args.save_img_path, key, seconds, cached=cache_config is not None)
            logger.info("%d videos in %.2f s on %d process(es); wrote %s", len(videos), seconds,
                        context.world_size, ", ".join(paths))
            if speedup is not None:
                logger.info("DiT cache speedup against the last uncached run of these settings: %.3fx", speedup)
        barrier()  # no rank tears the process group down while rank 0 still writes
    finally:
        destroy()


if __name__ == "__main__":
    main()
