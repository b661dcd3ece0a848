"""Detectron2's ResNet + FPN backbone, with Detectron2's module names."""
