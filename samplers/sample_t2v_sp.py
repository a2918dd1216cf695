"""``torchrun ... -m samplers.sample_t2v_sp``: :mod:`ditcache.samplers.sample_t2v_sp` run from a checkout."""
from ditcache.samplers.sample_t2v_sp import main

if __name__ == "__main__":
    main()
