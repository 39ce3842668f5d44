"""reasonflow: the importable logic of the reasoning-model workflow.

Snakemake scripts under ``scripts/`` are thin wrappers around this package.
"""

__version__ = "0.1.0"
