"""ditcache: training-free speedups for Diffusion Transformer sampling."""
