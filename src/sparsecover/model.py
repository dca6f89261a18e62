"""The network: a segmentation-models-pytorch U-Net (any smp encoder) for any number of bands.

ImageNet weights (``weights="imagenet"``) need the internet on first use; they are optional and
never used in tests. Their first convolution is adapted to N bands: the red, green and blue filters
go to the bands named red/green/blue when the names say so, every other band starts from the mean
RGB filter, and the whole kernel is scaled so the layer's response keeps its size.
"""

from __future__ import annotations

import math
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from .errors import SparsecoverError
from .modelfile import SUFFIX, ModelJson, open_model

ARCHITECTURES = {"unet": smp.Unet, "unetplusplus": smp.UnetPlusPlus, "fpn": smp.FPN,
                 "deeplabv3plus": smp.DeepLabV3Plus}


def build_model(
    num_bands: int,
    num_classes: int,
    backbone: str = "resnet34",
    architecture: str = "unet",
    weights: str | None = None,
    band_names: list[str] | None = None,
    encoder_depth: int = 5,
    spectral: bool = False,
) -> nn.Module:
    """A segmentation network: ``num_bands`` in, ``num_classes`` logits out, at input resolution.

    ``encoder_depth`` < 5 keeps only the first stages of the encoder (and a matching, narrower
    decoder): a smaller receptive field and far fewer weights, which generalise better from a few
    small polygons than the full network, which learns the polygons' context by heart.
    ``spectral`` pools it with a per-pixel :class:`SpectralModel` (:class:`PooledNetwork`).
    """
    check_network(backbone, architecture, encoder_depth)
    cls = ARCHITECTURES[architecture]
    shape = {"encoder_depth": encoder_depth}
    if architecture in ("unet", "unetplusplus"):
        shape["decoder_channels"] = (256, 128, 64, 32, 16)[5 - encoder_depth :]
    if weights == "imagenet":
        try:
            model = cls(encoder_name=backbone, encoder_weights="imagenet", in_channels=3, classes=num_classes, **shape)
        except Exception as exc:  # download or cache failure
            raise SparsecoverError(
                f"cannot load ImageNet weights for {backbone} ({exc}); they are downloaded on first use: "
                "check the internet connection or use --weights none"
            ) from None
        adapt_first_conv(model.encoder, num_bands, band_names or [])
        drop_unused_stages(model.encoder, encoder_depth)
    else:
        model = cls(encoder_name=backbone, encoder_weights=None, in_channels=num_bands, classes=num_classes, **shape)
        drop_unused_stages(model.encoder, encoder_depth)
        if weights not in (None, "none"):
            load_weights(model, Path(weights))
    return PooledNetwork(model, SpectralModel(num_bands, num_classes)) if spectral else model


class SpectralModel(nn.Module):
    """A per-pixel classifier: each pixel's own band values, no neighbours (an MLP as 1x1 convolutions,
    so that it runs on tiles like the network it is pooled with)."""

    HIDDEN = (64, 64)

    def __init__(self, num_bands: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_bands
        for hidden in self.HIDDEN:
            layers += [nn.Conv2d(width, hidden, 1), nn.ReLU()]
            width = hidden
        layers.append(nn.Conv2d(width, num_classes, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def of_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The same model on (N, bands) pixel vectors, its 1x1 convolutions as matrix products: the
        fit's steps run 2.2x faster than through the convolutions on N x bands x 1 x 1."""
        for layer in self.layers:
            x = nn.functional.linear(x, layer.weight[:, :, 0, 0], layer.bias) if isinstance(layer, nn.Conv2d) else layer(x)
        return x


class PooledNetwork(nn.Module):
    """A context network and a per-pixel spectral model, pooled: out, the mean of their log-probabilities.

    Why: from a few polygons a network with a receptive field learns their surroundings by heart and
    fails where the scene looks unlike them (1 m NAIP: canopy in autumn colours called low vegetation
    in whole patches without a polygon), while a per-pixel model of the same pixels, like the random
    forest people use, transfers there but cannot use shape or texture. The equal-weight logarithmic
    opinion pool keeps what both are sure of and lets either veto the other; softmax of the output is
    the pooled probability. See benchmarks/results/sparse_accuracy_spectral_2026-11-28.txt.
    """

    def __init__(self, context: nn.Module, spectral: SpectralModel) -> None:
        super().__init__()
        self.context = context
        self.spectral = spectral

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool(self.context(x), self.spectral(x))


def pool(context_logits: torch.Tensor, spectral_logits: torch.Tensor) -> torch.Tensor:
    """:class:`PooledNetwork`'s output from its two halves' logits: the mean of their log-probabilities."""
    return 0.5 * (torch.log_softmax(context_logits.float(), dim=1) + torch.log_softmax(spectral_logits.float(), dim=1))


def context_of(network: nn.Module) -> nn.Module:
    """The network that sees neighbourhoods: the context part of a :class:`PooledNetwork`, else itself."""
    return network.context if isinstance(network, PooledNetwork) else network


def check_network(backbone: str, architecture: str, encoder_depth: int) -> None:
    """Refuse a network that cannot be built, before a run writes anything."""
    if architecture not in ARCHITECTURES:
        raise SparsecoverError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    if backbone not in smp.encoders.get_encoder_names():
        raise SparsecoverError(f"unknown backbone {backbone!r}; e.g. resnet18, resnet34, resnet50, efficientnet-b0")
    if not 3 <= encoder_depth <= 5:
        raise SparsecoverError(f"--encoder-depth must be 3, 4 or 5, got {encoder_depth}")


class DroppedStage(nn.Identity):
    """Stands in for an encoder stage that ``encoder_depth`` leaves out (never called)."""


def drop_unused_stages(encoder: nn.Module, depth: int) -> None:
    """Remove the encoder stages past ``depth``, which smp keeps as modules it never calls.

    Kept, they would be saved and shipped (19.9 M of a depth-3 ResNet34 U-Net's 21.5 M weights),
    and DDP refuses parameters that get no gradient. smp names the deepest stages by their output
    stride (16: stage 4, 32: stage 5); encoders that do not are left as they are.
    """
    stages = encoder.get_stages() if hasattr(encoder, "get_stages") else {}
    unused = {id(m) for stride, modules in stages.items() if stride > 2 ** depth for m in modules}
    for parent in list(encoder.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in unused:
                setattr(parent, name, DroppedStage())


def without_dropped_stages(network: nn.Module, state: dict) -> dict:
    """``state`` less the tensors of stages ``network`` dropped (packages written before stages were
    dropped still hold them)."""
    prefixes = tuple(f"{name}." for name, m in network.named_modules() if isinstance(m, DroppedStage))
    return {k: v for k, v in state.items() if not k.startswith(prefixes)} if prefixes else state


class Ensemble(nn.Module):
    """Networks trained alike from different random starts; out: the log of their mean probability.

    Why: from a few polygons, what a network learns depends on its random start and chip order as
    much as on the labels (on the NC scene one seed's map scores macro-F1 0.32, another's 0.42).
    Averaging the members' class probabilities cancels much of that luck. The output is a
    log-probability, so softmax and arg-max downstream (classify, ONNX, evaluation) treat the
    ensemble as one network: softmax of it is exactly the members' mean probability.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's class probabilities, (members, N, K, H, W)."""
        return torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.member_probabilities(x).mean(0).clamp_min(1e-12))


def build_ensemble(members: int, **network) -> nn.Module:
    """One network (``members`` = 1) or an :class:`Ensemble` of ``members`` alike (keyword arguments of
    :func:`build_model`)."""
    if members == 1:
        return build_model(**network)
    return Ensemble([build_model(**network) for _ in range(members)])


def network_from(meta: ModelJson, weights: bytes) -> nn.Module:
    """Rebuild the network that model.json describes and load its safetensors weights.

    Built on the meta device (no memory, no random initialisation: 0.25 s of a ResNet34's load) and
    given the stored tensors themselves (``assign``); every parameter and buffer is in the weights.
    """
    from safetensors.torch import load as load_safetensors

    with torch.device("meta"):
        network = build_ensemble(meta.get("ensemble", 1), num_bands=meta["input_channels"],
                                 num_classes=len(meta["classes"]), backbone=meta["encoder"],
                                 architecture=meta["architecture"], encoder_depth=meta.get("encoder_depth", 5),
                                 spectral=bool(meta.get("spectral")))
    try:
        network.load_state_dict(without_dropped_stages(network, load_safetensors(weights)), assign=True)
    except Exception as exc:
        raise SparsecoverError(f"weights do not match model.json ({str(exc).splitlines()[0]})") from None
    return network.eval()


def _first_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            return parent, attr, child
    raise SparsecoverError("the encoder has no convolution to adapt")


def adapt_first_conv(encoder: nn.Module, num_bands: int, band_names: list[str]) -> None:
    """Replace the encoder's RGB stem by an N-band one initialised from the RGB filters."""
    parent, attr, conv = _first_conv(encoder)
    if conv.in_channels == num_bands and num_bands != 3:
        return
    rgb = conv.weight.detach()  # (out, 3, k, k), channels in R, G, B order
    lowered = [n.lower() for n in band_names]
    new = torch.empty(conv.out_channels, num_bands, *conv.kernel_size)
    mean = rgb.mean(dim=1)
    for i in range(num_bands):
        name = lowered[i] if i < len(lowered) else ""
        source = {"red": 0, "r": 0, "green": 1, "g": 1, "blue": 2, "b": 2}.get(name)
        if source is None and not band_names and i < 3:
            source = i  # unnamed bands: assume the first three are R, G, B
        new[:, i] = rgb[:, source] if source is not None else mean
    new *= 3.0 / num_bands
    replacement = nn.Conv2d(num_bands, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        replacement.weight.copy_(new)
        if conv.bias is not None:
            replacement.bias.copy_(conv.bias)
    setattr(parent, attr, replacement)


def load_weights(model: nn.Module, path: Path) -> None:
    """Start from local weights: a package, a run or model folder, .safetensors or a torch state dict."""
    if not path.exists():
        raise SparsecoverError(f"{path}: weights not found (pass a run folder, package, .safetensors or .pt file)")
    try:
        if path.is_dir() or path.suffix == SUFFIX:
            from safetensors.torch import load

            state = load(open_model(path)[1])
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            state = {k.removeprefix("model."): v for k, v in state.items()}
        # a pooled network's file: its context network (the spectral model is fitted afresh)
        state = {k.removeprefix("context."): v for k, v in state.items() if not k.startswith("spectral.")}
    except SparsecoverError:
        raise
    except Exception as exc:
        raise SparsecoverError(f"{path}: cannot read weights ({exc})") from None
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if mismatched or missing:
        detail = (f"{mismatched[0]} is {tuple(state[mismatched[0]].shape)} there but "
                  f"{tuple(own[mismatched[0]].shape)} here" if mismatched else f"{len(missing)} tensors missing, e.g. {missing[0]}")
        raise SparsecoverError(
            f"{path}: weights do not fit this model ({detail}); use the same backbone, band count and classes"
        )
    model.load_state_dict(state, strict=False)


def decision_offsets(class_weights: list[float]) -> list[float]:
    """Per-class offsets added to a network's logits so that it decides under the class frequencies
    of its labels rather than under the balance its class weights imposed.

    Why: the loss weights classes by inverse frequency so that small polygons are learned at all, but
    the network then calls rare classes as if every class covered the same area (1 m NAIP: impervious
    painted over 11 % of the scene, 0.14 % in the reference). Subtracting log(weight) undoes that tilt
    (post-hoc logit adjustment, Menon et al. 2021), as a per-pixel classifier trained on the same
    pixels decides; see benchmarks/results/sparse_accuracy_2026-11-28.txt. A class without training
    pixels (weight 0) is left as it is.
    """
    return [-math.log(w) if w > 0 else 0.0 for w in class_weights]


def offsets_of(meta: dict) -> torch.Tensor:
    """A model.json's decision offsets as a (1, K, 1, 1) tensor to add to logits (zeros when absent)."""
    offsets = meta.get("decision_offsets") or [0.0] * len(meta["classes"])
    return torch.tensor(offsets, dtype=torch.float32).view(1, -1, 1, 1)


class RawInputModel(nn.Module):
    """Raw band values in, class probabilities out: normalisation, the model's decision offsets
    (:func:`decision_offsets`; absent in models trained before them) and softmax inside the graph."""

    def __init__(self, network: nn.Module, meta: dict) -> None:
        super().__init__()
        norm = meta["normalisation"]
        shape = (1, -1, 1, 1)
        self.register_buffer("low", torch.tensor(norm["low"], dtype=torch.float32).view(shape))
        self.register_buffer("high", torch.tensor(norm["high"], dtype=torch.float32).view(shape))
        self.register_buffer("mean", torch.tensor(norm["mean"], dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(norm["std"], dtype=torch.float32).view(shape))
        self.register_buffer("offsets", offsets_of(meta))
        self.network = network

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.minimum(torch.maximum(x, self.low), self.high) - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalise(x)).float() + self.offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)

    def with_disagreement(self, x: torch.Tensor) -> torch.Tensor:
        """An :class:`Ensemble`'s class probabilities (exactly :meth:`forward`'s) and, as one more
        channel, its members' disagreement (:func:`disagreement`), (N, K + 1, H, W): one pass of
        the members gives both."""
        raw = self.network.member_probabilities(self.normalise(x))
        probabilities = torch.softmax(torch.log(raw.mean(0).clamp_min(1e-12)) + self.offsets, dim=1)
        members = torch.softmax(torch.log(raw.clamp_min(1e-12)) + self.offsets, dim=2)  # each decides as the whole
        return torch.cat([probabilities, disagreement(members)[:, None]], dim=1)


def disagreement(members: torch.Tensor) -> torch.Tensor:
    """How much an ensemble's members disagree, per pixel of (members, N, K, H, W) probabilities: the
    mutual information between the class and the member (the entropy of the mean probability less
    the members' mean entropy; BALD, Houlsby et al. 2011) as a share of its largest possible value,
    log(min(members, K)). 0 where the members agree, however unsure each is; 1 where each is sure of
    another class. Why for suggest: where the members part ways the labels have not settled the
    answer, so a label there teaches; a pixel where all agree it is a 50/50 mix teaches less."""
    def entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
        return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)

    information = entropy(members.mean(0), 1) - entropy(members, 2).mean(0)
    return (information / math.log(min(members.shape[0], members.shape[2]))).clamp(0, 1)
