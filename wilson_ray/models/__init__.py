"""Models of method.md §2: encoder (``backbone``: ResNet, ``wideresnet``: Wide-ResNet-38; ``norm``: BN +
activation), DeepLab-V3 head (``head``), the segmenter with per-step classifiers (``segmenter``), the localizer
(``localizer``) and weight loading (``weights``). Import each from its module."""
