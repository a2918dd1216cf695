"""``torchrun ... -m example.osp1_2.sample_t2v_sp``: the spec's name for :mod:`ditcache.samplers.sample_t2v_sp`."""
from ditcache.samplers.sample_t2v_sp import main

if __name__ == "__main__":
    main()
