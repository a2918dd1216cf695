"""Examples named as in the spec: ``python -m example.osp1_2.search_t2v_sp ...``."""
