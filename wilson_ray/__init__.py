"""wilson-ray: data-efficient incremental semantic segmentation (WILSON) at cluster scale."""

__version__ = "0.1.0"
