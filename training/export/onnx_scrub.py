"""Exported models carry no paths of the machine that built them.

torch's ONNX exporter writes a Python stack trace (absolute source paths of the exporting checkout and
its virtual environment) into every node's metadata, and a run's config names its data folder by absolute
path. Neither changes what the graph computes; both tell whoever receives the model how the build machine
is laid out. `strip_build_paths` removes the former before the file is written, `portable_settings` the
latter before the manifest is built. `python -m training.export.onnx_scrub MODEL_DIR` applies both to a model
exported before they existed (outputs unchanged: only metadata is touched) and re-signs its manifest.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# Node metadata keys whose values are source locations (torch.onnx's dynamo exporter).
STACK_TRACE_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})
# Training settings that hold a path; the manifest keeps only their last component.
PATH_SETTINGS = ("data", "textures", "backbone_weights")

# A token that starts like an absolute path: "/a/b", "C:\\a" or "C:/a", "~/a", "file:///a".
_TOKEN_SPLIT = re.compile(r"[\s\"'`,;=()\[\]{}<>]+")
_WINDOWS_ROOT = re.compile(r"^[A-Za-z]:[\\/]")


class ScrubError(ValueError):
    """An ONNX model still names an absolute path after scrubbing; the message says where."""


def absolute_paths_in(text: str) -> list[str]:
    """The tokens of `text` that are absolute file paths (POSIX with ≥ 2 components, Windows, ~, file://)."""
    found = []
    for token in _TOKEN_SPLIT.split(text):
        token = token.removeprefix("file://")
        home = token.startswith("~/")
        windows = bool(_WINDOWS_ROOT.match(token))
        posix = token.startswith("/") and len(PurePosixPath(token).parts) >= 3  # not "/v1" or "/"
        if home or windows or posix:
            found.append(token)
    return found


def _strings(message: Message, where: str) -> Iterator[tuple[str, str]]:
    """(location, value) for every string field of `message` and its sub-messages; tensor bytes are skipped."""
    for field, value in message.ListFields():
        label = f"{where}.{field.name}"
        values = value if field.is_repeated else [value]
        for i, item in enumerate(values):
            at = f"{label}[{i}]" if field.is_repeated else label
            if field.type == FieldDescriptor.TYPE_STRING:
                yield at, item
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                yield from _strings(item, at)


def find_absolute_paths(model: onnx.ModelProto) -> list[str]:
    """'location: path' for every absolute path in the model's names, doc strings and metadata."""
    return [f"{where}: {path}" for where, text in _strings(model, "model") for path in absolute_paths_in(text)]


def _scrub_nodes(nodes: Any) -> None:
    for node in nodes:
        node.ClearField("doc_string")  # cleared, not set to "": an unset field stays absent from the file
        keep = [p for p in node.metadata_props if p.key not in STACK_TRACE_KEYS]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
        for attribute in node.attribute:  # control flow: subgraphs hold nodes too
            for graph in [attribute.g, *attribute.graphs]:
                _scrub_nodes(graph.node)


def strip_build_paths(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without the exporter's stack traces and doc strings (graph, nodes, functions).

    Only metadata changes: the graph, its weights and so its outputs are the same. Raises ScrubError when
    an absolute path remains elsewhere (e.g. a manifest naming its data folder), so nothing leaks unseen.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ClearField("doc_string")
    out.graph.ClearField("doc_string")
    _scrub_nodes(out.graph.node)
    for function in out.functions:
        function.ClearField("doc_string")
        _scrub_nodes(function.node)
    left = find_absolute_paths(out)
    if left:
        raise ScrubError(f"the ONNX model still names {len(left)} absolute path(s), e.g. {left[:3]}")
    return out


def portable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` with every path setting (PATH_SETTINGS) reduced to its last component: which data set,
    not where it lay on the training machine."""
    out = dict(settings)
    for key in PATH_SETTINGS:
        if isinstance(out.get(key), str) and out[key]:
            # Both flavours: a Windows path's name is not split by PurePosixPath.
            out[key] = PureWindowsPath(PurePosixPath(out[key]).name).name
    return out


def scrub_model_dir(model_dir: Path) -> str:
    """Rewrite `model_dir`'s model.onnx and manifest.json in place without build paths; the new sha256.

    For models exported before the exporter scrubbed them. The embedded manifest and manifest.json get the
    same portable training settings, and manifest.json the new file's sha256.
    """
    # Imported here: the service modules are not needed by the pure functions above.
    from service.manifest import (
        MANIFEST_FILE,
        MODEL_FILE,
        manifest_from_metadata,
        manifest_to_metadata,
        parse_manifest,
        sha256_file,
        write_manifest_json,
    )

    onnx_path = model_dir / MODEL_FILE
    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    manifest = manifest_from_metadata(meta, str(onnx_path))
    manifest = manifest.model_copy(update={"training": portable_settings(manifest.training)})
    manifest = parse_manifest(manifest.model_dump(mode="json"), "the scrubbed manifest")
    onnx.helper.set_model_props(model, {**meta, **manifest_to_metadata(manifest)})
    model = strip_build_paths(model)
    onnx.checker.check_model(model)
    tmp = onnx_path.with_name(f".{MODEL_FILE}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(onnx_path)
    sha = sha256_file(onnx_path)
    write_manifest_json(manifest, model_dir, sha)
    print(f"scrubbed {onnx_path} and {model_dir / MANIFEST_FILE}: sha256 {sha}")
    return sha


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model_dirs", nargs="+", type=Path, help="exported model folders (model.onnx + manifest.json)")
    args = parser.parse_args(argv)
    for folder in args.model_dirs:
        scrub_model_dir(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
