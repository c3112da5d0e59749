"""``alpha train`` and ``alpha sample``.

Every flag defaults to ``argparse.SUPPRESS``, so ``vars(args)`` holds exactly the
flags the user typed: those become the "explicit flags" layer of the config
resolution (PRD §5.2). Each flag accepts ``--lr=1e-4`` and ``--lr 1e-4``.
Imports neither Prefect nor Dash; torch is imported only once input is valid.

Exit codes of ``alpha train``: 0 completed (rows in the lake, or spooled and
said so), 1 failed or metric rows lost, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
SIGTERM stops the run like Ctrl-C (``model.signals``): the current step's row is
recorded, the sink flushed, the lake's run row says ``cancelled``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from flows.cli import CliError
from model import signals
from model.config import ACTIVATIONS, DEVICES, DOMAINS, DTYPES, TOKENIZERS
from model.errors import ConfigError

S = argparse.SUPPRESS
#: Exit code by outcome status (a search reports an interrupted run as "cancelled").
EXIT_CODES = {"completed": 0, "interrupted": 130, "cancelled": 130}

#: (flag, type, help) of every value flag of ``alpha train``; dest is the snake_case name.
TRAIN_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("--data", str, "training text file (default: the domain's corpus)"),
    ("--val-data", str, "validation text file (default: last 10%% of --data)"),
    ("--domain", str, f"domain preset: {', '.join(DOMAINS)} (default shakespeare)"),
    ("--device", str, f"{' | '.join(DEVICES)} (default auto)"),
    ("--dtype", str, f"{' | '.join(DTYPES)}: auto is bfloat16 autocast on CUDA"),
    ("--tokenizer", str, f"{' | '.join(TOKENIZERS)} (byte-level BPE, trained on the data)"),
    ("--vocab-size", int, "BPE vocabulary size"),
    ("--iters", int, "training steps"),
    ("--batch", int, "micro-batch size"),
    ("--grad-accum", int, "micro-batches per optimizer step"),
    ("--block", int, "context length"),
    ("--dim", int, "embedding width"),
    ("--heads", int, "attention heads (must divide --dim)"),
    ("--layers", int, "transformer blocks"),
    ("--dropout", float, "dropout probability"),
    ("--activation", str, f"FFN activation: {', '.join(ACTIVATIONS)}"),
    ("--ffn-dim", int, "FFN inner width (default 4*dim; swiglu ceil(8/3*dim/64)*64)"),
    ("--lr", float, "peak learning rate"),
    ("--lr-min", float, "final learning rate of the cosine decay (default lr/10)"),
    ("--warmup-iters", int, "linear warmup steps"),
    ("--lr-decay-iters", int, "step at which the cosine decay ends (default --iters)"),
    ("--grad-clip", float, "clip the global grad norm to this (0: off)"),
    ("--spike-threshold", float, "skip the optimizer step when grad norm exceeds this (0: off)"),
    ("--spike-patience", int, "spike skips in a row before the threshold is re-baselined"),
    ("--weight-decay", float, "AdamW weight decay"),
    ("--beta1", float, "AdamW beta1"),
    ("--beta2", float, "AdamW beta2"),
    ("--eval-interval", int, "evaluate every N steps"),
    ("--eval-iters", int, "validation batches per eval"),
    ("--log-interval", int, "progress bar refresh every N steps"),
    ("--checkpoint-interval", int, "checkpoint every N steps (0: at every eval)"),
    ("--sample-tokens", int, "tokens of the sample written at the end (0: none)"),
    ("--seed", int, "random seed (initial weights)"),
    ("--data-seed", int, "seed of the training batch order (default --seed)"),
    ("--test-fraction", float, "share of the validation text held out as a test split"),
    ("--run-dir", str, "output folder (default runs/<run id>)"),
    ("--resume", str, "checkpoint file or run folder to continue"),
    ("--symbio-config", str, "JSON file with symbio overrides (with --symbio)"),
)


def register(name: str, parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False  # --lr must never silently mean --lr-min
    if name == "sample":
        _register_sample(parser)
        return
    for flag, type_, help_ in TRAIN_FLAGS:
        parser.add_argument(flag, type=type_, default=S, help=help_, metavar=_metavar(flag, type_))
    parser.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    parser.add_argument("--symbio", action="store_true", default=S, help="Symbiogenesis mode")
    parser.add_argument(
        "--lake",
        default=S,
        metavar="URL",
        help="metric lake: a folder or s3://bucket/prefix (default $ALPHA_LAKE, else ./lake)",
    )
    parser.add_argument(
        "--max-search-minutes",
        type=float,
        default=S,
        metavar="X",
        help="budget of an activation search: scaled down to fit the timing probe's "
        "estimate, or refused (default 60; 0: no limit)",
    )


def _metavar(flag: str, type_: type) -> str:
    if type_ is not str:
        return "N" if type_ is int else "X"
    return (
        "PATH"
        if flag in ("--data", "--val-data", "--run-dir", "--resume", "--symbio-config")
        else "NAME"
    )


def _register_sample(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--tokens", type=int, default=500, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")


def run(name: str, args: argparse.Namespace) -> int:
    # Before torch loads OpenMP: spinning worker threads collapse when the CPU is shared
    # (measured on 2 busy cores: 2.4 s/step spinning vs 0.38 s passive).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        if name == "sample":
            return _sample(args)
        with signals.sigterm_as_interrupt():
            try:
                return _train(args)
            except KeyboardInterrupt:  # e.g. a search re-raises once its artifacts are written
                if not signals.received():
                    raise
                print("alpha train: cancelled by SIGTERM", file=sys.stderr)
                return signals.EXIT_SIGTERM
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _train(args: argparse.Namespace) -> int:
    from tasks.resolve import resolve_run_config

    explicit = dict(vars(args))
    lake_url = explicit.pop("lake", None) or os.environ.get("ALPHA_LAKE") or "./lake"
    budget = explicit.pop("max_search_minutes", None)
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        raise ConfigError(f"--max-search-minutes: must be a number >= 0 (got {budget})")
    resolved = resolve_run_config(explicit)

    from tasks.run import execute, lake_verdict, open_lake_or_fail

    open_lake_or_fail(lake_url)  # a bad lake fails before anything is printed or written

    t0 = time.perf_counter()
    outcome = execute(
        resolved,
        lake_url=lake_url,
        progress=True,
        max_search_minutes=budget,
        on_ready=lambda: _print_header(resolved, lake_url),  # every check has passed
    )
    verdict = lake_verdict(outcome.sink_stats, getattr(outcome, "rows_produced", None))
    _print_footer(outcome, time.perf_counter() - t0, verdict)
    code = EXIT_CODES.get(outcome.status, 1)
    if code == 130 and signals.received():
        code = signals.EXIT_SIGTERM
    return code or verdict.exit_code


def _print_header(resolved, lake_url: str) -> None:
    mode = "symbio" if resolved.symbio else "standard"
    if resolved.symbio:
        mode += f", search mode {resolved.search_mode}"
    verb = f"resuming from step {resolved.resumed_step}" if resolved.resumed_step else "training"
    print(f"alpha train: {verb} run {resolved.run_id} ({mode})")
    print("resolved config (value, layer that set it):")
    print("\n".join(resolved.summary_lines()))
    print(f"  {'lake':<20} {lake_url!r}")
    sys.stdout.flush()


def _print_footer(outcome, seconds: float, verdict) -> None:
    res = outcome.result
    status = outcome.status
    if status in ("interrupted", "cancelled") and signals.received():
        status = "cancelled by SIGTERM"
    if verdict.note:
        status += f" ({verdict.note})"
    if res is not None:
        val = f"{res.final_val_loss:.4f}" if res.final_val_loss is not None else "n/a"
        tps = f"{res.tokens_per_sec_mean:,.0f}" if res.tokens_per_sec_mean else "n/a"
        print(
            f"alpha train: {status} after {res.steps} steps in {seconds:.1f}s "
            f"(val loss {val}, {tps} tokens/s)"
        )
    else:
        print(f"alpha train: {status} in {seconds:.1f}s")
    if winner := getattr(outcome, "winner_activation", None):
        note = getattr(outcome, "winner_note", None) or f"report only; train it with --activation={winner}"
        print(f"  winner      {winner} ({note})")
    files = "config.json, metrics.jsonl, checkpoint, samples.txt" if res else "search artifacts"
    print(f"  run dir     {outcome.run_dir}  ({files})")
    print(f"  lake        {outcome.lake_url}  (run_id {outcome.run_id})")
    if (bf := getattr(outcome, "backfill", None)) is not None and bf.rows_missing:
        print(
            f"  backfill    {bf.rows_missing} rows the lake lacked, from metrics.jsonl: "
            f"{bf.rows_landed} landed, {bf.rows_quarantined} quarantined, "
            f"{bf.rows_spooled} spooled"
        )
    if res is not None and res.checkpoint_path:
        print(f"  sample:     alpha sample --checkpoint {outcome.run_dir}")
        print(f"  continue:   alpha train --resume {outcome.run_dir} --iters <more steps>")
    if outcome.error:
        print(f"alpha train: error: {outcome.error}", file=sys.stderr)
    if verdict.error:
        flush = f"alpha lake flush --run-dir {outcome.run_dir} --lake {outcome.lake_url}"
        print(
            f"alpha train: error: {verdict.error.replace('alpha lake flush --run-dir DIR', flush)}",
            file=sys.stderr,
        )


def _sample(args: argparse.Namespace) -> int:
    if args.tokens < 0:
        raise ConfigError(f"--tokens: must be >= 0 (got {args.tokens})")
    if not args.temperature > 0 or args.temperature == float("inf"):
        raise ConfigError(f"--temperature: must be a finite number > 0 (got {args.temperature})")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k: must be >= 1 (got {args.top_k})")
    if args.device not in DEVICES:
        raise ConfigError(
            f"--device: unknown device {args.device!r} (choose from {', '.join(DEVICES)})"
        )
    from model.checkpoint import read_meta
    from model.config import check_model_size, memory_limit

    meta = read_meta(args.checkpoint, "--checkpoint")  # a clear error before importing torch
    check_model_size(meta.model_config, limit=memory_limit(args.device), flag="--checkpoint")

    from model.sample import generate_text, load_for_sampling
    from model.trainer import resolve_device

    device = str(resolve_device(args.device))
    model, tokenizer = load_for_sampling(args.checkpoint, device)
    text = generate_text(
        model,
        tokenizer,
        args.prompt,
        args.tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
