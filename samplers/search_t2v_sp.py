"""``torchrun ... -m samplers.search_t2v_sp``: :mod:`ditcache.samplers.search_t2v_sp` run from a checkout."""
from ditcache.samplers.search_t2v_sp import main

if __name__ == "__main__":
    main()
