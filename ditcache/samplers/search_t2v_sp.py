"""Search a DiT cache config (``--search_type dit_cache``) or a timestep schedule (``restep``).

    torchrun --nproc_per_node 2 -m ditcache.samplers.search_t2v_sp --text_prompt prompts.txt \
        --search_type dit_cache --cache_ratio 1.5 --cache_save_path dit_cache_config.json

With several processes and a model that fits on one device, the cache
search's candidate runs are spread over the processes (each holds the whole
model); rank 0 writes the config, the table of runs and the plot.
"""
from __future__ import annotations

import logging
from typing import List, Optional

from ditcache import DitCacheAdaptor
from ditcache.distributed import barrier, destroy, init_distributed

from .args import parse
from .backends import make_backend

logger = logging.getLogger("ditcache.samplers")


def search_dit_cache(args, context) -> None:
    # Each process holds the whole bundled model, so candidate runs can be spread over them.
    backend = make_backend(args, context, split_tokens=False)
    adaptor = DitCacheAdaptor(backend.pipeline, args.search_config, backend.block_path)
    try:
        with backend.parallel():
            adaptor.search(lambda pipeline: backend.generate_each(args.prompts, args.timesteps), prompts_num=len(args.prompts),
                           sequence_parallel=backend.sequence_parallel)
    finally:
        adaptor.remove()
    report = adaptor.last_search
    if context.is_main:
        print(report.table())
        print(report.summary())
        for path in report.save(args.cache_save_path):
            logger.info("wrote %s", path)
    barrier()  # no rank tears the process group down while rank 0 still writes


def search_restep(args, context) -> None:
    from ditcache.restep import ReStepAdaptor

    if context.is_main:  # the schedule search runs on one process; the others wait for it
        backend = make_backend(args, context, split_tokens=False)
        schedule = ReStepAdaptor(backend.pipeline, args.restep_config).search()
        logger.info("searched schedule (t/1000, ascending): %s", schedule)
    barrier()


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse("search", argv)
    context = init_distributed(args.device, args.timeout)
    try:
        if args.search_type == "dit_cache":
            search_dit_cache(args, context)
        else:
            search_restep(args, context)
    finally:
        destroy()


if __name__ == "__main__":
    main()
