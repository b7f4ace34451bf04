#!/usr/bin/env python3
"""Two-stage retrieval evaluation (same as `reranker-serve evaluate`); see --help."""

import sys

from reranker_serve.evaluation.harness import main

if __name__ == "__main__":
    sys.exit(main())
