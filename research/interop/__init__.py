"""Interoperability with other frameworks (torchvision weights)."""
