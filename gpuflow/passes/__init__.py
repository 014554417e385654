"""Passes over recorded graphs."""

from gpuflow.passes.fusion import fuse, fuse_multiply_add, fuse_sigmoid, fusion_enabled

__all__ = ["fuse", "fuse_multiply_add", "fuse_sigmoid", "fusion_enabled"]
