"""Built-in dataset encoders: ``timm`` (a frozen ImageNet network) and ``image_stats`` (handcrafted).

Both implement :class:`~mednns.metaspace.contracts.DatasetEncoder`: float32 ``(N, C, H, W)``
images in ``[0, 1]`` in, float32 ``(N, feature_dim)`` features out. They are registered by the
built-in plugin ``mednns.plugins.dataset_encoders``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch
import torch.nn.functional as F

from mednns.errors import UsageError
from mednns.metaspace.contracts import DatasetEncoder
from mednns.typecheck import suggest

#: Luminance weights of RGB -> gray (ITU-R BT.601, as in :data:`mednns.data.LUMINANCE`).
_LUMINANCE = (0.299, 0.587, 0.114)


def _check_channels(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UsageError(f"dataset encoders take (N, C, H, W) images with C 1 or 3, got shape {tuple(images.shape)}")


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to ``size x size`` (antialiased when shrinking)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    shrinking = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch checkpoint (``.pth``/``.pt``/``.bin``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor objects
        raise UsageError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}",
                         hint="give a .safetensors file or a torch state dict saved with torch.save") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):  # common checkpoint layouts
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UsageError(f"{path} does not hold a state dict (name -> tensor)",
                         hint="save the weights with torch.save(model.state_dict(), path) or safetensors")
    return data


class TimmEncoder(DatasetEncoder):
    """Pooled penultimate features of a frozen timm network (ImageNet-pretrained by default).

    Images are adapted like ImageNet inputs: 1 channel repeated to 3, bilinear resize to
    ``image_size``, normalized with the mean and std of the model's pretrained config. The output is
    the globally pooled feature vector before the classifier (``num_classes=0``).

    :param model: a timm model name (``resnet50``, ``resnet18``, ``convnext_tiny.fb_in1k`` ...).
    :param pretrained: ``true``: timm's ImageNet weights (downloaded, or read from the
        ``HF_HOME``/``TORCH_HOME`` cache); a path: a local ``.safetensors``/``.pth`` state dict of
        the same architecture (classifier keys dropped, the rest loaded with strict key matching);
        ``false``: random weights (seeded with 0), only when you mean it.
    :param image_size: side length the images are resized to.
    :param batch_size: images per forward pass.
    """

    def __init__(self, model: str = "resnet50", pretrained: bool | str = True, image_size: int = 224,
                 batch_size: int = 64):
        if image_size < 8:
            raise UsageError(f"timm encoder: image_size must be at least 8, got {image_size}")
        if batch_size < 1:
            raise UsageError(f"timm encoder: batch_size must be at least 1, got {batch_size}")
        if not timm.is_model(model):
            close = suggest(model, timm.list_models())
            raise UsageError(f"timm has no model {model!r}" + (f"; did you mean {close!r}?" if close else ""),
                             hint="list them with: python -c \"import timm; print(timm.list_models('resnet*'))\"")
        self.model_name = model
        self.image_size = image_size
        self.batch_size = batch_size
        self.model: Any  # a timm model: pretrained_cfg and num_features are not nn.Module attributes
        if pretrained is True:
            self.model = self._imagenet(model)
            cfg = self.model.pretrained_cfg or {}
            self.weights = "imagenet:" + str(cfg.get("hf_hub_id") or f"{cfg.get('architecture', model)}."
                                                                    f"{cfg.get('tag', '')}")
        elif pretrained is False:
            self.model = self._random(model)
            self.weights = "random:seed=0"
        elif isinstance(pretrained, str) and pretrained.strip():
            path = Path(pretrained).expanduser()
            self.model = self._from_file(model, path)
            self.weights = f"file:sha256={_file_sha256(path)}"
        else:
            raise UsageError(f"timm encoder: pretrained must be true, false or a weights file, got {pretrained!r}")
        self.model.eval().requires_grad_(False)
        config = timm.data.resolve_model_data_config(self.model)
        self.mean = tuple(float(m) for m in config["mean"])
        self.std = tuple(float(s) for s in config["std"])
        self.feature_dim = int(self.model.num_features)
        self.device = torch.device("cpu")

    @staticmethod
    def _imagenet(model: str) -> torch.nn.Module:
        try:
            return timm.create_model(model, pretrained=True, num_classes=0)
        except Exception as exc:  # no internet, no cache, a model without pretrained weights ...
            raise UsageError(
                f"timm encoder: the ImageNet weights of {model!r} could not be loaded "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'})",
                hint=("provide them: 'pretrained: /path/to/weights.safetensors' (or .pth; a state dict of "
                      f"{model}, loaded with strict key matching after dropping the classifier keys; on the "
                      "command line --encoder-arg pretrained=/path/to/weights.safetensors), or a populated "
                      "HF_HOME / TORCH_HOME cache (run timm.create_model(..., pretrained=True) once where there "
                      "is internet, then copy the cache here; HF_HUB_OFFLINE=1 skips the download retries). "
                      "'pretrained: false' gives random weights (only when you mean it)"),
            ) from exc

    @staticmethod
    def _random(model: str) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return timm.create_model(model, pretrained=False, num_classes=0)

    def _from_file(self, model: str, path: Path) -> torch.nn.Module:
        if not path.is_file():
            raise UsageError(f"timm encoder: weights file not found: {path}",
                             hint="give the path of a .safetensors or .pth state dict of the model")
        net: Any = self._random(model)  # a timm model (pretrained_cfg)
        state = _read_state_dict(path)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        classifier = (net.pretrained_cfg or {}).get("classifier") or ()
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        state = {k: v for k, v in state.items() if not any(k == h or k.startswith(h + ".") for h in heads)}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise UsageError(f"timm encoder: {path} does not match timm model {model!r}: "
                             f"{str(exc).splitlines()[0]} ({str(exc).count(chr(10))} lines of details)",
                             hint=f"the file must be a state dict of {model} (classifier keys are dropped)") from None
        return net

    def cache_key(self) -> str:
        """``timm`` with the model, the weights' identity, the image size and the normalization."""
        return json.dumps({"encoder": "timm", "model": self.model_name, "weights": self.weights,
                           "image_size": self.image_size, "mean": self.mean, "std": self.std}, sort_keys=True)

    def to(self, device: torch.device | str) -> "TimmEncoder":
        """Move the network to ``device``; :meth:`encode_images` still returns CPU tensors."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` images -> 3-channel, resized, normalized network inputs (on the encoder's device).

        :param images: float ``(N, C, H, W)``, ``C`` 1 or 3.
        :returns: float32 ``(N, 3, image_size, image_size)``.
        """
        _check_channels(images)
        x = images.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = _resize(x, self.image_size)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features ``(N, feature_dim)`` on the CPU.

        :param images: float32 ``(N, C, H, W)`` in ``[0, 1]``.
        :returns: float32 features.
        """
        outputs = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                x = self.preprocess(images[start:start + self.batch_size])
                outputs.append(self.model(x).float().cpu())
        if not outputs:
            return torch.zeros(0, self.feature_dim)
        return torch.cat(outputs)


class ImageStatsEncoder(DatasetEncoder):
    """Handcrafted image statistics, offline and fast (torch ops only): 80 features per image.

    Layout (all bins normalized to fractions of the pixels, except the spectrum):

    ====== ============================================================================
    0:32   grayscale intensity histogram, 32 equal bins over ``[0, 1]``
    32:35  per-channel mean (gray images: the gray mean three times)
    35:38  per-channel standard deviation (gray images: three times)
    38:54  gradient-magnitude histogram, 16 equal bins over ``[0, 0.5]`` (larger values in the last);
           Sobel filters divided by 8, on the gray image resized to 64x64
    54:70  radially averaged log power spectrum, 16 equal radius bins over ``[0, 0.5]`` cycles/pixel
           (corners in the last): ``log(1 + |FFT|^2 / HW)`` of the mean-free gray image at 64x64
    70:80  uniform local binary patterns: 8 neighbours at radius 1 (``neighbour >= centre``) on the
           gray image at 64x64; bins 0..8 count uniform patterns (at most 2 transitions) by
           their number of ones, bin 9 every non-uniform pattern
    ====== ============================================================================

    Gray is the BT.601 luminance of RGB images. Texture features use a common 64x64 resolution
    so that datasets of different image sizes stay comparable.
    """

    #: Length of the feature vector (see the layout above).
    feature_dim = 80
    #: Bumped whenever the features change.
    version = 1
    texture_size = 64

    def cache_key(self) -> str:
        """``image_stats`` and the feature version."""
        return f"image_stats:v{self.version}"

    @staticmethod
    def _histogram(values: torch.Tensor, bins: int, high: float) -> torch.Tensor:
        """Per-row histogram of ``(N, P)`` values: ``bins`` equal bins over ``[0, high]`` (clamped), as fractions."""
        index = (values * (bins / high)).long().clamp_(0, bins - 1)
        return ImageStatsEncoder._count(index, bins)

    @staticmethod
    def _count(index: torch.Tensor, bins: int) -> torch.Tensor:
        """Per-row counts of ``(N, P)`` integer labels in ``[0, bins)``, as fractions of ``P``."""
        rows, width = index.shape
        offsets = torch.arange(rows, dtype=index.dtype).unsqueeze(1) * bins
        counts = torch.bincount((index + offsets).flatten(), minlength=rows * bins)
        return counts.view(rows, bins).to(torch.float32) / width

    def _gradient(self, gray: torch.Tensor) -> torch.Tensor:
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
        grads = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
        magnitude = grads.pow(2).sum(dim=1).sqrt()
        return self._histogram(magnitude.flatten(1), 16, 0.5)

    def _spectrum(self, gray: torch.Tensor) -> torch.Tensor:
        size = gray.shape[-1]
        centred = gray[:, 0] - gray.mean(dim=(-2, -1), keepdim=True)[:, 0]
        power = torch.fft.fft2(centred).abs().pow(2) / (size * size)
        freq = torch.fft.fftfreq(size)
        radius = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2).flatten()
        index = (radius / 0.5 * 16).long().clamp_(0, 15)
        assign = F.one_hot(index, 16).float()  # (HW, 16)
        assign = assign / assign.sum(dim=0, keepdim=True).clamp_min(1.0)
        return torch.log1p(power.flatten(1)) @ assign

    @staticmethod
    def _lbp(gray: torch.Tensor) -> torch.Tensor:
        padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")[:, 0]
        height, width = gray.shape[-2:]
        centre = gray[:, 0]
        offsets = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # circular order
        bits = [padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] >= centre for dy, dx in offsets]
        ones = torch.zeros_like(centre, dtype=torch.int64)
        transitions = torch.zeros_like(centre, dtype=torch.int64)
        for k, bit in enumerate(bits):
            ones += bit
            transitions += bit != bits[k - 1]  # circular: bit 0 against bit 7
        label = torch.where(transitions <= 2, ones, torch.full_like(ones, 9)).flatten(1)
        return ImageStatsEncoder._count(label, 10)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The 80 statistics of each image (layout in the class docstring).

        :param images: float32 ``(N, C, H, W)`` in ``[0, 1]``, ``C`` 1 or 3.
        :returns: float32 ``(N, 80)`` on the CPU.
        """
        _check_channels(images)
        x = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
        if x.shape[1] == 3:
            weights = torch.tensor(_LUMINANCE).view(1, 3, 1, 1)
            gray = (x * weights).sum(dim=1, keepdim=True)
            rgb = x
        else:
            gray = x
            rgb = x.expand(-1, 3, -1, -1)
        intensity = self._histogram(gray.flatten(1), 32, 1.0)
        mean = rgb.mean(dim=(-2, -1))
        std = rgb.std(dim=(-2, -1), unbiased=False)
        small = _resize(gray, self.texture_size)
        features = torch.cat([intensity, mean, std, self._gradient(small), self._spectrum(small), self._lbp(small)],
                             dim=1)
        return features.contiguous()


__all__ = ["ImageStatsEncoder", "TimmEncoder"]
