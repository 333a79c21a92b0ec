"""End model: the MiniLM YouTube-spam classifier trained on gold labels (quickstart) vs on label-model pseudolabels.

Runs the two shipped configs through the real CLI (same model, optimiser, epochs and seed; only the training labels
differ) and prints test accuracy / F1 on the gold test split, the ratio pseudo/gold, and the wall time of each run.

    python benchmarks/bench_end_model.py                  # seed 0, both configs
    python benchmarks/bench_end_model.py --seeds 0 1 2 --label-models moment_matching majority_vote
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("lightning-ws")


def run(config: str, seed: int, extra: list[str], workdir: Path) -> tuple[dict[str, float], float]:
    """One CLI fit (+ test); returns the test metrics and the wall time in seconds."""
    cmd = [str(EXE), "fit", "-c", str(REPO / "configs" / config), "--seed_everything", str(seed),
           "--trainer.logger.init_args.save_dir", str(workdir / "runs"), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    metrics_file = Path(proc.stdout.split("metrics file   :")[1].split()[0])
    if not metrics_file.is_absolute():
        metrics_file = workdir / metrics_file
    return json.loads(metrics_file.read_text()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--label-models", nargs="+", default=["moment_matching"])
    parser.add_argument("--max-epochs", type=int, default=None, help="override the configs' max_epochs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = [("gold labels (quickstart.yaml)", "quickstart.yaml", [])]
        for lm in args.label_models:
            settings.append((f"pseudolabels: {lm} (ws_youtube.yaml)", "ws_youtube.yaml",
                             ["--data.init_args.label_model", lm]))
        for name, config, extra in settings:
            accs, f1s, walls = [], [], []
            for seed in args.seeds:
                epochs = [] if args.max_epochs is None else ["--trainer.max_epochs", str(args.max_epochs)]
                metrics, wall = run(config, seed, [*extra, *epochs], work)
                accs.append(metrics["test/acc"])
                f1s.append(metrics["test/f1"])
                walls.append(wall)
                print(f"  {name} seed {seed}: test/acc={metrics['test/acc']:.4f} test/f1={metrics['test/f1']:.4f} "
                      f"wall={wall:.0f}s", flush=True)
            rows.append((name, accs, f1s, walls))

    def fmt(values: list[float]) -> str:
        return f"{statistics.mean(values):.4f}" + (f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else "")

    gold = statistics.mean(rows[0][1])
    print(f"\nYouTube spam, MiniLM end model, epochs: {args.max_epochs or 'as in the configs'}, seeds {args.seeds}; "
          "gold test split (n=250)")
    print("| training labels | test acc | test F1 (spam) | acc / gold acc | wall s per run |")
    print("|---|---|---|---|---|")
    for name, accs, f1s, walls in rows:
        print(f"| {name} | {fmt(accs)} | {fmt(f1s)} | {statistics.mean(accs) / gold:.3f} | "
              f"{statistics.mean(walls):.0f} |")


if __name__ == "__main__":
    main()
