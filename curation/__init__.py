"""curation: rebuild and extend natural adversarial example datasets such as ImageNet-A."""

__version__ = "0.1.0"
