"""``torchrun ... -m example.osp1_2.search_t2v_sp``: the spec's name for :mod:`ditcache.samplers.search_t2v_sp`."""
from ditcache.samplers.search_t2v_sp import main

if __name__ == "__main__":
    main()
