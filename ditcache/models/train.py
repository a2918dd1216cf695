"""Train the bundled moving-shapes model on CPU, resumably, and export the shippable weights.

    python -m ditcache.models.train --out /work/ckpt/bundled --minutes 90
    python -m ditcache.models.train --out /work/ckpt/bundled --resume --minutes 30
    python -m ditcache.models.train --out /work/ckpt/bundled --export ditcache/models/weights

Choices, and why:
- Clean-clip prediction (the transformer's head estimates x0, returned as v; see ``transformer.py``)
  with large patches: 64 tokens per clip keep a step cheap on a CPU, and a clean clip is something a
  token narrower than its patch can represent, where per-pixel noise is not.
- Loss: squared error of the clean estimate weighted by ``min(snr + 1, cap)``. The weight ``snr + 1``
  is what a plain v-loss puts on the clean-clip error; the cap (``--loss-weight-cap``, default 5)
  keeps the nearly-clean steps, trivial for an x0 head, from dominating, so the high-noise steps,
  which decide colour, shape and direction here, keep their share of the gradient.
- AdamW with linear warmup then a constant rate, and an EMA of the weights for export: the run's
  length is set by wall time, so the schedule must not depend on a planned number of steps.
- 10% caption dropout (empty prompt) so classifier-free guidance works.
- Every random draw comes from generators whose state is checkpointed, so ``--resume`` continues
  exactly where the run stopped (bit for bit when given the same ``--threads``).
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from .pipeline import NOISE_SCHEDULE, ShapesPipeline, encode_videos_to_latents, make_scheduler
from .shapes import sample_batch
from .text import ShapesTextEncoder, ShapesTokenizer
from .transformer import ShapesT2V

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.tsv"
# Settings a resumed run may change (e.g. to lower the learning rate); their defaults.
RESUME_OVERRIDES = {"lr": 5e-4, "loss_weight_cap": 5.0}


def build_models(args: argparse.Namespace) -> torch.nn.ModuleDict:
    transformer = ShapesT2V(
        num_attention_heads=args.heads,
        attention_head_dim=args.head_dim,
        num_layers=args.layers,
        patch_size_t=args.patch_t,
        patch_size=args.patch,
        caption_channels=args.text_dim,
        ff_inner_dim=args.ff_inner,
    )
    # Zero-initialised output projection, as DiT and PixArt do: training starts from a zero prediction.
    torch.nn.init.zeros_(transformer.proj_out.weight)
    torch.nn.init.zeros_(transformer.proj_out.bias)
    text_encoder = ShapesTextEncoder(dim=args.text_dim)
    return torch.nn.ModuleDict({"transformer": transformer, "text_encoder": text_encoder})


def lr_at(step: int, args: argparse.Namespace) -> float:
    return args.lr * min(1.0, (step + 1) / args.warmup)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)


def training_loss(
    models: torch.nn.ModuleDict,
    tokenizer: ShapesTokenizer,
    alphas_cumprod: torch.Tensor,
    clips: np.ndarray,
    prompts: List[str],
    gen: torch.Generator,
    args: argparse.Namespace,
) -> torch.Tensor:
    """Clean-clip error of one batch, weighted by ``min(snr + 1, args.loss_weight_cap)``."""
    x0 = encode_videos_to_latents(clips)
    batch = x0.shape[0]
    drop = torch.rand(batch, generator=gen) < args.caption_dropout
    prompts = ["" if d else p for d, p in zip(drop.tolist(), prompts)]
    t = torch.randint(0, len(alphas_cumprod), (batch,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = alphas_cumprod[t].view(batch, 1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    ids, mask = tokenizer(prompts)
    states = models["text_encoder"](ids, mask)
    v = models["transformer"](xt, timestep=t, encoder_hidden_states=states, encoder_attention_mask=mask)[0]
    x0_pred = a.sqrt() * xt - (1 - a).sqrt() * v  # exact inverse of the head's x0 -> v conversion
    per_sample = (x0_pred - x0).pow(2).mean(dim=(1, 2, 3, 4))
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return (per_sample * (snr + 1).clamp(max=args.loss_weight_cap)).mean()


def save_checkpoint(path: str, state: Dict) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def export(out: str, weights: str) -> None:
    """Write the EMA weights of the checkpoint in ``out`` as a loadable pipeline in ``weights``."""
    state = torch.load(os.path.join(out, CHECKPOINT), map_location="cpu", weights_only=False)
    args = argparse.Namespace(**state["args"])
    models = build_models(args)
    models.load_state_dict(state["ema"])
    pipe = ShapesPipeline(models["transformer"], models["text_encoder"], ShapesTokenizer(), make_scheduler())
    pipe.save_pretrained(weights)
    print(f"exported step {state['step']} (EMA) to {weights}")


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    tokenizer = ShapesTokenizer()
    scheduler = make_scheduler("ddim", NOISE_SCHEDULE)
    alphas_cumprod = scheduler.alphas_cumprod.float()

    if args.resume:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = dict(state["args"])
        for key in ("out", "resume", "minutes", "max_steps", "threads"):
            saved[key] = getattr(args, key)
        for key in RESUME_OVERRIDES:
            if getattr(args, key) is not None:
                saved[key] = getattr(args, key)
        args = argparse.Namespace(**saved)
    else:
        for key, default in RESUME_OVERRIDES.items():
            if getattr(args, key) is None:
                setattr(args, key, default)
        torch.manual_seed(args.seed)
        state = None
    models = build_models(args)
    ema = copy.deepcopy(models).requires_grad_(False)
    opt = torch.optim.AdamW(models.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    if state is not None:
        models.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_rng"])
        step = state["step"]
        print(f"resumed from step {step}")
    n_params = sum(p.numel() for p in models["transformer"].parameters())
    print(f"transformer parameters: {n_params / 1e6:.2f}M")

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": models.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": gen.get_state(),
                "step": step,
                "args": vars(args),
            },
        )

    log = open(os.path.join(args.out, LOG), "a")
    if step == 0:
        log.write("step\telapsed_s\tloss\tlr\tsamples_per_s\n")
    start = last_ckpt = last_log = time.time()
    running, count, window_start, window_steps = 0.0, 0, time.time(), 0
    models.train()
    while True:
        elapsed = time.time() - start
        if (args.minutes is not None and elapsed > args.minutes * 60) or (
            args.max_steps is not None and step >= args.max_steps
        ):
            break
        clips, prompts = sample_batch(args.batch_size, rng)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss = training_loss(models, tokenizer, alphas_cumprod, clips, prompts, gen, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), args.grad_clip)
        opt.step()
        ema_update(ema, models, step, args.ema_decay)
        step += 1
        running, count, window_steps = running + loss.item(), count + 1, window_steps + 1
        now = time.time()
        if now - last_log >= args.log_seconds:
            rate = window_steps * args.batch_size / (now - window_start)
            log.write(f"{step}\t{now - start:.0f}\t{running / count:.5f}\t{lr_at(step, args):.2e}\t{rate:.2f}\n")
            log.flush()
            running, count, window_start, window_steps, last_log = 0.0, 0, now, 0, now
        if now - last_ckpt >= args.checkpoint_minutes * 60:
            checkpoint()
            last_ckpt = now
    checkpoint()
    log.close()
    print(f"stopped at step {step}; checkpoint in {ckpt_path}")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ditcache.models.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/work/ckpt/bundled", help="checkpoint and log directory (outside the repo)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt")
    p.add_argument("--export", metavar="WEIGHTS_DIR", help="only export OUT's EMA weights to WEIGHTS_DIR")
    p.add_argument("--minutes", type=float, help="stop after this much wall time")
    p.add_argument("--max-steps", type=int, help="stop at this optimizer step")
    p.add_argument("--threads", type=int, default=1, help="1 is robust on a shared machine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, help="default 5e-4; with --resume, replaces the saved value")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.998)
    p.add_argument(
        "--loss-weight-cap", type=float, help="default 5 (see above); with --resume, replaces the saved value"
    )
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--patch-t", type=int, default=2)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--ff-inner", type=int, default=512)
    p.add_argument("--text-dim", type=int, default=64)
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--log-seconds", type=float, default=30.0)
    args = p.parse_args(argv)
    for name in ("batch_size", "warmup", "layers", "heads", "head_dim", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid: must be >= 1")
    if not 0.0 <= args.caption_dropout < 1.0:
        raise ValueError(f"--caption-dropout={args.caption_dropout} is invalid: must be in [0, 1)")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.export:
        export(args.out, args.export)
    else:
        train(args)


if __name__ == "__main__":
    main()
