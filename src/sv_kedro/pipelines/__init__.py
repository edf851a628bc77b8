"""One folder per Kedro pipeline: ``nodes.py`` (thin glue) and ``pipeline.py``."""
