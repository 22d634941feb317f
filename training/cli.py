"""Command-line entry point: one sub-command per module, each exposing `add_arguments` and `run`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Sub-command → module. Modules are imported only when their command runs, so `synth` or
# `check-data` do not pay for importing torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.synth.generate", "write a synthetic data set in the MVTec 3D-AD layout"),
    "check-data": ("training.data.check", "report what a data set holds before training"),
    "convert-eyecandies": ("training.data.convert_eyecandies", "convert an Eyecandies category to our layout"),
    "train": ("training.train.cli", "train a BridgeNet model"),
    "ensemble": ("training.train.ensemble", "combine runs of several seeds into one model"),
    "evaluate": ("training.evaluation.evaluate", "evaluate a trained run on the test split"),
    "export": ("training.export.exporter", "export a trained run to ONNX + manifest"),
    "import-reviews": ("training.data.import_reviews", "turn reviewed parts from a service into training data"),
    "calibrate": ("training.calibration.recalibrate", "re-calibrate an exported model on good parts"),
}


DESCRIPTION = """\
Train BridgeNet anomaly-detection models on RGB images + point clouds, and export them for the service.

A typical session: `synth` (or your own data in the MVTec 3D-AD layout) → `check-data` → `train` →
`evaluate` → `export`. `python -m training COMMAND --help` lists a command's options."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default after its help, except where there is nothing to show: flags (off unless
    given), required options, a None default (the help says what applies then) or help that names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or action.required or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return text + " (default: %(default)s)"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        # Only the chosen command's module is imported to build its arguments.
        if name == wanted:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)
