"""Example applications of rtserver (run one with ``python -m examples.NAME``)."""
