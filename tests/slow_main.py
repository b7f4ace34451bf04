"""`python -m reranker_serve`, with every forward pass slowed down by RERANKER_TEST_DELAY seconds.

Only for tests that need a request to still be running when something happens (SIGTERM).
"""

import os
import sys
import time

from reranker_serve.__main__ import main
from reranker_serve.models.encoder import SequenceClassificationReranker

_delay = float(os.environ.get("RERANKER_TEST_DELAY", "2"))


def slowed(forward):
    def slow_forward(self, batch):
        if len(batch) > 1:  # not the one-pair warm-up
            time.sleep(_delay)
        return forward(self, batch)

    return slow_forward


SequenceClassificationReranker.forward = slowed(SequenceClassificationReranker.forward)
sys.exit(main())
