"""torchrun entry points: ``python -m samplers.sample_t2v_sp`` and ``python -m samplers.search_t2v_sp``."""
