"""Machine, versions and commit, recorded with every benchmark result (the runner's own: mmfuse.bench)."""
from mmfuse.bench import environment

__all__ = ["environment"]
