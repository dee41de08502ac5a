"""Data layer: manifests (``manifest``), dataset layouts (``voc``, ``coco``), the synthetic generator
(``synthetic``), paired transforms (``transforms``) and the per-step torch Dataset (``dataset``).

Submodules are imported explicitly (``from wilson_ray.data.dataset import build_dataset``) so that reading a
manifest does not import torch.
"""
