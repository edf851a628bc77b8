"""sv-kedro: speaker verification as reproducible Kedro pipelines."""

__version__ = "0.1.0"
