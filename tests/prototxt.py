"""A small, independent reader of deploy.prototxt for tests: layers, blob shapes, parameter counts.

Shape rules are Caffe's: convolution floors, pooling ceils (and drops a last window that would
start in the padding).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass
class ProtoLayer:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str]


def _blocks(text: str) -> list[str]:
    """Top-level ``layer { ... }`` bodies, by brace matching."""
    blocks, i = [], 0
    while True:
        m = re.compile(r"^layers? \{", re.M).search(text, i)
        if not m:
            return blocks
        depth, j = 0, m.end() - 1
        while True:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        blocks.append(text[m.end():j])
        i = j + 1


def parse(text: str) -> list[ProtoLayer]:
    layers = []
    for body in _blocks(text):
        def first(key: str, body: str = body) -> str | None:
            m = re.search(rf"\b{key}: \"?([^\"\s]+)\"?", body)
            return m.group(1) if m else None
        params = {k: v for k, v in re.findall(r"\b(num_output|pad|kernel_size|stride|pool|dim): (\S+)", body)}
        params["dims"] = ",".join(re.findall(r"\bdim: (\d+)", body))
        layers.append(ProtoLayer(
            name=first("name") or "", type=first("type") or "",
            bottoms=re.findall(r'\bbottom: "([^"]+)"', body), tops=re.findall(r'\btop: "([^"]+)"', body),
            params=params,
        ))
    return layers


def analyse(text: str) -> tuple[dict[str, tuple[int, ...]], dict[str, int], dict[str, tuple]]:
    """(blob shapes without batch, parameter count per layer, (weight, bias) shape per layer)."""
    shapes: dict[str, tuple[int, ...]] = {}
    counts: dict[str, int] = {}
    param_shapes: dict[str, tuple] = {}
    for layer in parse(text):
        p = layer.params
        if layer.type == "Input":
            dims = tuple(int(d) for d in p["dims"].split(","))
            shapes[layer.tops[0]] = dims[1:]
            continue
        src = shapes[layer.bottoms[0]] if layer.bottoms else ()
        if layer.type == "Convolution":
            c, h, w = src
            k, s, pad, n = int(p["kernel_size"]), int(p.get("stride", 1)), int(p.get("pad", 0)), int(p["num_output"])
            shape = (n, (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1)
            param_shapes[layer.name] = ((n, c, k, k), (n,))
            counts[layer.name] = n * c * k * k + n
        elif layer.type == "Pooling":
            c, h, w = src
            k, s, pad = int(p["kernel_size"]), int(p.get("stride", 1)), int(p.get("pad", 0))

            def pooled(x: int, k: int = k, s: int = s, pad: int = pad) -> int:
                out = math.ceil((x + 2 * pad - k) / s) + 1
                if pad and (out - 1) * s >= x + pad:
                    out -= 1
                return out

            shape = (c, pooled(h), pooled(w))
        elif layer.type == "InnerProduct":
            n, fan_in = int(p["num_output"]), math.prod(src)
            shape = (n,)
            param_shapes[layer.name] = ((n, fan_in), (n,))
            counts[layer.name] = n * fan_in + n
        elif layer.type == "Concat":
            parts = [shapes[b] for b in layer.bottoms]
            shape = (sum(s[0] for s in parts), *parts[0][1:])
        else:  # ReLU, LRN, Dropout, Softmax keep the shape
            shape = src
        for top in layer.tops:
            shapes[top] = shape
    return shapes, counts, param_shapes
