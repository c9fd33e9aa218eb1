"""DVC stage scripts: run as `python -m stages.<name>` so the checkout's own `hrm/` is imported."""
