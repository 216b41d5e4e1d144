"""Backstock's benchmark suite: each benchmark against a floor measured in the same run.

Run ``python -m bench`` (or ``make bench``); see ``bench/README.md``.
"""
