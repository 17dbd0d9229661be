"""Export a packaged network with its back-end: ONNX or TorchScript.

The exported graph takes the prepared frames of one utterance, `feats` [1, T, F] float32
(`LanguageIdentifier.features`: fbank, VAD-kept frames, CMN; T dynamic), and returns
`posteriors` [1, languages] (the package's back-end and calibration, languages.txt order,
as `LanguageIdentifier` gives them) and `embedding`
[1, E] (the x-vector). It runs the whole input as one segment: for inputs longer than
`extract.max_chunk_frames` (package.json) the package's own pipeline averages chunks
instead, so feed those in chunks or use `LanguageIdentifier`. The languages are stored with
the model (ONNX metadata `languages`; TorchScript extra file `languages.txt`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from apm.backend.store import FittedBackend
from apm.extract.xvectors import load_system
from apm.infer.package import load_package
from apm.nnet import ModelOutput
from apm.utils import ApmError

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
EXAMPLE_FRAMES = 200


class ExportedNetwork(nn.Module):
    """x-vector network + language classifier + back-end + calibration, as one float32
    module: the package's posteriors (`FittedBackend.posteriors`)."""

    def __init__(self, system, backend: FittedBackend, name: str, cmn: str) -> None:
        super().__init__()
        self.model, self.crit = system.model, system.crit
        self.layer = system.config["extract"]["layer"]
        model = backend.models[name]
        self.kind = model.name
        self.chunk_cmn = cmn == "chunk"
        arrays: dict[str, np.ndarray] = {}
        if model.input == "xvector":
            arrays["lda_matrix"], arrays["lda_offset"] = backend.processor.affine()
        if self.kind == "lr":
            arrays["weight"], arrays["bias"] = model.weights()
        elif self.kind == "cosine":
            arrays["means"] = model.means
        elif self.kind != "classifier":
            raise ApmError(f"back-end '{name}' cannot be exported (lr, cosine, classifier can)")
        self.log_softmax = self.kind == "lr" or (self.kind == "classifier" and
                                                 model.use_log_softmax)  # fmt: skip
        cal = backend.calibration.get(name)
        arrays["cal_scale"] = np.array(cal.scales[0] if cal is not None else 1.0)
        arrays["cal_offset"] = cal.offsets if cal is not None else np.zeros(len(backend.languages))
        for key, value in arrays.items():
            self.register_buffer(key, torch.from_numpy(np.asarray(value, dtype=np.float32)))

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.chunk_cmn:
            feats = feats - feats.mean(dim=1, keepdim=True)
        out = self.model(feats, None, phones=False)
        logits = self.crit.scores(ModelOutput(out.embedding, None, out.classifier_input))
        embedding = out.embedding if self.layer == "embedding" else out.classifier_input
        if self.kind == "classifier":
            raw = logits
        else:
            z = embedding @ self.lda_matrix + self.lda_offset
            norm = torch.clamp(torch.linalg.vector_norm(z, dim=1, keepdim=True), min=1e-12)
            z = z * (float(z.shape[1]) ** 0.5) / norm
            if self.kind == "lr":
                raw = z @ self.weight.t() + self.bias
            else:
                unit = z / torch.clamp(torch.linalg.vector_norm(z, dim=1, keepdim=True), min=1e-12)
                raw = unit @ self.means.t()
        if self.log_softmax:  # the stage 6 scores are log-posteriors
            raw = torch.log_softmax(raw, dim=1)
        return torch.softmax(self.cal_scale * raw + self.cal_offset, dim=1), embedding


def exported_network(
    model_dir: str | os.PathLike, backend: str = ""
) -> tuple[ExportedNetwork, dict]:
    """The module to export and the package's settings."""
    package = load_package(model_dir)
    name = backend or package.settings["primary"]
    if name not in package.backend.models:
        raise ApmError(f"{model_dir}: no back-end '{name}' (it has {list(package.backend.models)})")
    system = load_system(package.state, torch.device("cpu"))
    net = ExportedNetwork(system, package.backend, name, package.settings["cmn"]).eval()
    return net, package.settings


def export(
    model_dir: str | os.PathLike, fmt: str, output: str | os.PathLike, backend: str = ""
) -> Path:
    """Write the network of the package in `model_dir` as `fmt` (onnx | torchscript)."""
    if fmt not in FORMATS:
        raise ApmError(f"unknown export format '{fmt}'; choose from {list(FORMATS)}")
    net, settings = exported_network(model_dir, backend)
    write_export(net, fmt, output, settings["languages"])
    log.info(
        "%s: %s export of %s (%d languages)", output, fmt, model_dir, len(settings["languages"])
    )
    return Path(output)


def write_export(
    net: ExportedNetwork, fmt: str, output: str | os.PathLike, languages: list[str]
) -> Path:
    """Trace `net` on an example of `EXAMPLE_FRAMES` frames (the frame axis stays dynamic)
    and write it as `fmt`, with `languages` stored in the file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    feat_dim = net.model.feat_dim
    example = torch.randn(1, EXAMPLE_FRAMES, feat_dim, generator=torch.Generator().manual_seed(0))
    names = "\n".join(languages) + "\n"
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, str(output), _extra_files={"languages.txt": names})
        else:
            import onnx

            torch.onnx.export(
                net,
                (example,),
                str(output),
                input_names=["feats"],
                output_names=["posteriors", "embedding"],
                dynamic_axes={"feats": {1: "frames"}},
                opset_version=17,
                dynamo=False,
            )
            proto = onnx.load(str(output))
            entry = proto.metadata_props.add()
            entry.key, entry.value = "languages", names.strip().replace("\n", " ")
            onnx.save(proto, str(output))
    return output
