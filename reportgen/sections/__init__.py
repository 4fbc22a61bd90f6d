"""Report sections beyond the dataset pass: each module runs one analysis (cached when costly) and lays
out its part of the report (images + JSON-able dicts) for the templates. Adding an analysis = one module here.
"""
