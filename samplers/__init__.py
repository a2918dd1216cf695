"""Checkout entry points: ``python -m samplers.sample_t2v_sp`` / ``samplers.search_t2v_sp`` run
:mod:`ditcache.samplers` (not installed: installed users run ``ditcache-sample-t2v-sp`` / ``ditcache-search-t2v-sp``)."""
