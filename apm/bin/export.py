"""Export the network of a model package with its back-end as ONNX or TorchScript.

The exported model takes one utterance's prepared frames, `feats` [1, frames, feat_dim]
float32 (fbank, VAD-kept frames, CMN: `LanguageIdentifier.features`; any number of frames)
and returns `posteriors` [1, languages] in languages.txt order and `embedding` [1, dim].
Inputs longer than the package's extract.max_chunk_frames are one segment here, while
identify averages chunks of them. The languages are stored in the file (ONNX metadata
`languages`, TorchScript extra file `languages.txt`).
"""

from __future__ import annotations

import argparse

from apm.bin.cli import main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", required=True, help="model package directory (exp/<system>/model)")
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument("--output", required=True, help="file to write (.onnx, .pt)")
    p.add_argument("--backend", default="", help="back-end of the package (default: its primary)")
    return p


def run(args: argparse.Namespace) -> None:
    from apm.infer.export import export

    export(args.model, args.format, args.output, args.backend)


def console() -> None:
    """The console entry point (pyproject [project.scripts])."""
    main(build_parser(), run)


if __name__ == "__main__":
    main(build_parser(), run)
