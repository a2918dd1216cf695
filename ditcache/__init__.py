"""ditcache: training-free speedups for Diffusion Transformer sampling.

The core (this namespace) needs only torch, numpy and tqdm.
"""
from .adaptor import DitCacheAdaptor
from .cache.blocks import register_family
from .cache.components import register_block_components
from .cache.output import register_output_head
from .component_config import ComponentCacheConfig
from .compile import compile_blocks
from .config import DitCacheConfig, DitCacheSearchConfig
from .context import dit_cache
from .steps import timestep_aware
from .streams import register_block_outputs

__all__ = [
    "ComponentCacheConfig",
    "DitCacheAdaptor",
    "DitCacheConfig",
    "DitCacheSearchConfig",
    "compile_blocks",
    "dit_cache",
    "register_block_components",
    "register_block_outputs",
    "register_family",
    "register_output_head",
    "timestep_aware",
]
__version__ = "0.1.0"
