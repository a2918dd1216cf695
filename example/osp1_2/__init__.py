"""Open-Sora-Plan v1.2 entry points of the spec, thin wrappers over :mod:`ditcache.samplers`."""
