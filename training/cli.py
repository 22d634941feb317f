"""Command-line entry point: one sub-command per module, each exposing `add_arguments` and `run`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Sub-command → module. Modules are imported only when their command runs, so `synth` or
# `check-data` do not pay for importing torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.synth", "write a synthetic data set in the MVTec 3D-AD layout"),
    "check-data": ("training.check_data", "report what a data set holds before training"),
    "train": ("training.train", "train a BridgeNet model"),
    "evaluate": ("training.evaluate", "evaluate a trained run on the test split"),
    "export": ("training.export", "export a trained run to ONNX + manifest"),
    "calibrate": ("training.recalibrate", "re-calibrate an exported model's thresholds on good parts (no torch)"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
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
