"""Every diffusers DiT family (tiny seeded random models, real schedulers, real loops), found without a block path."""
import pytest
import torch

from ditcache import DitCacheAdaptor, DitCacheConfig, DitCacheSearchConfig, dit_cache
from ditcache import steps
from families import FAMILIES, FAMILIES_BY_NAME, STEPS, FamilyPipe

# steps 0-1 run everything, 2, 4, 6 store, 3, 5, 7 reuse the whole chain
START, INTERVAL = 2, 2
COMPUTED_STEPS = {0, 1, 2, 4, 6}


def _steps_each_block_ran(blocks):
    """The steps at which any module inside each block ran while the block was called.

    (A model may use a block's submodule outside the block: DiT embeds the
    class label with block 0's norm; that is not the block running.)
    """
    ran = [set() for _ in blocks]
    inside = []

    def enter(index):
        def hook(module, args):
            inside.append(index)
        return hook

    def leave(module, args, output):
        inside.pop()

    def runs(index):
        def hook(module, args):
            if inside and inside[-1] == index:
                ran[index].add(steps.current_step())
        return hook

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(enter(i)))
        handles.append(block.register_forward_hook(leave))
        handles.extend(sub.register_forward_pre_hook(runs(i)) for sub in block.modules() if sub is not block)
    return ran, handles


@pytest.mark.slow
@pytest.mark.parametrize("name", [family.name for family in FAMILIES])
def test_family_whole_chain(name):
    family = FAMILIES_BY_NAME[name]
    pipe = FamilyPipe(family)
    before = {key: value.clone() for key, value in pipe.transformer.state_dict().items()}
    reference = pipe()

    with dit_cache(pipe, None) as adaptor:
        assert torch.equal(pipe(), reference)
        chain = adaptor.chain
    assert chain.paths == tuple(f"transformer.{path}" for path in family.lists)
    assert sum(len(blocks) for blocks in chain.lists) == len(chain)

    config = DitCacheConfig(cache_step_start=START, cache_step_interval=INTERVAL, cache_block_start=0,
                            cache_num_blocks=len(chain), num_sampling_steps=STEPS)
    ran, handles = _steps_each_block_ran(chain.blocks)
    try:
        with dit_cache(pipe, config):
            cached = pipe()
    finally:
        for handle in handles:
            handle.remove()
    assert all(seen == COMPUTED_STEPS for seen in ran), [sorted(seen) for seen in ran]
    assert torch.isfinite(cached).all()
    error = ((cached - reference).norm() / reference.norm()).item()
    assert 0 < error < family.tolerance, error

    assert all("forward" not in block.__dict__ for block in chain.blocks)
    after = pipe.transformer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)
    assert torch.equal(pipe(), reference)


def _frames(pipe):
    """The latents as one small uint8 'video' for the search's PSNR."""
    pixels = pipe().reshape(1, -1)[:, :64].reshape(1, 8, 8, 1).repeat(1, 1, 1, 3)
    return [((pixels.clamp(-3, 3) + 3) / 6 * 255).round().to(torch.uint8).numpy()]


@pytest.mark.slow
def test_search_spans_the_chain_and_refuses_a_chain_whose_streams_change():
    pipe = FamilyPipe(FAMILIES_BY_NAME["Flux"])
    search = DitCacheSearchConfig(cache_ratio=1.3, num_sampling_steps=STEPS, candidates_to_run=1, num_hidden_states=2)
    adaptor = DitCacheAdaptor(pipe, search)
    try:
        adaptor.search(_frames)
        configs = [run.config for run in adaptor.last_search.runs]
    finally:
        adaptor.remove()
    # Flux's chain: 2 double blocks, then 2 single blocks; the runs include regions over both
    assert any(c.cache_block_start < 2 <= c.cache_block_end for c in configs)

    pipe = FamilyPipe(FAMILIES_BY_NAME["Flux2"])
    adaptor = DitCacheAdaptor(pipe, search)
    try:
        with pytest.raises(ValueError, match="carry the streams of the first"):
            adaptor.search(_frames)
    finally:
        adaptor.remove()
