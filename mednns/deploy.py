"""Deployable files from a fine-tuned model: ONNX or TorchScript, with its preprocessing beside it.

Fine-tuning (:func:`mednns.finetune.finetune`) records in its ``best/model.json`` how the model's
inputs were prepared (:func:`preprocessing_of`): channels, image size, the per-channel mean and std
of the target's training images, the task and the class labels. :func:`export_deployable` writes

    model.onnx          (ONNX via torch.onnx's exporter, a dynamic batch axis; the ``onnx`` extra)
    model.pt            (TorchScript, traced)
    preprocessing.json  what to do to an image before the model sees it, the output's meaning, the
                        source export, and the largest difference between the file's outputs and
                        the PyTorch model's on a seeded batch (onnxruntime / torch.jit)

A deployment needs nothing from mednns: read ``preprocessing.json``, prepare the image, run the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mednns.errors import UsageError
from mednns.export import METADATA, load_model
from mednns.files import read_json, write_json

if TYPE_CHECKING:
    from mednns.data import MedicalDataset
    from mednns.registry import ComponentSource

PREPROCESSING = "preprocessing.json"
FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
Format = Literal["onnx", "torchscript"]
#: Opset of the ONNX files (supported by onnxruntime >= 1.14).
OPSET = 18


def preprocessing_of(dataset: MedicalDataset) -> dict[str, Any]:
    """How fine-tuning prepared ``dataset``'s images: what a deployment must repeat."""
    from mednns.data import dataset_stats

    info = dataset.info
    mean, std = dataset_stats(dataset, "train", channels=info.n_channels)
    layout = "NCDHW" if len(info.image_size) == 3 else "NCHW"
    return {"channels": info.n_channels, "image_size": list(info.image_size), "layout": f"{layout} float32",
            "scale": "uint8 pixels / 255 (to [0, 1]); grayscale or RGB as 'channels' says",
            "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "normalize": "(x - mean) / std per channel (the training split's statistics)",
            "task": str(info.task), "labels": list(info.label_names),
            "output": ("logits: sigmoid per label" if str(info.task) == "multi-label"
                       else "logits: softmax over the labels")}


def model_folder(path: str | os.PathLike) -> Path:
    """An export folder (``model.json``), a fine-tuning folder whose ``best/`` is one, or a
    ``mednns adapt`` folder (its ``finetune/best/``)."""
    path = Path(path)
    for candidate in (path, path / "best", path / "finetune" / "best"):
        if (candidate / METADATA).is_file():
            return candidate
    raise UsageError(f"no exported model at {path} (no {METADATA}, nor best/{METADATA})",
                     hint="give a fine-tuned model: the folder 'mednns finetune' or 'mednns adapt' wrote")


def export_deployable(model: str | os.PathLike, out_dir: str | os.PathLike, fmt: Format = "onnx", *,
                      manager: ComponentSource | None = None) -> dict[str, Any]:
    """Write ``model`` (a fine-tuned export) as ``fmt`` into ``out_dir`` with ``preprocessing.json``;
    returns that file's content."""
    import torch

    if fmt not in FILES:
        raise UsageError(f"format must be one of {', '.join(FILES)}, got {fmt!r}")
    folder = model_folder(model)
    metadata = read_json(folder / METADATA)
    preprocessing = metadata.get("preprocessing")
    if not preprocessing:
        raise UsageError(f"{folder} records no preprocessing (it was not fine-tuned by this mednns)",
                         hint="fine-tune it first: mednns finetune EXPORT_DIR --dataset ...; then export its best/")
    network = load_model(folder, manager=manager).float().eval()
    shape = (preprocessing["channels"], *preprocessing["image_size"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / FILES[fmt]
    example = torch.zeros(2, *shape)
    if fmt == "onnx":
        _write_onnx(network, example, target)
    else:
        with torch.no_grad():
            torch.jit.trace(network, example).save(str(target))
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(4, *shape, generator=generator)
    with torch.no_grad():
        expected = network(batch).numpy()
    found = _run(target, fmt, batch.numpy())
    record = {"format": fmt, "file": target.name, "input": {"name": "images", "shape": ["batch", *shape]},
              **preprocessing, "source": str(folder.resolve()), "arch_hash": metadata.get("arch_hash"),
              "parity": {"batch": 4, "max_abs_difference": float(abs(found - expected).max())}}
    write_json(out / PREPROCESSING, record)
    return record


def require_onnx() -> None:
    """A usage error unless the ``onnx`` extra is installed: onnxscript (torch.onnx's exporter needs it)
    and onnxruntime (the written file is checked with it)."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError("writing ONNX needs the onnx extra",
                         hint="pip install 'mednns[onnx]', or write TorchScript instead") from None


def _write_onnx(network: Any, example: Any, target: Path) -> None:
    import torch

    require_onnx()
    batch = torch.export.Dim("batch")
    torch.onnx.export(network, (example,), str(target), dynamo=True, input_names=["images"],
                      output_names=["logits"], dynamic_shapes=({0: batch},), opset_version=OPSET,
                      external_data=False, verbose=False)


def _run(target: Path, fmt: Format, batch: Any) -> Any:
    """The written file's outputs on ``batch`` (onnxruntime or torch.jit)."""
    if fmt == "onnx":
        require_onnx()
        import onnxruntime

        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: batch})[0]
    import torch

    with torch.no_grad():
        return torch.jit.load(str(target))(torch.as_tensor(batch)).numpy()
