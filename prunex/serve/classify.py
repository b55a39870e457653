"""`POST /v1/classify` (prunex's own route): an exported LTP encoder labels texts."""

from __future__ import annotations

import time
import uuid

from prunex.errors import PrunexError
from prunex.serve import protocol as p
from prunex.serve.base import ServeError, ServingBase


class ClassifyRoute(ServingBase):
    def classify(self, req: p.ClassifyRequest) -> p.ClassifyResponse:
        """Runs on a worker thread (the route's), one call at a time."""
        self.check_model(req.model, required=False)
        if self.model.classifier is None:
            raise ServeError(400, f"{self.model.name} is a decoder: /v1/classify needs an exported encoder "
                             "classifier (LTP)", code="wrong_model_kind")
        try:
            predictions = self.model.classifier.classify(list(req.input))
        except PrunexError as err:
            raise ServeError(400, str(err), param="input") from None
        data = [p.Classification(index=i, label=x.label, label_id=x.label_id, probabilities=x.probabilities,
                                 tokens=x.tokens, tokens_kept=x.tokens_kept_per_layer)
                for i, x in enumerate(predictions)]
        return p.ClassifyResponse(id=f"cls-{uuid.uuid4().hex}", created=int(time.time()), model=self.model.name,
                                  data=data)
