"""Passes over recorded graphs."""

from gpuflow.passes.fusion import fuse_multiply_add, fusion_enabled

__all__ = ["fuse_multiply_add", "fusion_enabled"]
