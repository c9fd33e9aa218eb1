"""Reference pipeline for testing the Hierarchical Reasoning Model (HRM) on city routing."""

__version__ = "0.1.0"
