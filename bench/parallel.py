"""Processes benchmark: cache search and sequence-parallel sampling with 1 and 2 processes.

Both run the torchrun samplers on the bundled model, interleaving the 1- and 2-process runs; the
figure is the median of per-repeat ratios (1-process time / 2-process time). Search time is the
search's own wall time (from its report; the journal is off so every run is made); sampling time is
the time the sampler logs for making the videos (process start-up and model loading excluded).

By default every process gets what torchrun gives it (one process: all cores; two: one thread
each), i.e. the same machine split in two. ``--threads-per-process 1`` gives each process one
thread in both cases: one device per process, as with one GPU or NPU per rank.

    python bench/parallel.py --repeats 3
    python bench/parallel.py --repeats 3 --threads-per-process 1
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red circle moving right", "a blue square moving up", "a yellow triangle moving left",
           "a white circle moving down"]


def torchrun(module: str, args: List[str], processes: int, threads: Optional[int]) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29400 + os.getpid() % 500), "-m", module, *args]
    env = {**os.environ, "PYTHONPATH": ROOT}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result.stderr + result.stdout


def search_seconds(processes: int, steps: int, folder: str, threads: Optional[int]) -> float:
    config = os.path.join(folder, f"search{processes}.json")
    journal = os.path.join(folder, f"journal{processes}-{os.urandom(4).hex()}")
    torchrun("samplers.search_t2v_sp", ["--text_prompt", *PROMPTS[:2], "--num_sampling_steps", str(steps),
                                        "--cache_ratio", "1.5", "--candidates_to_run", "4", "--cache_save_path", config,
                                        "--journal_dir", journal],
             processes, threads)
    with open(os.path.splitext(config)[0] + ".search.json", "r", encoding="utf-8") as handle:
        report = json.load(handle)
    return report["seconds"]


def sample_seconds(processes: int, steps: int, folder: str, threads: Optional[int]) -> float:
    log = torchrun("samplers.sample_t2v_sp", ["--text_prompt", *PROMPTS, "--num_sampling_steps", str(steps),
                                              "--save_img_path", os.path.join(folder, f"videos{processes}")],
                   processes, threads)
    return float(re.search(r"videos in ([0-9.]+) s on", log).group(1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--search-steps", type=int, default=20)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--threads-per-process", type=int, help="default: as torchrun sets them")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, measure, steps in (("cache search (1.5x, 4 candidates, 2 prompts)", search_seconds, args.search_steps),
                                     ("sequence-parallel sampling (4 prompts)", sample_seconds, args.sample_steps)):
            one, two = [], []
            for repeat in range(args.repeats):
                order = (1, 2) if repeat % 2 == 0 else (2, 1)
                times = {p: measure(p, steps, folder, args.threads_per_process) for p in order}
                one.append(times[1])
                two.append(times[2])
            ratio = statistics.median(a / b for a, b in zip(one, two))
            rows.append((name, steps, statistics.median(one), statistics.median(two), ratio))
    print("| what | steps | 1 process (s) | 2 processes (s) | speedup |")
    print("| --- | --- | --- | --- | --- |")
    for name, steps, one, two, ratio in rows:
        print(f"| {name} | {steps} | {one:.1f} | {two:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
