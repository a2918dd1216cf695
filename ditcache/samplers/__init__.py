"""The torchrun samplers: ``python -m ditcache.samplers.search_t2v_sp`` and ``... .sample_t2v_sp``.

A front end over the library, like the ``ditcache`` command: ``import ditcache`` never imports it.
From a checkout the same entry points run as ``-m samplers.<name>`` and ``-m example.osp1_2.<name>``.
"""
