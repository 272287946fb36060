"""A deployable student: its state_dict, the preprocessing and classes it was trained with (a JSON file), and
TorchScript and ONNX files that take images on the [0, 1] scale and return class probabilities, so its
predictions are reproduced without this library."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

LAYOUT = ("float images (N, channels, image_size, image_size), RGB or grey pixel values / 255 "
          "(the training images' resize: bilinear to image_size x image_size)")


def preprocessing(data: Any) -> Optional[dict[str, Any]]:
    """What a datamodule does to an image before the network (after its ``setup``), or None when it does
    not say (no ``mean``/``std``): normalization, size, channels and the class names."""
    if getattr(data, "mean", None) is None or getattr(data, "std", None) is None:
        return None
    channels, size = int(data.input_shape[0]), int(data.input_shape[-1])
    classes = [str(c) for c in getattr(data, "classes", None) or range(data.num_classes)]
    return {"mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std], "image_size": size,
            "channels": channels, "resize": getattr(data, "resize", None), "classes": classes}


class Deployed(nn.Module):
    """``softmax(net((x - mean) / std))``: the network with its normalization, for TorchScript and ONNX."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std).softmax(1)


def export(net: nn.Module, spec: Any, prep: dict[str, Any], path: str | Path, onnx: bool = True) -> dict[str, str]:
    """Write ``path`` (the state_dict), ``<stem>.json``, ``<stem>.torchscript.pt`` and (with ``onnx``)
    ``<stem>.onnx`` beside it; returns {form: file}. ``net`` is a fresh copy of the student (eval mode)."""
    path = Path(path)
    files = {"state_dict": path, "preprocessing": path.with_suffix(".json"),
             "torchscript": path.with_suffix(".torchscript.pt")}
    if onnx:
        files["onnx"] = path.with_suffix(".onnx")
    torch.save(net.state_dict(), path)
    deployed = Deployed(net, prep["mean"], prep["std"]).eval()
    example = torch.rand(2, prep["channels"], prep["image_size"], prep["image_size"])
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(deployed, example), str(files["torchscript"]))
        if onnx:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
                torch.onnx.export(deployed, (example,), str(files["onnx"]), dynamo=False, input_names=["images"],
                                  output_names=["probabilities"], opset_version=17,
                                  dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
    card = {"network": spec, "num_classes": len(prep["classes"]),
            "network_channels": 3 if getattr(net, "replicates_grey", False) else prep["channels"],
            **prep, "files": {k: v.name for k, v in files.items()},
            "state_dict_input": f"{LAYOUT}, then (x - mean) / std per channel; a grey image into a 3-channel "
                                f"network (network_channels 3, channels 1) is repeated into its 3 channels; "
                                f"the network returns logits",
            "torchscript_onnx_input": f"{LAYOUT}; they normalize and return class probabilities "
                                      f"(input 'images', output 'probabilities')"}
    files["preprocessing"].write_text(json.dumps(card, indent=2) + "\n")
    return {k: str(v) for k, v in files.items()}
