"""The hyperparameter search: search spaces, the Ray Tune run, and its results.

    python tune/search.py --space search_spaces/demo.yaml

`tune` imports `afqmc`; `afqmc` never imports `tune` (nor Ray).
"""
