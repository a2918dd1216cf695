"""The cache mechanism: the region's state and patched forwards, and the reuse rules."""
