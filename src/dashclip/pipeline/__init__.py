"""The whole method as one pipeline: `dashclip train shop.toml` (a shop's catalog, query log and human
grades) and `dashclip demo` (its fashion preset) run the same steps (`steps.py`) from a config (`config.py`)."""
